"""jax_scg.baselines at second order, under jit and vmap, and the moving average's bias correction.

Complements tests/test_baselines_module.py (first-order leave-one-out on a 2-parameter chain, a
moving average adapted inside a training loop, fixed injected baselines at second order).
Exact references come from enumerating the two Bernoulli sites; every statistical check uses
keys of its own seed (7101-7199, used nowhere else).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_mean_close, keys, mc, z_bonferroni

import jax_scg as scg
from jax_scg import distributions as D

sig = jax.nn.sigmoid
THETA = jnp.array([0.2, -0.4, 0.7])
N = 20_000


def chain_cost(theta, x1, x2):
    # Depends on both sites and, through its last term, directly on the parameters.
    return (x1 + 0.5) ** 2 + 2.0 * x1 * x2 - 1.5 * x2 + 0.5 * theta[1] * x2


def chain(theta, key):
    """Two Bernoulli sites; the second's logits depend on the first's value."""
    k1, k2 = jax.random.split(key)
    x1 = scg.sample(k1, D.Bernoulli(logits=theta[0]), name="x1")
    x2 = scg.sample(k2, D.Bernoulli(logits=theta[1] + theta[2] * x1), name="x2")
    return chain_cost(theta, x1, x2)


def chain_exact(theta):
    """E[chain(theta, .)] by enumerating the four outcomes."""
    total = 0.0
    for x1, x2 in itertools.product([0.0, 1.0], repeat=2):
        p1, p2 = sig(theta[0]), sig(theta[1] + theta[2] * x1)
        w = (p1 if x1 else 1.0 - p1) * (p2 if x2 else 1.0 - p2)
        total += w * chain_cost(theta, x1, x2)
    return total


def flat(*arrays):
    return jnp.concatenate([jnp.ravel(a) for a in arrays])


def close(actual, expected, rtol=1e-6):
    """Equal to ``rtol`` relative to the largest entry (entries near 0 are float cancellation)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    atol = rtol * float(np.max(np.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# --- leave_one_out ------------------------------------------------------------------------
# leave_one_out(fn, K) returns the first-order estimate itself (the mean of K per-copy
# gradients), not a surrogate, so there is no scg.surrogate to take jax.hessian of. Its second
# order is its Jacobian: jacfwd(leave_one_out(fn, K)) is the mean of the K per-copy Hessian
# estimates, each with the other copies' downstream costs as baseline (values under
# stop_gradient, independent of the copy's own draws), so it must be unbiased for the Hessian.

LOO = scg.baselines.leave_one_out(chain, 4)


def test_leave_one_out_is_unbiased_at_first_and_second_order():
    both = lambda t, k: flat(LOO(t, k), jax.jacfwd(LOO)(t, k))  # noqa: E731
    exact = flat(jax.grad(chain_exact)(THETA), jax.hessian(chain_exact)(THETA))
    assert_mean_close(mc(both, THETA, seed=7101, n=N), exact, what="leave-one-out (g, H)")


def test_leave_one_out_under_jit_and_vmap():
    ks = keys(7102, 3)
    jac = jax.jacfwd(LOO)
    eager = [LOO(THETA, k) for k in ks]
    eager_h = [jac(THETA, k) for k in ks]
    for k, g, h in zip(ks, eager, eager_h):
        close(jax.jit(LOO)(THETA, k), g)
        close(jax.jit(jac)(THETA, k), h)
        # Reverse over reverse gives the same second-order estimate on the same draws.
        close(jax.jacrev(LOO)(THETA, k), h, rtol=1e-5)
    close(jax.jit(jax.vmap(LOO, in_axes=(None, 0)))(THETA, ks), jnp.stack(eager))
    close(jax.jit(jax.vmap(jac, in_axes=(None, 0)))(THETA, ks), jnp.stack(eager_h))


# --- leave_one_out_surrogate --------------------------------------------------------------
# The same estimator as a surrogate (Mao et al. 2019's form): jax.hessian of it directly, and
# a gradient of it inside an outer jax.grad (LOLA's look-ahead).


def test_leave_one_out_surrogate_is_unbiased_at_first_and_second_order():
    exact = flat(jax.grad(chain_exact)(THETA), jax.hessian(chain_exact)(THETA))
    for seed, stop in ((7113, True), (7114, False)):
        s = scg.baselines.leave_one_out_surrogate(chain, 4, stop_gradient=stop)
        both = lambda t, k, s=s: flat(jax.grad(s)(t, k), jax.hessian(s)(t, k))  # noqa: E731
        assert_mean_close(mc(both, THETA, seed=seed, n=N), exact, what=f"stop_gradient={stop}")


def test_stopped_leave_one_out_baselines_lower_the_hessian_variance():
    """Differentiating the baselines adds mean-zero terms at second order: measured, they
    add variance (5x in total on this chain), so stop_gradient=True is the default."""
    variances = {}
    for stop in (True, False):
        s = scg.baselines.leave_one_out_surrogate(chain, 4, stop_gradient=stop)
        hessians = mc(jax.hessian(s), THETA, seed=7115, n=N).reshape(N, -1)  # same keys
        variances[stop] = float(np.var(np.asarray(hessians, np.float64), 0).sum())
    assert variances[True] < 0.5 * variances[False], variances


def test_leave_one_out_surrogate_value_jit_vmap_and_outer_gradient():
    s = scg.baselines.leave_one_out_surrogate(chain, 4)
    weights = jnp.array([0.5, -1.0, 2.0])
    for key in keys(7116, 3):
        copies = jax.vmap(lambda k: chain(THETA, k))(jax.random.split(key, 4))
        close(s(THETA, key), jnp.mean(copies))  # the value is the copies' mean cost
        close(jax.jit(s)(THETA, key), s(THETA, key))
        close(jax.grad(s)(THETA, key), LOO(THETA, key))
        hessian = jax.hessian(s)(THETA, key)
        close(jax.jit(jax.jacrev(jax.grad(s)))(THETA, key), hessian, rtol=1e-5)
        # A look-ahead: an outer gradient through the inner estimate is its Hessian's row sum.
        outer = jax.grad(lambda t, k=key: jnp.dot(weights, jax.grad(s)(t, k)))(THETA)
        close(outer, weights @ hessian, rtol=1e-5)
    ks = keys(7117, 3)
    batched = jax.jit(jax.vmap(jax.hessian(s), in_axes=(None, 0)))(THETA, ks)
    close(batched, jnp.stack([jax.hessian(s)(THETA, k) for k in ks]), rtol=1e-5)


# --- moving_average -----------------------------------------------------------------------

AVERAGE = scg.baselines.moving_average(0.7)


def warmed_up(fn, theta, names, seed, n=5):
    """The state after ``n`` updates with downstream costs of fresh draws (then held fixed)."""
    state = AVERAGE.init({name: jnp.zeros(()) for name in names})
    for key in keys(seed, n):
        state = AVERAGE.update(state, scg.downstream_costs(fn)(theta, key))
    return state


def test_moving_average_baseline_is_unbiased_at_first_and_second_order():
    baselines = AVERAGE.value(warmed_up(chain, THETA, ("x1", "x2"), seed=7103))
    assert all(abs(float(b)) > 0.1 for b in baselines.values())  # baselines that matter
    g = scg.grad(chain, baselines=baselines)
    h = jax.hessian(scg.surrogate(chain, baselines=baselines))
    both = lambda t, k: flat(g(t, k), h(t, k))  # noqa: E731
    exact = flat(jax.grad(chain_exact)(THETA), jax.hessian(chain_exact)(THETA))
    assert_mean_close(mc(both, THETA, seed=7104, n=N), exact, what="moving-average (g, H)")


def one_site(theta, key):
    """One Bernoulli site and one cost node with f(0) = 1, f(1) = 3."""
    x = scg.sample(key, D.Bernoulli(logits=theta), name="x")
    return jnp.sqrt(1.0 + 8.0 * x)


def variance_and_se(values, probs, n):
    """Exact variance of a finite distribution and the exact SE of its ddof=1 estimate."""
    mean = np.sum(probs * values)
    var = np.sum(probs * (values - mean) ** 2)
    mu4 = np.sum(probs * (values - mean) ** 4)
    return var, math.sqrt(mu4 / n - var**2 * (n - 3) / (n * (n - 1)))


def test_moving_average_baseline_lowers_the_variance():
    theta, n = -0.5, 50_000
    b = float(AVERAGE.value(warmed_up(one_site, theta, ("x",), seed=7105))["x"])
    assert 1.0 < b < 3.0
    with_b = mc(scg.grad(one_site, baselines={"x": b}), theta, seed=7106, n=n)
    without = mc(scg.grad(one_site), theta, seed=7107, n=n)

    # Exact, by enumeration: the estimate is (f(x) - b) * (x - p) with x ~ Bernoulli(p).
    p = float(sig(theta))
    xs, probs, fs = np.array([0.0, 1.0]), np.array([1.0 - p, p]), np.array([1.0, 3.0])
    exact_grad = float(jax.grad(lambda t: (1 - sig(t)) * 1.0 + sig(t) * 3.0)(theta))
    assert_mean_close(np.stack([with_b, without], 1), [exact_grad, exact_grad])
    var_b, se_b = variance_and_se((fs - b) * (xs - p), probs, n)
    var_0, se_0 = variance_and_se(fs * (xs - p), probs, n)
    assert var_b < var_0  # this model with this baseline must lower the variance

    measured_b = np.var(np.asarray(with_b, np.float64), ddof=1)
    measured_0 = np.var(np.asarray(without, np.float64), ddof=1)
    z = z_bonferroni(2)
    assert abs(measured_0 - var_0) <= z * se_0, (measured_0, var_0, se_0)
    assert abs(measured_b - var_b) <= z * se_b, (measured_b, var_b, se_b)
    assert measured_b < measured_0
    assert measured_b / measured_0 < 1.2 * var_b / var_0, (measured_b / measured_0, var_b / var_0)


def test_moving_average_estimates_under_jit_and_vmap():
    state = warmed_up(chain, THETA, ("x1", "x2"), seed=7108)

    def step(state, theta, key):
        baselines = AVERAGE.value(state)
        g = scg.grad(chain, baselines=baselines)(theta, key)
        h = jax.hessian(scg.surrogate(chain, baselines=baselines))(theta, key)
        return g, h, AVERAGE.update(state, scg.downstream_costs(chain)(theta, key))

    ks = keys(7109, 3)
    eager = [step(state, THETA, k) for k in ks]
    for k, (g, h, new) in zip(ks, eager):
        jg, jh, jnew = jax.jit(step)(state, THETA, k)  # the state goes in and out of jit
        close(jg, g)
        close(jh, h)
        for name in ("x1", "x2"):
            close(jnew.mean[name], new.mean[name])
        assert int(jnew.count) == int(new.count) == int(state.count) + 1
    vg, vh, vnew = jax.jit(jax.vmap(step, (None, None, 0)))(state, THETA, ks)
    close(vg, jnp.stack([e[0] for e in eager]))
    close(vh, jnp.stack([e[1] for e in eager]))
    for name in ("x1", "x2"):
        close(vnew.mean[name], jnp.stack([e[2].mean[name] for e in eager]))


def test_moving_average_update_is_a_pure_function():
    costs = [scg.downstream_costs(chain)(THETA, k) for k in keys(7110, 6)]
    state = AVERAGE.init({"x1": jnp.zeros(()), "x2": jnp.zeros(())})
    eager, jitted = state, state
    update, value = jax.jit(AVERAGE.update), jax.jit(AVERAGE.value)
    for c in costs:
        previous, snapshot = eager, jax.tree_util.tree_map(np.array, eager)
        eager, jitted = AVERAGE.update(eager, c), update(jitted, c)
        # Same inputs, same output; the input state is left as it was.
        jax.tree_util.tree_map(np.testing.assert_array_equal, AVERAGE.update(previous, c), eager)
        jax.tree_util.tree_map(np.testing.assert_array_equal, previous, snapshot)
        for name in ("x1", "x2"):
            close(jitted.mean[name], eager.mean[name])
            close(value(jitted)[name], AVERAGE.value(eager)[name])
    assert int(eager.count) == int(jitted.count) == len(costs)


# --- bias correction ----------------------------------------------------------------------


def first_costs():
    """Downstream costs first observed on the two models, plus a few awkward magnitudes."""
    return [
        scg.downstream_costs(chain)(THETA, keys(7111, 1)[0]),
        scg.downstream_costs(one_site)(-0.5, keys(7112, 1)[0]),
        {"x": jnp.array([3.0, 1.7, -5.1, 0.3, 123.456, 1e-3])},
    ]


def test_moving_average_value_after_one_update_is_the_first_cost_exactly():
    # The docstring's promise ("bias-corrected: the first value itself"), bit for bit.
    for decay in (0.5, 0.7, 0.9, 0.99, 0.999):
        average = scg.baselines.moving_average(decay)
        for costs in first_costs():
            for value in (average.value, jax.jit(average.value)):
                state = average.update(average.init(costs), costs)
                for name in costs:
                    np.testing.assert_array_equal(
                        value(state)[name], costs[name], err_msg=f"decay={decay}, site {name}"
                    )


def test_moving_average_value_is_the_bias_corrected_average_up_to_rounding():
    # The formula is right; its float32 rounding error grows like 1e-7 / (1 - decay) (the update
    # weighs costs by float32(1 - decay), the correction divides by 1 - float32(decay) ** t),
    # which the exact first-value test above catches; here a loose relative tolerance.
    for decay in (0.5, 0.9, 0.99):
        average = scg.baselines.moving_average(decay)
        for c1 in first_costs():
            c2 = jax.tree_util.tree_map(lambda a: 0.5 * a + 1.25, c1)
            one = average.update(average.init(c1), c1)
            two = average.update(one, c2)
            for name in c1:
                a, b = np.asarray(c1[name], np.float64), np.asarray(c2[name], np.float64)
                close(average.value(one)[name], a, rtol=1e-5)
                expected = (decay * (1 - decay) * a + (1 - decay) * b) / (1 - decay**2)
                close(average.value(two)[name], expected, rtol=1e-5)
