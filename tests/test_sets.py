"""The unordered set estimator (sampling without replacement) and IndeCateR.

Against exact enumeration: the gradients (first order) and the values, with many keys; the
exact sum when the set covers the support; Gumbel-top-k's sets against the probabilities of
sampling without replacement written out as orderings; the variance claims against the score
function with as many evaluations of the costs; and misuse.
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src import sets

N = 10_000
VALUES = jnp.array([1.0, -2.0, 0.5, 3.0, 0.2])
LOGITS = jnp.array([0.2, -0.3, 0.5, 1.0, -1.0])


def ordered_prob(p, sequence, removed=0.0):
    """Probability of drawing ``sequence`` first, without replacement, from ``p`` less a mass."""
    out, left = 1.0, 1.0 - removed
    for s in sequence:
        out, left = out * p[s] / left, left - p[s]
    return out


def set_prob(p, subset, removed=0.0):
    return sum(ordered_prob(p, order, removed) for order in itertools.permutations(subset))


# -- models, each with its exact expectation ---------------------------------------------------


def chain(estimator, one_hot=False):
    """x (estimator under test) → y (score function); costs nonlinear in x and in θ."""

    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        dist = (D.OneHotCategorical if one_hot else D.Categorical)(logits=theta)
        x = scg.sample(k1, dist, estimator=estimator)
        v = jnp.dot(x, VALUES) if one_hot else VALUES[x]
        y = scg.sample(k2, D.Bernoulli(logits=v * theta[0]))
        return (v + y) ** 2 + theta[1] * v

    return fn


def chain_exact(theta):
    p, total = jax.nn.softmax(theta), 0.0
    for x in range(5):
        q = jax.nn.sigmoid(VALUES[x] * theta[0])
        for y in (0.0, 1.0):
            total += p[x] * (q if y else 1 - q) * ((VALUES[x] + y) ** 2 + theta[1] * VALUES[x])
    return total


def vector(estimator, dist=D.Categorical):
    """A vector of 4 independent sites (3 categories or Bernoulli) and a cost of all of them,
    with a score-function site downstream."""

    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, dist(logits=theta), estimator=estimator)
        s = jnp.sum(VALUES[:3][x] if dist is D.Categorical else x * VALUES[:4])
        y = scg.sample(k2, D.Bernoulli(logits=0.5 * s))
        return (s - 1.0) ** 2 + y * jnp.sum(theta)

    return fn


def vector_exact(theta, bernoulli=False):
    if bernoulli:
        p = jax.nn.sigmoid(theta)
        p = jnp.stack([1 - p, p], -1)
    else:
        p = jax.nn.softmax(theta, -1)
    xs = jnp.array(list(itertools.product(range(p.shape[-1]), repeat=4)))  # every joint value
    weight = jnp.prod(p[jnp.arange(4), xs], -1)
    s = jnp.sum(xs * VALUES[:4] if bernoulli else VALUES[xs], -1)
    return jnp.sum(weight * ((s - 1.0) ** 2 + jax.nn.sigmoid(0.5 * s) * jnp.sum(theta)))


THETA_VECTOR = jax.random.normal(jax.random.key(14100), (4, 3))
THETA_BERNOULLI = jnp.array([0.3, -0.8, 1.2, 0.0])

# -- unbiasedness against exact enumeration ----------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "one_hot", "seed"),
    [
        (scg.estimators.unordered_set(1), False, 14101),
        (scg.estimators.unordered_set(2), False, 14102),
        (scg.estimators.unordered_set(3), True, 14103),
        (scg.estimators.unordered_set(3, baseline=False), False, 14104),
    ],
    ids=["k1", "k2", "k3-one-hot", "k3-no-baseline"],
)
def test_unordered_set_value_and_gradient_are_unbiased(estimator, one_hot, seed):
    values, grads = mc(scg.value_and_grad(chain(estimator, one_hot)), LOGITS, seed=seed, n=N)
    assert_mean_close(values, chain_exact(LOGITS), what="value (sum-and-sample w/o replacement)")
    assert_mean_close(grads, jax.grad(chain_exact)(LOGITS), what=f"gradient, {estimator}")


@pytest.mark.parametrize(
    ("dist", "theta", "seed"),
    [(D.Categorical, THETA_VECTOR, 14105), (D.Bernoulli, THETA_BERNOULLI, 14106)],
    ids=["categorical", "bernoulli"],
)
def test_indecater_value_and_gradient_are_unbiased(dist, theta, seed):
    exact = lambda t: vector_exact(t, bernoulli=dist is D.Bernoulli)  # noqa: E731
    values, grads = mc(scg.value_and_grad(vector("indecater", dist)), theta, seed=seed, n=N)
    assert_mean_close(values, exact(theta), what="IndeCateR value")
    assert_mean_close(grads, jax.grad(exact)(theta), what="IndeCateR gradient")


def test_indecater_on_a_one_hot_vector_site_through_a_matrix_product():
    weights = jnp.array([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.3]])

    def fn(theta, key):
        x = scg.sample(key, D.OneHotCategorical(logits=theta), estimator=scg.estimators.indecater())
        return jnp.sum(jnp.tanh(x @ weights) ** 2)

    def exact(theta):
        p, total = jax.nn.softmax(theta, -1), 0.0
        for xs in itertools.product(range(3), repeat=3):
            x = jax.nn.one_hot(jnp.array(xs), 3)
            total += math.prod(p[d, c] for d, c in enumerate(xs)) * jnp.sum(
                jnp.tanh(x @ weights) ** 2
            )
        return total

    theta = THETA_VECTOR[:3]
    assert_mean_close(mc(scg.grad(fn), theta, seed=14107, n=N), jax.grad(exact)(theta))


@pytest.mark.parametrize("estimator", [scg.estimators.unordered_set(2), "indecater"])
def test_jit_and_eager_agree(estimator):
    fn = scg.value_and_grad(chain(estimator))
    for key in keys(14108, 1):
        eager, jitted = fn(LOGITS, key), jax.jit(fn)(LOGITS, key)
        np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-5)
        np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-4, atol=1e-6)


# -- exact sums --------------------------------------------------------------------------------


def single(estimator, one_hot=False):
    def fn(theta, key):
        dist = (D.OneHotCategorical if one_hot else D.Categorical)(logits=theta)
        x = scg.sample(key, dist, estimator=estimator)
        v = jnp.dot(x, VALUES) if one_hot else VALUES[x]
        return jnp.sin(v * theta[2]) + v**2

    return fn


def single_exact(theta):
    return jnp.sum(jax.nn.softmax(theta) * (jnp.sin(VALUES * theta[2]) + VALUES**2))


@pytest.mark.parametrize(
    ("estimator", "one_hot"),
    [
        (scg.estimators.unordered_set(5), False),
        (scg.estimators.unordered_set(8), True),
        (scg.estimators.unordered_set(5, baseline=False), False),
        ("indecater", False),  # a scalar site: IndeCateR sums its categories exactly
    ],
)
def test_a_set_covering_the_support_is_the_exact_sum_key_by_key(estimator, one_hot):
    fn = jax.jit(scg.value_and_grad(single(estimator, one_hot)))
    for key in keys(14109, 3):
        value, grad = fn(LOGITS, key)
        np.testing.assert_allclose(value, single_exact(LOGITS), rtol=1e-5)
        np.testing.assert_allclose(grad, jax.grad(single_exact)(LOGITS), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("k", "seed"), [(2, 14126), (4, 14127)])
def test_categories_of_probability_zero_are_left_out(k, seed):
    # Two of five categories masked: k = 4 holds the three others (the exact sum) and one
    # masked category of weight 0; k = 2 is unbiased.
    masked = jnp.array([0.3, -jnp.inf, -0.5, 1.0, -jnp.inf])

    def fn(theta, key):
        return single(scg.estimators.unordered_set(k))(theta + masked, key)

    def exact(theta):
        theta = theta + masked
        p = jax.nn.softmax(theta)
        return jnp.sum(jnp.where(p > 0, p * (jnp.sin(VALUES * theta[2]) + VALUES**2), 0.0))

    values, grads = mc(scg.value_and_grad(fn), LOGITS, seed=seed, n=2_000 if k == 4 else N)
    assert np.isfinite(np.asarray(grads)).all()
    if k == 4:
        np.testing.assert_allclose(values, exact(LOGITS), rtol=1e-5)
        np.testing.assert_allclose(
            grads, np.broadcast_to(jax.grad(exact)(LOGITS), grads.shape), rtol=1e-4, atol=1e-5
        )
    else:
        assert_mean_close(values, exact(LOGITS))
        assert_mean_close(grads, jax.grad(exact)(LOGITS))


# -- sampling without replacement --------------------------------------------------------------


def test_gumbel_top_k_draws_distinct_values_with_the_exact_inclusion_probabilities():
    p = jax.nn.softmax(LOGITS)
    k = 3
    drawn = jax.vmap(lambda key: sets.gumbel_top_k(key, jnp.log(p), k))(keys(14110, N))
    assert all(len(set(row)) == k for row in np.asarray(drawn).tolist())
    included = np.asarray(jax.nn.one_hot(drawn, 5).sum(1))
    exact = np.zeros(5)
    for subset in itertools.combinations(range(5), k):
        exact[list(subset)] += set_prob(np.asarray(p), subset)
    np.testing.assert_allclose(exact.sum(), k, rtol=1e-6)
    assert_mean_close(included, exact, what="inclusion probabilities")
    # Each set as often as its probability (the first 3 of 10 sets, as indicators).
    first = [tuple(sorted(s)) for s in itertools.combinations(range(5), k)][:3]
    hits = np.array([[tuple(sorted(row)) == s for s in first] for row in drawn.tolist()])
    assert_mean_close(hits, [set_prob(np.asarray(p), s) for s in first], what="set probabilities")


def test_set_probabilities_match_the_sum_over_orderings():
    p = np.asarray(jax.nn.softmax(jax.random.normal(jax.random.key(14111), (7,))))
    chosen = [5, 1, 3, 6]
    outside = math.log(sum(p[i] for i in range(7) if i not in chosen))
    log_q = jax.jit(sets.set_log_probs)(jnp.log(jnp.asarray(p[chosen])), outside)
    for mask in range(16):
        subset = [chosen[i] for i in range(4) if mask >> i & 1]
        removed = sum(p[c] for c in chosen if c not in subset)
        np.testing.assert_allclose(np.exp(log_q[mask]), set_prob(p, subset, removed), rtol=1e-5)


# -- variance ----------------------------------------------------------------------------------


COST = jnp.sin(3.0 * VALUES) + 2.0  # a cost per category, away from 0: baselines matter


def score_function_samples(k, leave_one_out):
    """k independent score-function samples of E[COST[x]], averaged (or with the leave-one-out
    baseline of Kool et al. 2019), written out by hand."""

    def fn(theta, key):
        x = jax.random.categorical(key, theta, shape=(k,))
        f = COST[x]
        scores = jax.nn.one_hot(x, 5) - jax.nn.softmax(theta)
        if leave_one_out:
            return (f - jnp.mean(f)) @ scores / (k - 1)
        return f @ scores / k

    return fn


def test_the_unordered_set_has_lower_variance_than_the_score_function_with_k_samples():
    def fn(estimator):
        return lambda t, key: COST[scg.sample(key, D.Categorical(logits=t), estimator=estimator)]

    exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * COST))(LOGITS)
    for k in (2, 3):
        grads = mc(scg.grad(fn(scg.estimators.unordered_set(k))), LOGITS, seed=14112 + k, n=N)
        assert_mean_close(grads, exact)
        variance = float(jnp.sum(jnp.var(grads, 0)))
        for leave_one_out in (False, True):
            reference = mc(score_function_samples(k, leave_one_out), LOGITS, seed=14115 + k, n=N)
            assert_mean_close(reference, exact)  # the references are right
            assert variance < 0.8 * float(jnp.sum(jnp.var(reference, 0)))


def test_unordered_set_moments_summed_over_all_sets():
    # Exact mean and variance: the estimate for each set of 2 or 3 of the 5 categories, weighted
    # by the probability of drawing that set without replacement. Exactly unbiased, and the
    # variances below those of k score-function samples (their exact variances: 2.292 and
    # 1.528 plain, 0.072 and 0.033 with the leave-one-out baseline).
    p = np.asarray(jax.nn.softmax(LOGITS))
    exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * COST))(LOGITS)

    @functools.partial(jax.jit, static_argnums=1)
    def estimate(chosen, with_baseline):
        weights = lambda t: sets._set_weights(jax.nn.log_softmax(t), chosen, with_baseline)  # noqa: E731
        return COST[chosen] @ weights(LOGITS), COST[chosen] @ jax.jacobian(weights)(LOGITS)

    variances = {}
    for k, with_baseline in itertools.product((2, 3), (True, False)):
        mean_value, mean, second = 0.0, 0.0, 0.0
        for chosen in itertools.combinations(range(5), k):
            value, grad = estimate(jnp.array(chosen), with_baseline)
            weight = set_prob(p, chosen)
            mean_value += weight * value
            mean, second = mean + weight * grad, second + weight * jnp.sum(grad**2)
        np.testing.assert_allclose(mean_value, jnp.sum(p * COST), rtol=1e-5)
        np.testing.assert_allclose(mean, exact, rtol=1e-4, atol=1e-6)
        variances[k, with_baseline] = float(second - jnp.sum(mean**2))
    assert variances[2, True] < 0.05 and variances[3, True] < 0.02
    assert variances[2, True] < variances[2, False] and variances[3, True] < variances[3, False]


def test_indecater_has_lower_variance_than_the_score_function_with_as_many_evaluations():
    # Per-coordinate terms and an interaction of all coordinates. IndeCateR sums each
    # coordinate's terms exactly (zero variance for an additive cost); the interaction is what
    # is left. jax_scg's score function credits each per-coordinate term to its coordinate
    # only, so it beats the leave-one-out baseline written by hand here. (On a purely
    # quadratic cost, (Σ_d v[x_d] − 1)², IndeCateR ties the leave-one-out score function.)
    def cost(v):
        return jnp.sum((v - 0.5) ** 2, -1) + 2.0 * jnp.tanh(jnp.sum(v, -1))

    def fn(estimator):
        return lambda t, key: cost(
            VALUES[:3][scg.sample(key, D.Categorical(logits=t), estimator=estimator)]
        )

    evaluations = THETA_VECTOR.size  # D·n branches

    def leave_one_out(theta, key):
        x = jax.random.categorical(key, theta, axis=-1, shape=(evaluations, 4))
        f = cost(VALUES[:3][x])
        scores = jax.nn.one_hot(x, 3) - jax.nn.softmax(theta, -1)
        return jnp.einsum("i,idk->dk", f - jnp.mean(f), scores) / (evaluations - 1)

    def averaged(theta, key):
        sample_keys = jax.random.split(key, evaluations)
        return jnp.mean(jax.vmap(scg.grad(fn("score_function")), (None, 0))(theta, sample_keys), 0)

    variance = {
        name: float(jnp.sum(jnp.var(mc(estimate, THETA_VECTOR, seed=seed, n=N), 0)))
        for name, estimate, seed in [
            ("indecater", scg.grad(fn("indecater")), 14120),
            ("score_function", averaged, 14121),
            ("leave_one_out", leave_one_out, 14122),
        ]
    }
    assert variance["indecater"] < 0.5 * variance["score_function"]
    assert variance["indecater"] < 0.3 * variance["leave_one_out"]


# -- misuse ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "needs"),
    [(scg.estimators.unordered_set(2), "Categorical"), ("indecater", "Bernoulli, Categorical")],
)
def test_an_unsupported_distribution_is_refused_naming_the_site(estimator, needs):
    fn = lambda t, key: scg.sample(key, D.Normal(t, 1.0), estimator=estimator, name="height")  # noqa: E731
    with pytest.raises(scg.SiteError, match=rf"(?s)height.*{needs}"):
        scg.grad(fn)(0.0, jax.random.key(14125))


@pytest.mark.parametrize("k", [0, 13, 2.0, True])
def test_a_bad_set_size_is_refused(k):
    with pytest.raises(ValueError, match="unordered_set"):
        scg.estimators.unordered_set(k)


def test_a_cost_combining_elements_of_a_batched_unordered_set_site_is_refused():
    def fn(theta, key):
        x = scg.sample(key, D.Categorical(logits=theta), estimator=scg.estimators.unordered_set(2))
        return jnp.sum(VALUES[:3][x]) ** 2  # each element draws its own set: no joint weight

    with pytest.raises(scg.SiteError, match="per-element credit"):
        jax.jit(scg.grad(fn))(THETA_VECTOR, jax.random.key(14123))


def test_a_batched_unordered_set_site_with_per_element_costs():
    def fn(theta, key):
        x = scg.sample(key, D.Categorical(logits=theta), estimator=scg.estimators.unordered_set(2))
        return jnp.sum(VALUES[:3][x] ** 2 * jnp.arange(1.0, 5.0))

    exact = lambda t: jnp.sum(jax.nn.softmax(t, -1) @ VALUES[:3] ** 2 * jnp.arange(1.0, 5.0))  # noqa: E731
    assert_mean_close(
        mc(scg.grad(fn), THETA_VECTOR, seed=14124, n=N), jax.grad(exact)(THETA_VECTOR)
    )


# -- composition -------------------------------------------------------------------------------


def test_indecater_sites_under_vmap_and_next_to_an_unordered_set_site():
    # Two vector sites from jax.vmap (one weight per vmapped site), and an unordered set site
    # whose cost mixes with them: the branches multiply (12 × 2 per vmapped instance).
    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        sample = lambda k, t: scg.sample(k, D.Categorical(logits=t), estimator="indecater")  # noqa: E731
        x = jax.vmap(sample)(jax.random.split(k1, 2), theta)
        y = scg.sample(
            k2, D.Categorical(logits=theta[0, 0]), estimator=scg.estimators.unordered_set(2)
        )
        return jnp.sum(jnp.tanh(jnp.sum(VALUES[:3][x], -1) - VALUES[y]) ** 2)

    def exact(theta):
        xs = jnp.array(list(itertools.product(range(3), repeat=4)))  # (81, 4)
        p = jnp.prod(jax.nn.softmax(theta, -1)[:, jnp.arange(4), xs], -1)  # (2, 81)
        q = jax.nn.softmax(theta[0, 0])
        cost = jnp.tanh(jnp.sum(VALUES[xs], -1)[:, None] - VALUES[:3]) ** 2  # (81, y)
        return jnp.sum(p @ cost @ q)

    theta = jnp.stack([THETA_VECTOR, -THETA_VECTOR])
    assert_mean_close(mc(scg.grad(fn), theta, seed=14128, n=4_000), jax.grad(exact)(theta))
