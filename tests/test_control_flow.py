"""Sites and costs through control flow: cond, switch, fori_loop, scan, checkpoint, custom_jvp,
while_loop, nested jit and vmap inside the objective. Each against an exact expectation, at
first and second order."""

import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
sig = jax.nn.sigmoid


def check_unbiased(fn, exact, theta, seed, hessian=True):
    grads = mc(scg.grad(fn), theta, seed=seed, n=N)
    assert_mean_close(grads, jax.grad(exact)(theta), what="gradient")
    if hessian:
        hessians = mc(jax.hessian(scg.surrogate(fn)), theta, seed=seed + 1000, n=N)
        assert_mean_close(hessians, jax.hessian(exact)(theta), what="Hessian")


def cond_model(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
    y = lax.cond(
        x > 0.5,
        lambda k: 2.0 * scg.sample(k, D.Bernoulli(logits=theta[1])) + theta[1],
        lambda k: 0.5 * theta[1] ** 2,
        k2,
    )
    return y**2 + x


def cond_exact(theta):
    p0, p1 = sig(theta[0]), sig(theta[1])
    taken = p1 * (2.0 + theta[1]) ** 2 + (1 - p1) * theta[1] ** 2 + 1.0
    return p0 * taken + (1 - p0) * (0.5 * theta[1] ** 2) ** 2


def switch_model(theta, key):
    k1, k2 = jax.random.split(key)
    i = scg.sample(k1, D.Categorical(logits=theta[:3]))
    branches = [
        lambda k: theta[3],
        lambda k: scg.sample(k, D.Normal(theta[3], 1.0)) ** 2,
        lambda k: scg.sample(k, D.Bernoulli(logits=theta[3])) * 3.0,
    ]
    return lax.switch(i, branches, k2)


def switch_exact(theta):
    p = jax.nn.softmax(theta[:3])
    return p[0] * theta[3] + p[1] * (theta[3] ** 2 + 1.0) + p[2] * 3.0 * sig(theta[3])


STEPS = 3


def _policy_step(theta, state, k):
    a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * state))
    return 0.6 * state + a, (a - 0.4 * state) ** 2 * (1.0 + state)


def fori_model(theta, key):
    ks = jax.random.split(key, STEPS)

    def body(t, carry):
        state, total = carry
        state, r = _policy_step(theta, state, ks[t])
        return state, total + r

    return lax.fori_loop(0, STEPS, body, (0.0, 0.0))[1]


def reverse_scan_model(theta, key):
    def body(state, k):
        return _policy_step(theta, state, k)

    _, rewards = lax.scan(body, 0.0, jax.random.split(key, STEPS), reverse=True)
    return jnp.mean(rewards) * STEPS


def checkpoint_model(theta, key):
    @jax.checkpoint
    def step(state, k):
        return _policy_step(theta, state, k)

    state, total = 0.0, 0.0
    for k in jax.random.split(key, STEPS):
        state, r = step(state, k)
        total = total + r
    return total


def policy_exact(theta):
    total = 0.0
    for actions in itertools.product([0.0, 1.0], repeat=STEPS):
        state, weight = 0.0, 1.0
        for a in actions:
            p = sig(theta[0] + theta[1] * state)
            weight = weight * (p if a else 1 - p)
            total += weight * 0.0  # keeps the structure explicit: weight of the prefix
            state_next = 0.6 * state + a
            state = state_next
        state, ret = 0.0, 0.0
        for a in actions:
            ret = ret + (a - 0.4 * state) ** 2 * (1.0 + state)
            state = 0.6 * state + a
        total += weight * ret
    return total


def relu_model(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
    y = scg.sample(k2, D.Bernoulli(logits=theta[1] * x))
    return jax.nn.relu(x * theta[1] + y - 0.5) + jax.nn.softplus(theta[0] * y)


def relu_exact(theta):
    total = 0.0
    for x, y in itertools.product([0.0, 1.0], repeat=2):
        px, py = sig(theta[0]), sig(theta[1] * x)
        w = (px if x else 1 - px) * (py if y else 1 - py)
        total += w * (jax.nn.relu(x * theta[1] + y - 0.5) + jax.nn.softplus(theta[0] * y))
    return total


C = jnp.array([0.2, 0.9, 0.5])


def vmap_inside_model(theta, key):
    draw = lambda k, logit: scg.sample(k, D.Bernoulli(logits=logit))
    xs = jax.vmap(draw)(jax.random.split(key, 3), theta)
    return jnp.sum((xs - C) ** 2 * (1.0 + theta))


def vmap_inside_exact(theta):
    p = sig(theta)
    return jnp.sum((p * (1 - C) ** 2 + (1 - p) * C**2) * (1.0 + theta))


def nested_jit_model(theta, key):
    @jax.jit
    def site(k, logit):
        return scg.sample(k, D.Bernoulli(logits=logit))

    k1, k2 = jax.random.split(key)
    x1 = site(k1, theta[0])
    x2 = site(k2, theta[1] + x1)
    return (x1 - 0.3) ** 2 + (x1 + x2) ** 2


def nested_jit_exact(theta):
    total = 0.0
    for x1, x2 in itertools.product([0.0, 1.0], repeat=2):
        p1, p2 = sig(theta[0]), sig(theta[1] + x1)
        w = (p1 if x1 else 1 - p1) * (p2 if x2 else 1 - p2)
        total += w * ((x1 - 0.3) ** 2 + (x1 + x2) ** 2)
    return total


CASES = [
    ("cond", cond_model, cond_exact, jnp.array([0.3, -0.5])),
    ("switch", switch_model, switch_exact, jnp.array([0.1, -0.4, 0.3, 0.6])),
    ("fori_loop", fori_model, policy_exact, jnp.array([0.2, -0.7])),
    ("reverse_scan", reverse_scan_model, policy_exact, jnp.array([0.2, -0.7])),
    ("checkpoint", checkpoint_model, policy_exact, jnp.array([0.2, -0.7])),
    ("custom_jvp", relu_model, relu_exact, jnp.array([0.4, 0.8])),
    ("vmap_inside", vmap_inside_model, vmap_inside_exact, jnp.array([0.4, -1.0, 0.2])),
    ("nested_jit", nested_jit_model, nested_jit_exact, jnp.array([0.4, -0.6])),
]


@pytest.mark.parametrize("name,fn,exact,theta", CASES, ids=[c[0] for c in CASES])
def test_unbiased_through_control_flow(name, fn, exact, theta):
    check_unbiased(fn, exact, theta, seed=hash(name) % 1000)


@pytest.mark.parametrize("name,fn,exact,theta", CASES, ids=[c[0] for c in CASES])
def test_value_and_eager_equal_jit(name, fn, exact, theta):
    for key in keys(11, 3):
        np.testing.assert_allclose(scg.surrogate(fn)(theta, key), fn(theta, key), rtol=1e-6)
        eager = scg.grad(fn)(theta, key)
        np.testing.assert_allclose(jax.jit(scg.grad(fn))(theta, key), eager, rtol=1e-5, atol=1e-6)


def test_fori_loop_credit_is_per_iteration():
    # Same draws, same per-step credit as the stacked-scan version written by hand.
    theta = jnp.array([0.2, -0.7])

    def by_hand(theta, key):
        def body(state, k):
            d = D.Bernoulli(logits=theta[0] + theta[1] * state)
            a = lax.stop_gradient(d.sample(k))
            return 0.6 * state + a, (d.log_prob(a), (a - 0.4 * state) ** 2 * (1.0 + state))

        _, (lp, r) = lax.scan(body, 0.0, jax.random.split(key, STEPS))
        return jnp.sum(scg.magic_box(jnp.cumsum(lp)) * r)

    for key in keys(12, 4):
        np.testing.assert_allclose(
            scg.grad(fori_model)(theta, key), jax.grad(by_hand)(theta, key), rtol=1e-5, atol=1e-6
        )


def while_model(theta, key):
    def body(carry):
        i, k, total = carry
        k, sub = jax.random.split(k)
        x = scg.sample(sub, D.Bernoulli(logits=theta[0] + theta[1] * i))
        return i + 1, k, total + (x - 0.25 * i) ** 2

    return lax.while_loop(lambda c: c[0] < STEPS, body, (0, key, 0.0))[2]


def while_exact(theta):
    total = 0.0
    for i in range(STEPS):
        p = sig(theta[0] + theta[1] * i)
        total += p * (1 - 0.25 * i) ** 2 + (1 - p) * (0.25 * i) ** 2
    return total


def test_while_loop_sites_work_in_forward_mode():
    theta = jnp.array([0.3, -0.4])
    jac = jax.jacfwd(scg.surrogate(while_model))
    assert_mean_close(mc(jac, theta, seed=13, n=N), jax.grad(while_exact)(theta))
    hess = jax.jacfwd(jax.jacfwd(scg.surrogate(while_model)))
    assert_mean_close(mc(hess, theta, seed=14, n=N), jax.hessian(while_exact)(theta))


def test_while_loop_sites_in_reverse_mode_raise_naming_the_site():
    theta = jnp.array([0.3, -0.4])
    with pytest.raises(scg.SiteError, match=r"Bernoulli at test_control_flow\.py.*while_loop"):
        scg.grad(while_model)(theta, jax.random.key(0))


def test_unknown_primitive_without_sites_is_rebound_unchanged():
    def fn(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta))
        y = lax.reduce_precision(jnp.cumprod(jnp.array([x + 1.0, theta])), 8, 23)
        return jnp.sum(jnp.sort(y))

    def exact(theta):
        p = sig(theta)
        return p * (2.0 + 2.0 * theta) + (1 - p) * (1.0 + theta)

    check_unbiased(fn, exact, jnp.asarray(0.3), seed=15)


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey], ids=["typed", "raw"])
def test_typed_and_raw_keys(make_key):
    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
        return (scg.sample(k2, D.Normal(theta[1] * x, 1.0)) - 1.0) ** 2

    def exact(theta):
        return sig(theta[0]) * (theta[1] - 1.0) ** 2 + 1.0 + (1 - sig(theta[0]))

    theta = jnp.array([0.3, 0.7])
    ks = jax.vmap(make_key)(jnp.arange(N))
    grads = jax.jit(jax.vmap(scg.grad(fn), in_axes=(None, 0)))(theta, ks)
    assert_mean_close(grads, jax.grad(exact)(theta))


def test_x64_gives_float64_and_stays_unbiased():
    with jax.enable_x64(True):
        theta = jnp.array([0.3, -0.5], dtype=jnp.float64)
        g = scg.grad(nested_jit_model)(theta, jax.random.key(0))
        assert g.dtype == jnp.float64
        assert scg.surrogate(nested_jit_model)(theta, jax.random.key(0)).dtype == jnp.float64
        grads = mc(scg.grad(nested_jit_model), theta, seed=16, n=N)
        assert grads.dtype == jnp.float64
        assert_mean_close(grads, jax.grad(nested_jit_exact)(theta))


def test_transform_inside_grad_and_vmap_of_outer_function():
    # scg.surrogate used inside a larger differentiated, vmapped computation (closure tracers).
    def outer(scale, key):
        inner = lambda theta, k: graph(theta * scale, k)
        return scg.surrogate(inner)(jnp.array([0.4, -0.6]), key)

    graph = nested_jit_model
    exact = lambda scale: nested_jit_exact(jnp.array([0.4, -0.6]) * scale)
    grads = mc(jax.grad(outer), 1.3, seed=17, n=N)
    assert_mean_close(grads, jax.grad(exact)(1.3))


def test_pathwise_site_in_scan():
    def fn(theta, key):
        def body(x, k):
            y = scg.sample(k, D.Normal(theta * x, 1.0))
            return y, y**2

        return lax.scan(body, 1.0, jax.random.split(key, 3))[1].sum()

    def exact(theta):  # x1 = θ + e1, x2 = θ x1 + e2, x3 = θ x2 + e3
        m1, v1 = theta, 1.0
        m2, v2 = theta * m1, theta**2 * v1 + 1.0
        m3, v3 = theta * m2, theta**2 * v2 + 1.0
        return m1**2 + v1 + m2**2 + v2 + m3**2 + v3

    check_unbiased(fn, exact, jnp.asarray(0.7), seed=18)


def test_batched_site_is_one_site_with_a_batched_log_prob():
    theta = jnp.array([0.4, -1.0, 0.2])
    jaxpr = jax.make_jaxpr(vmap_inside_model)(theta, jax.random.key(0))
    sites = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scg_sample"]
    assert len(sites) == 1


def test_sample_outside_transforms_just_draws():
    key = jax.random.key(3)
    dist = D.Normal(jnp.zeros(4), 2.0)
    np.testing.assert_array_equal(scg.sample(key, dist), dist.sample(key))
    np.testing.assert_array_equal(jax.jit(scg.sample)(key, dist), dist.sample(key))
    ks = jax.random.split(key, 5)
    np.testing.assert_array_equal(
        jax.vmap(scg.sample, in_axes=(0, None))(ks, dist), jax.vmap(dist.sample)(ks)
    )


@jax.custom_vjp
def _soft_square(x):
    return x**2


_soft_square.defvjp(lambda x: (x**2, x), lambda x, g: (2.0 * x * g,))


def test_custom_vjp_function_fed_by_samples():
    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta[0]))
        y = scg.sample(k2, D.Normal(theta[1], 1.0))
        return _soft_square(x + y)

    def exact(theta):  # E[(x + y)^2] = E[x] + 2 E[x] θ1 + θ1² + 1
        p = sig(theta[0])
        return p + 2 * p * theta[1] + theta[1] ** 2 + 1.0

    grads = mc(scg.grad(fn), jnp.array([0.3, -0.2]), seed=19, n=N)
    assert_mean_close(grads, jax.grad(exact)(jnp.array([0.3, -0.2])))


@pytest.mark.parametrize("name,fn,exact,theta", CASES[:3], ids=[c[0] for c in CASES[:3]])
def test_every_second_order_mode_agrees(name, fn, exact, theta):
    s = scg.surrogate(fn)
    for key in keys(20, 2):
        reference = jax.jacfwd(jax.jacfwd(s))(theta, key)
        for mode in (jax.hessian, lambda f: jax.jacrev(jax.jacrev(f)), jax.jacfwd):
            h = (
                mode(s)(theta, key)
                if mode is not jax.jacfwd
                else jax.jacfwd(scg.grad(fn))(theta, key)
            )
            np.testing.assert_allclose(h, reference, rtol=1e-5, atol=1e-6)


def test_a_user_defined_distribution_works_through_the_protocol():
    class Flip(NamedTuple):
        """A user's own Bernoulli: any pytree with sample, log_prob, is_reparameterized."""

        logit: jax.Array
        is_reparameterized = False

        def sample(self, key):
            return jax.random.bernoulli(key, jax.nn.sigmoid(self.logit)).astype(jnp.float32)

        def log_prob(self, x):
            return x * jax.nn.log_sigmoid(self.logit) + (1 - x) * jax.nn.log_sigmoid(-self.logit)

    def fn(theta, key):
        x = scg.sample(key, Flip(theta))
        return (x + theta) ** 2

    def exact(theta):
        return sig(theta) * (1 + theta) ** 2 + (1 - sig(theta)) * theta**2

    check_unbiased(fn, exact, jnp.asarray(0.4), seed=21)
