"""Numerically hard inputs real code hits: masked actions (-inf logits), saturated logits,
logits exactly 0, large Poisson rates. Estimates stay finite and unbiased."""

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_mean_close, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
MASK = jnp.array([0.0, -jnp.inf, 0.0])
REWARD = jnp.array([1.0, 5.0, -2.0])


def masked_policy(theta, key):
    def body(total, k):
        a = scg.sample(k, D.Categorical(logits=theta + MASK))
        return total + REWARD[a] * (1.0 + theta[0]), None

    return lax.scan(body, 0.0, jax.random.split(key, 3))[0]


def masked_exact(theta):
    p = jax.nn.softmax(jnp.array([theta[0], theta[2]]))
    return 3 * (p[0] * REWARD[0] + p[1] * REWARD[2]) * (1.0 + theta[0])


def test_masked_actions_have_finite_unbiased_gradients_in_a_scan():
    theta = jnp.array([0.3, 0.7, -0.2])
    grads = mc(scg.grad(masked_policy), theta, seed=101, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, jax.grad(masked_exact)(theta))
    hessians = mc(jax.hessian(scg.surrogate(masked_policy)), theta, seed=102, n=N)
    assert np.all(np.isfinite(hessians))
    assert_mean_close(hessians, jax.hessian(masked_exact)(theta))


def test_saturated_and_zero_logits():
    def fn(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta))
        return jnp.sum((x - 0.3) ** 2)

    def exact(theta):
        p = jax.nn.sigmoid(theta)
        return jnp.sum(p * 0.49 + (1 - p) * 0.09)

    theta = jnp.array([-50.0, 0.0, 50.0])
    grads = mc(scg.grad(fn), theta, seed=103, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, jax.grad(exact)(theta))
    hessians = mc(jax.hessian(scg.surrogate(fn)), theta, seed=104, n=N)
    assert_mean_close(hessians, jax.hessian(exact)(theta))


def test_large_poisson_rates_give_finite_score_function_gradients():
    def fn(log_rate, key):
        n = scg.sample(key, D.Poisson(jnp.exp(log_rate)))
        return n.astype(jnp.float32) / 1e4

    grads = mc(scg.grad(fn), jnp.log(1e4), seed=105, n=N)
    assert np.all(np.isfinite(grads))
    assert_mean_close(grads, 1.0)  # d/d log λ of E[n]/1e4 = λ/1e4


# The Bernoulli log-probability's softplus: one exp and one log1p per element, with exact
# derivatives of every order, at 0 too, and inside lax.scan under every second-order mode.


def _bernoulli_lp_derivatives(x, logit):
    """d^k/dl^k of x*l - softplus(l) for k = 0..3, in closed form."""
    s = 1.0 / (1.0 + np.exp(-logit))
    softplus = np.logaddexp(0.0, logit)
    return [x * logit - softplus, x - s, -s * (1 - s), -s * (1 - s) * (1 - 2 * s)]


def test_bernoulli_log_prob_derivatives_of_orders_one_to_three():
    for x in (0.0, 1.0):
        for logit in (0.0, 1e-4, -1e-4, 0.7, -2.5, 15.0, -15.0):
            f = lambda t, x=x: D.Bernoulli(logits=t).log_prob(x)  # noqa: E731
            got = []
            for _ in range(4):
                got.append(float(f(jnp.float32(logit))))
                f = jax.grad(f)
            np.testing.assert_allclose(got, _bernoulli_lp_derivatives(x, logit), atol=2e-6)


def test_bernoulli_log_prob_second_order_inside_scan():
    weights = jnp.array([1.0, -0.5, 0.0, 2.0])  # the third step's logit is exactly 0
    xs = jnp.array([1.0, 0.0, 1.0, 0.0])

    def total(theta):
        def body(acc, wx):
            w, x = wx
            return acc + D.Bernoulli(logits=theta[0] * w + theta[1] * w**2).log_prob(x), None

        return lax.scan(body, 0.0, (weights, xs))[0]

    theta = jnp.array([0.0, 0.0])
    exact = np.zeros((2, 2))
    for w, x in zip(np.asarray(weights), np.asarray(xs)):
        features = np.array([w, w**2])
        exact += _bernoulli_lp_derivatives(x, 0.0)[2] * np.outer(features, features)
    for second_order in (
        jax.hessian,
        lambda f: jax.jacrev(jax.jacrev(f)),
        lambda f: jax.jacfwd(jax.jacrev(f)),
        lambda f: jax.jacrev(jax.jacfwd(f)),
    ):
        np.testing.assert_allclose(second_order(total)(theta), exact, atol=1e-6)
        np.testing.assert_allclose(jax.jit(second_order(total))(theta), exact, atol=1e-6)


def _count(jaxpr, names):
    """How many equations named in ``names`` a jaxpr holds, nested jaxprs included."""
    count = 0
    for eqn in jaxpr.eqns:
        count += eqn.primitive.name in names
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            count += _count(sub, names)
    return count


def test_bernoulli_log_prob_has_one_transcendental_pair():
    """As NumPyro's: one exp and one log1p per element (a deterministic op-count gate)."""
    jaxpr = jax.make_jaxpr(lambda t, x: D.Bernoulli(logits=t).log_prob(x))(
        jnp.zeros(5), jnp.ones(5)
    ).jaxpr
    assert _count(jaxpr, {"exp"}) == 1 and _count(jaxpr, {"log1p"}) == 1
    assert _count(jaxpr, {"log", "logistic", "expm1"}) == 0


def test_bernoulli_log_prob_saturated_logits_stay_finite():
    for logit in (-100.0, 100.0):
        for x in (0.0, 1.0):
            f = lambda t, x=x: D.Bernoulli(logits=t).log_prob(x)  # noqa: E731
            values = [f(jnp.float32(logit)), jax.grad(f)(jnp.float32(logit))]
            values.append(jax.grad(jax.grad(f))(jnp.float32(logit)))
            assert all(np.isfinite(v) for v in values), (logit, x, values)
