"""RELAX and LAX (Grathwohl et al. 2018) and REBAR for OneHotCategorical (Tucker et al. 2017).

Unbiasedness against exact gradients (enumeration for the discrete sites, a closed form for
LAX on a Normal site), with a small MLP control variate of nonzero parameters so that it
acts; jit, no jit and vmap; the control variate's parameters learned by descending the
squared estimate, lowering the variance below the score function's; the conditional Gumbel
sampler ``z̃ ~ p(z | b)``; and misuse. Seeds 14000–14099.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_mean_close, keys, mc
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src.estimators import gumbel_given_argmax

N = 10_000
sig = jax.nn.sigmoid


def mlp_init(key, n_in, width=8):
    k1, k2 = jax.random.split(key)
    return {
        "w1": 0.5 * jax.random.normal(k1, (n_in, width)),
        "b1": jnp.full((width,), 0.1),
        "w2": 0.5 * jax.random.normal(k2, (width,)),
    }


def mlp(params, z, *site_parameters):
    """A small MLP of the relaxed value (flattened); the site's parameters are ignored."""
    hidden = jnp.tanh(jnp.ravel(z) @ params["w1"] + params["b1"])
    return hidden @ params["w2"]


# -- models with exact expectations by enumeration ----------------------------------------------

W = jnp.array([0.7, -0.4, 1.1])


def bernoulli_model(estimator):
    def fn(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta), estimator=estimator)
        return (x @ W - 0.3) ** 2 + jnp.sin(x @ W)  # costs that couple the elements

    return fn


def bernoulli_exact(theta):
    total = 0.0
    for x in itertools.product([0.0, 1.0], repeat=3):
        x = jnp.array(x)
        weight = jnp.prod(jnp.where(x > 0, sig(theta), 1 - sig(theta)))
        total += weight * ((x @ W - 0.3) ** 2 + jnp.sin(x @ W))
    return total


TABLE = jnp.array([[0.2, -1.0, 0.5, 1.5], [1.0, 0.0, -0.5, 0.3]])


def categorical_model(estimator):
    def fn(theta, key):
        i = scg.sample(key, D.Categorical(logits=theta), estimator=estimator)
        return jnp.sum(jax.nn.one_hot(i, 4) * TABLE) ** 2

    return fn


def categorical_exact(theta):
    p = jax.nn.softmax(theta, axis=-1)
    total = 0.0
    for i, j in itertools.product(range(4), repeat=2):
        total += p[0, i] * p[1, j] * (TABLE[0, i] + TABLE[1, j]) ** 2
    return total


V = jnp.array([0.1, 0.9, -0.6])


def one_hot_model(estimator):
    def fn(theta, key):
        x = scg.sample(key, D.OneHotCategorical(logits=theta), estimator=estimator)
        return (x @ V - 0.3) ** 2  # accepts relaxed values too (REBAR)

    return fn


def one_hot_exact(theta):
    return jax.nn.softmax(theta) @ (V - 0.3) ** 2


THETA_B = jnp.array([0.3, -0.8, 1.2])
THETA_C = jnp.array([[0.5, -0.3, 0.0, 1.0], [-1.0, 0.2, 0.4, 0.0]])
THETA_O = jnp.array([0.2, -0.5, 0.7])

DISCRETE = {
    "bernoulli": (bernoulli_model, bernoulli_exact, THETA_B, 3),
    "categorical": (categorical_model, categorical_exact, THETA_C, 8),
    "one_hot": (one_hot_model, one_hot_exact, THETA_O, 3),
}


@pytest.mark.parametrize("name", sorted(DISCRETE))
def test_relax_is_unbiased_against_enumeration(name):
    model, exact, theta, n_in = DISCRETE[name]
    seed = 14000 + 3 * sorted(DISCRETE).index(name)
    phi = mlp_init(jax.random.key(seed), n_in)

    def loss(theta, phi, key):
        return model(scg.estimators.relax(mlp, phi))(theta, key)

    estimate = lambda t, k: scg.grad(loss)(t, phi, k)  # noqa: E731
    grads = mc(estimate, theta, seed=seed + 1, n=N)
    assert_mean_close(grads, jax.grad(exact)(theta))
    # the control variate acts: the estimates differ from the plain score function's
    key = keys(seed + 1, N)[0]
    plain = jax.jit(scg.grad(model("score_function")))(theta, key)
    assert not np.allclose(plain, grads[0])
    # no jit gives the jitted estimate; the value is the loss on the sample
    np.testing.assert_allclose(estimate(theta, key), grads[0], rtol=1e-4, atol=1e-6)
    value = scg.surrogate(lambda t, k: loss(t, phi, k))(theta, key)
    np.testing.assert_allclose(value, model("score_function")(theta, key), rtol=1e-6)


def test_lax_on_a_normal_site_is_unbiased_for_a_cost_that_is_not_differentiable():
    # E[1[x > 0.3]] = Φ((μ − 0.3)/σ): the cost's derivative in x is zero, LAX still works.
    phi = mlp_init(jax.random.key(14010), 2)

    def loss(theta, phi, key):
        dist = D.Normal(theta[:2], jnp.exp(theta[2:]))
        x = scg.sample(key, dist, estimator=scg.estimators.relax(mlp, phi))
        return jnp.sum((x > 0.3).astype(x.dtype))

    def exact(theta):
        mu, sigma = theta[:2], jnp.exp(theta[2:])
        return jnp.sum(jax.scipy.stats.norm.cdf((mu - 0.3) / sigma))

    theta = jnp.array([0.1, 0.6, -0.2, 0.3])
    grads = mc(lambda t, k: scg.grad(loss)(t, phi, k), theta, seed=14011, n=N)
    assert_mean_close(grads, jax.grad(exact)(theta))


def test_rebar_on_one_hot_categorical_is_unbiased_against_enumeration():
    def loss(theta, control, key):
        estimator = scg.estimators.rebar(control[0], control[1])
        return one_hot_model(estimator)(theta, key)

    estimate = jax.vmap(scg.grad(loss), (None, None, 0))
    for seed, control in ((14020, (1.0, 0.5)), (14022, (-0.5, 2.0))):
        grads = jax.jit(estimate)(THETA_O, jnp.array(control), keys(seed, N))
        assert_mean_close(grads, jax.grad(one_hot_exact)(THETA_O))
    # a vector of one-hot sites, per-element costs
    theta = jnp.array([[0.2, -0.5, 0.7], [1.0, 0.0, -1.0]])

    def vector(theta, key):
        x = scg.sample(key, D.OneHotCategorical(logits=theta), estimator="rebar")
        return jnp.sum((x @ V - 0.3) ** 2)

    exact = lambda t: jnp.sum(jax.nn.softmax(t, -1) @ (V - 0.3) ** 2)  # noqa: E731
    assert_mean_close(mc(scg.grad(vector), theta, seed=14024, n=N), jax.grad(exact)(theta))


def test_relax_site_under_vmap_inside_the_loss():
    phi = mlp_init(jax.random.key(14070), 1)
    weights = jnp.array([1.0, 2.0])

    def loss(theta, key):
        def one(k, t):
            return scg.sample(k, D.Bernoulli(logits=t), estimator=scg.estimators.relax(mlp, phi))

        x = jax.vmap(one)(jax.random.split(key, 2), theta)
        return jnp.sum((x - 0.45) ** 2 * weights)

    exact = lambda t: jnp.sum((sig(t) * 0.55**2 + (1 - sig(t)) * 0.45**2) * weights)  # noqa: E731
    theta = jnp.array([0.3, -0.4])
    assert_mean_close(mc(scg.grad(loss), theta, seed=14071, n=N), jax.grad(exact)(theta))


def test_relax_with_a_baseline_stays_unbiased():
    # The site is a score function site: a baseline acts on f(b)'s score as usual.
    phi = mlp_init(jax.random.key(14074), 1)

    def loss(theta, key):
        relax = scg.estimators.relax(mlp, phi)
        x = scg.sample(key, D.Bernoulli(logits=theta), estimator=relax, baseline=0.25)
        return (x - 0.45) ** 2

    exact = lambda t: sig(t) * 0.55**2 + (1 - sig(t)) * 0.45**2  # noqa: E731
    assert_mean_close(mc(scg.grad(loss), 0.3, seed=14075, n=N), jax.grad(exact)(0.3))


def test_relax_site_downstream_of_a_branching_site():
    # An enumerated site upstream runs the rest twice: the control term counts once per branch,
    # weighted like the costs.
    phi = mlp_init(jax.random.key(14072), 1)

    def loss(theta, key):
        k1, k2 = jax.random.split(key)
        y = scg.sample(k1, D.Bernoulli(logits=theta[0]), estimator="enumerate")
        relax = scg.estimators.relax(mlp, phi)
        x = scg.sample(k2, D.Bernoulli(logits=theta[1] + y), estimator=relax)
        return (x - 0.45 + y) ** 2

    def exact(theta):
        total = 0.0
        for y in (0.0, 1.0):
            p_y, p_x = sig(theta[0]) if y else 1 - sig(theta[0]), sig(theta[1] + y)
            total += p_y * (p_x * (0.55 + y) ** 2 + (1 - p_x) * (y - 0.45) ** 2)
        return total

    theta = jnp.array([0.3, -0.4])
    assert_mean_close(mc(scg.grad(loss), theta, seed=14073, n=N), jax.grad(exact)(theta))


# -- learning the control variate -------------------------------------------------------------


def relaxed_cost_plus_mlp(phi, z, logits):
    """Grathwohl et al.'s form: a scaled relaxed cost plus an MLP of the relaxed value."""
    relaxed = sig(z / jnp.exp(phi["log_temperature"]))
    return phi["scale"] * ((relaxed @ W - 0.3) ** 2 + jnp.sin(relaxed @ W)) + mlp(phi["mlp"], z)


def squared_norm_of_estimate(phi, key):
    def loss(theta, phi, key):
        return bernoulli_model(scg.estimators.relax(relaxed_cost_plus_mlp, phi))(theta, key)

    return jnp.sum(scg.grad(loss)(THETA_B, phi, key) ** 2)


def total_variance(phi, seed, n=5_000):
    def loss(theta, key):
        return bernoulli_model(scg.estimators.relax(relaxed_cost_plus_mlp, phi))(theta, key)

    return float(jnp.sum(jnp.var(mc(scg.grad(loss), THETA_B, seed=seed, n=n), axis=0)))


def test_relax_control_variate_learned_by_descending_the_squared_estimate():
    # The mean of ĝ does not depend on φ, so ∇φ E[|ĝ|²] = ∇φ tr Var[ĝ]: descend it.
    phi = {
        "scale": jnp.zeros(()),
        "log_temperature": jnp.log(jnp.asarray(0.5)),
        "mlp": mlp_init(jax.random.key(14030), 3),
    }
    optimiser = optax.adam(0.03)
    variance_grad = jax.vmap(jax.grad(squared_norm_of_estimate), (None, 0))

    @jax.jit
    def step(phi, opt_state, key):
        grads = variance_grad(phi, jax.random.split(key, 32))
        g = jax.tree_util.tree_map(lambda x: x.mean(0), grads)
        updates, opt_state = optimiser.update(g, opt_state)
        return optax.apply_updates(phi, updates), opt_state

    start = total_variance(phi, seed=14031)
    opt_state = optimiser.init(phi)
    for key in keys(14032, 60):
        phi, opt_state = step(phi, opt_state, key)
    learned = total_variance(phi, seed=14033)
    plain = float(
        jnp.sum(jnp.var(mc(scg.grad(bernoulli_model("score_function")), THETA_B, 14034, 5_000), 0))
    )
    # measured: start 2.2 (a random MLP adds variance), plain 1.6, learned 0.23
    assert learned < 0.5 * start and learned < 0.5 * plain, (start, learned, plain)


def test_the_squared_estimate_is_differentiable_in_phi_under_jit_and_vmap():
    phi = {
        "scale": jnp.asarray(0.5),
        "log_temperature": jnp.asarray(0.0),
        "mlp": mlp_init(jax.random.key(14040), 3),
    }
    key = jax.random.key(14041)
    eager = jax.grad(squared_norm_of_estimate)(phi, key)
    jitted = jax.jit(jax.grad(squared_norm_of_estimate))(phi, key)
    batched = jax.vmap(jax.grad(squared_norm_of_estimate), (None, 0))(phi, keys(14042, 3))
    for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(batched))
    assert float(jnp.abs(eager["scale"])) > 0  # φ reaches the estimate


# -- the conditional sampler z̃ ~ p(z | b) -------------------------------------------------------


def test_gumbel_given_argmax_has_the_conditional_distribution():
    # Draw (b, z) jointly (z = θ + Gumbel, b = argmax z), and z̃ ~ p(z | b) from b alone:
    # (b, z̃) must have the distribution of (b, z). Compare E[z_k | b = j] and E[1[z_k < t] | b
    # = j] across the two, and check that argmax z̃ = b.
    theta = jnp.array([0.5, -1.0, 0.0, 1.2])
    n = 40_000
    k_z, k_tilde = jax.random.split(jax.random.key(14050))
    z = theta + jax.random.gumbel(k_z, (n, 4))
    b = jnp.argmax(z, -1)
    z_tilde = jax.vmap(gumbel_given_argmax, (0, None, 0))(jax.random.split(k_tilde, n), theta, b)
    assert bool(jnp.all(jnp.argmax(z_tilde, -1) == b))
    for j in range(4):
        mask = np.asarray(b == j)
        for stat in (lambda x: x, lambda x: (x < 0.5).astype(x.dtype)):
            a, c = np.asarray(stat(z[mask])), np.asarray(stat(z_tilde[mask]))
            se = np.sqrt(a.var(0) / len(a) + c.var(0) / len(c))
            gap = np.abs(a.mean(0) - c.mean(0))
            assert np.all(gap <= 5.5 * se + 1e-6), (j, a.mean(0), c.mean(0))
    # the mixture over b reproduces the Gumbel-max marginals: E[z̃_k] = θ_k + γ
    mean, se = np.asarray(z_tilde.mean(0)), np.asarray(z_tilde.std(0)) / math.sqrt(n)
    assert np.all(np.abs(mean - (theta + np.euler_gamma)) <= 5.5 * se)


def test_gumbel_given_argmax_is_reparameterised():
    # d/dθ E[z̃_b] with b fixed: the conditional mean moves with the logits (finite, nonzero).
    key = jax.random.key(14051)
    g = jax.grad(lambda t: gumbel_given_argmax(key, t, jnp.asarray(1))[0])(jnp.zeros(3))
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0


# -- misuse ---------------------------------------------------------------------------------------


def test_relax_refuses_a_distribution_it_cannot_relax_naming_the_site():
    estimator = scg.estimators.relax(mlp, mlp_init(jax.random.key(14060), 2))
    with pytest.raises(scg.SiteError, match=r"(?s)'counts'.*'relax' does not apply to Poisson"):
        scg.sample(jax.random.key(14061), D.Poisson(2.0), estimator=estimator, name="counts")


def test_rebar_refuses_integer_categorical_and_points_at_relax():
    with pytest.raises(scg.SiteError, match=r"(?s)'action'.*OneHotCategorical.*relax"):
        dist = D.Categorical(logits=jnp.zeros(3))
        scg.sample(jax.random.key(14062), dist, estimator="rebar", name="action")


def test_relax_inside_a_loop_is_refused():
    phi = mlp_init(jax.random.key(14063), 1)

    def fn(theta, key):
        def body(carry, k):
            x = scg.sample(k, D.Bernoulli(logits=theta), estimator=scg.estimators.relax(mlp, phi))
            return carry + x, None

        return lax.scan(body, 0.0, jax.random.split(key, 3))[0]

    with pytest.raises(scg.SiteError, match="'relax'.*outside loops"):
        scg.grad(fn)(0.0, jax.random.key(14064))


def test_graph_names_relax_sites():
    estimator = scg.estimators.relax(lambda phi, z, logits: phi * z, jnp.asarray(1.0))

    def fn(theta, key):
        return scg.sample(key, D.Bernoulli(logits=theta), estimator=estimator, name="x") ** 2

    graph = scg.graph(fn)(0.0, jax.random.key(14080))
    assert [n.estimator for n in graph.nodes if n.kind == "site"] == ["relax"]
