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
        g = scg.grad(loss)(THETA, key, baselines)
        costs = scg.downstream_costs(loss)(THETA, key, baselines)
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
