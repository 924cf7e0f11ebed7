"""Downstream costs per named site, leave-one-out baselines and moving-average baselines."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import distributions as D

sig = jax.nn.sigmoid
THETA = jnp.array([0.3, -0.6])


def chain(theta, key):
    k1, k2 = jax.random.split(key)
    x1 = scg.sample(k1, D.Bernoulli(logits=theta[0] + 0.5), name="x1")
    x2 = scg.sample(k2, D.Bernoulli(logits=theta[1] * x1 + theta[0]), name="x2")
    return (x1 - 0.2) ** 2 + (x2 + x1 - 0.5) ** 2 + 3.0 * x1 * x2


def chain_exact(theta):
    total = 0.0
    for x1, x2 in itertools.product([0.0, 1.0], repeat=2):
        p1, p2 = sig(theta[0] + 0.5), sig(theta[1] * x1 + theta[0])
        w = (p1 if x1 else 1 - p1) * (p2 if x2 else 1 - p2)
        total += w * ((x1 - 0.2) ** 2 + (x2 + x1 - 0.5) ** 2 + 3.0 * x1 * x2)
    return total


def test_downstream_costs_are_the_costs_each_site_influences():
    for key in keys(91, 6):
        k1, k2 = jax.random.split(key)
        x1 = D.Bernoulli(logits=THETA[0] + 0.5).sample(k1)
        x2 = D.Bernoulli(logits=THETA[1] * x1 + THETA[0]).sample(k2)
        f1, f2 = (x1 - 0.2) ** 2, (x2 + x1 - 0.5) ** 2 + 3.0 * x1 * x2
        costs = jax.jit(scg.downstream_costs(chain))(THETA, key)
        np.testing.assert_allclose(costs["x1"], f1 + f2, rtol=1e-6)
        np.testing.assert_allclose(costs["x2"], f2, rtol=1e-6)


def test_downstream_costs_are_per_element_for_a_vector_site():
    c = jnp.array([0.1, 0.5, 0.9])

    def fn(theta, key):
        z = scg.sample(key, D.Bernoulli(logits=theta), name="z")
        return jnp.sum((z - c) ** 2) * 2.0

    key = jax.random.key(3)
    z = D.Bernoulli(logits=jnp.zeros(3)).sample(key)
    np.testing.assert_allclose(
        scg.downstream_costs(fn)(jnp.zeros(3), key)["z"], 2.0 * (z - c) ** 2, rtol=1e-6
    )


def test_leave_one_out_is_unbiased_and_beats_independent_copies():
    loo = scg.baselines.leave_one_out(chain, 4)
    grads = mc(loo, THETA, seed=92, n=5_000)
    assert_mean_close(grads, jax.grad(chain_exact)(THETA))

    def four_plain(theta, key):
        return jnp.mean(
            jax.vmap(scg.grad(chain), in_axes=(None, 0))(theta, jax.random.split(key, 4)), 0
        )

    plain = mc(four_plain, THETA, seed=92, n=5_000)
    assert np.all(np.var(grads, 0) < np.var(plain, 0))


def test_leave_one_out_equals_the_formula_of_kool_et_al_for_one_site():
    f = lambda y: (y - 0.3) ** 2 + 2.0 * y
    fn = lambda t, k: f(scg.sample(k, D.Bernoulli(logits=t), name="y"))
    theta, k = 0.4, 5
    for key in keys(93, 3):
        ys = jax.vmap(D.Bernoulli(logits=theta).sample)(jax.random.split(key, k))
        fs = f(ys)
        # Each y's score multiplies its own cost minus the mean of the others'.
        score = ys - sig(theta)
        others = (fs.sum() - fs) / (k - 1)
        expected = jnp.mean((fs - others) * score)
        np.testing.assert_allclose(
            scg.baselines.leave_one_out(fn, k)(theta, key), expected, rtol=1e-5, atol=1e-6
        )


def test_moving_average_baseline_in_a_jitted_training_loop():
    average = scg.baselines.moving_average(0.8)

    def loss(theta, key, baselines):
        k1, k2 = jax.random.split(key)
        x1 = scg.sample(k1, D.Bernoulli(logits=theta[0] + 0.5), name="x1", baseline=baselines["x1"])
        x2 = scg.sample(
            k2, D.Bernoulli(logits=theta[1] * x1 + theta[0]), name="x2", baseline=baselines["x2"]
        )
        return (x1 - 0.2) ** 2 + (x2 + x1 - 0.5) ** 2 + 3.0 * x1 * x2

    @jax.jit
    def step(state, key):
        baselines = average.value(state)
        g, costs = scg.grad_and_downstream_costs(loss)(THETA, key, baselines)  # one trace
        return average.update(state, costs), g

    state = average.init({"x1": jnp.zeros(()), "x2": jnp.zeros(())})
    grads = []
    for key in keys(94, 3000):
        state, g = step(state, key)
        grads.append(g)
    grads = np.stack(grads)
    assert int(state.count) == 3000
    assert_mean_close(grads, jax.grad(chain_exact)(THETA))
    plain = mc(scg.grad(chain), THETA, seed=95, n=3000)
    assert np.all(np.var(grads[100:], 0) < np.var(plain, 0))


def test_injected_baselines_keep_unbiasedness_at_second_order():
    hess = jax.hessian(scg.surrogate(chain, baselines={"x1": 1.5, "x2": 0.8}))
    assert_mean_close(mc(hess, THETA, seed=96, n=20_000), jax.hessian(chain_exact)(THETA))


def test_baselines_module_misuse():
    with pytest.raises(ValueError, match="num_samples >= 2"):
        scg.baselines.leave_one_out(chain, 1)
    twice = lambda t, k: scg.sample(k, D.Bernoulli(logits=t), name="x", baseline=1.0)
    with pytest.raises(scg.SiteError, match="(?s)'x'.*both"):
        scg.grad(twice, baselines={"x": 2.0})(0.1, jax.random.key(0))


def rollout_after_a_choice(theta, key):
    """A named top-level site whose value feeds a fissioned loop of named sites."""
    k0, k1 = jax.random.split(key)
    x = scg.sample(k0, D.Bernoulli(logits=theta[0]), name="x")

    def step(s, k):
        a = scg.sample(k, D.Bernoulli(logits=theta[1] + s), name="a")
        return 0.5 * s + a + x, -((s - 1.0) ** 2)

    _, r = jax.lax.scan(step, 0.0, jax.random.split(k1, 4))
    return r.sum() + 2.0 * x, r


def close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("baselines", [None, {"x": 0.7}])
def test_grad_and_downstream_costs_equal_the_two_calls(baselines):
    theta = jnp.array([0.3, -0.2])
    f = lambda t, k: rollout_after_a_choice(t, k)[0]  # noqa: E731
    both = scg.grad_and_downstream_costs(f, baselines=baselines)
    for key in keys(9801, 3):
        want = (scg.grad(f, baselines=baselines)(theta, key), scg.downstream_costs(f)(theta, key))
        assert sorted(want[1]) == ["x"]  # sites inside the loop are not reported
        close(both(theta, key), want)
        close(jax.jit(both)(theta, key), want)
        # argnums as a tuple, and auxiliary outputs, as jax.grad has them
        (g, costs), aux = scg.grad_and_downstream_costs(
            rollout_after_a_choice, (0,), has_aux=True, baselines=baselines
        )(theta, key)
        close(((g[0], costs), aux), (want, rollout_after_a_choice(theta, key)[1]))


def test_grad_and_downstream_costs_needs_a_named_site():
    with pytest.raises(ValueError, match="no named score-function site"):
        scg.grad_and_downstream_costs(lambda t, k: scg.sample(k, D.Bernoulli(logits=t)))(
            0.1, jax.random.key(0)
        )


def test_traced_baselines_by_name_reach_a_fissioned_program_as_arguments():
    """Baselines passed by name may be traced and differentiated (a leave-one-out baseline
    that is itself differentiated): with a loop in the program they reach the fissioned
    rewrite as arguments, and derivatives through them equal the unfissioned ones."""
    theta = jnp.array([0.3, -0.2])
    f = lambda t, k: rollout_after_a_choice(t, k)[0]  # noqa: E731

    def mixed(fission):
        def d2(t, b, key):  # d/dθ of d surrogate / d b: minus the site's score
            inner = lambda t, b: scg.surrogate(f, baselines={"x": b}, fission=fission)(t, key)  # noqa: E731
            return jax.jacfwd(jax.grad(inner, argnums=1))(t, b)

        return d2

    for key in keys(9802, 3):
        got = jax.jit(mixed(True))(theta, 0.7, key)
        close(got, mixed(False)(theta, 0.7, key))
        assert np.abs(np.asarray(got)).max() > 0
    loo = scg.baselines.leave_one_out_surrogate(f, 3, stop_gradient=False)
    for key in keys(9803, 2):
        close(jax.hessian(loo)(theta, key), jax.jacrev(jax.grad(loo))(theta, key))
