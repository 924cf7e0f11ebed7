"""Tests for jax_scg.distributions.

Closed forms are written out independently with ``math``/``numpy``; statistical
checks use 5 standard errors computed from the exact variance (or, for gradients,
from the per-sample gradients).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_scg import distributions as D

N_MC = 20_000  # Monte-Carlo sample size for moment and gradient checks.
FLOAT = jnp.float32
INT = jnp.asarray(0).dtype  # jax's default integer dtype


def keys(seed, n):
    return jax.random.split(jax.random.key(seed), n)


# name -> (scalar-parameter factory, broadcast-batch factory, batch shape, event shape)
CASES = {
    "normal": (
        lambda: D.Normal(0.5, 2.0),
        lambda: D.Normal(jnp.zeros((2, 1)), jnp.ones(3)),
        (2, 3),
        (),
    ),
    "bernoulli_logits": (
        lambda: D.Bernoulli(logits=0.3),
        lambda: D.Bernoulli(logits=jnp.zeros((2, 3))),
        (2, 3),
        (),
    ),
    "bernoulli_probs": (
        lambda: D.Bernoulli(probs=0.3),
        lambda: D.Bernoulli(probs=jnp.full(3, 0.3)),
        (3,),
        (),
    ),
    "categorical": (
        lambda: D.Categorical(logits=jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))),
        lambda: D.Categorical(probs=jnp.ones((2, 3, 4))),
        (2, 3),
        (),
    ),
    "onehot": (
        lambda: D.OneHotCategorical(probs=jnp.array([0.1, 0.2, 0.3, 0.4])),
        lambda: D.OneHotCategorical(logits=jnp.zeros((3, 4))),
        (3,),
        (4,),
    ),
    "poisson": (
        lambda: D.Poisson(3.0),
        lambda: D.Poisson(jnp.array([1.0, 10.0, 100.0])),
        (3,),
        (),
    ),
    "gamma": (
        lambda: D.Gamma(2.0, 1.5),
        lambda: D.Gamma(jnp.ones((2, 1)), jnp.ones(3)),
        (2, 3),
        (),
    ),
    "beta": (
        lambda: D.Beta(2.0, 3.0),
        lambda: D.Beta(jnp.ones(3), 2.0),
        (3,),
        (),
    ),
    "dirichlet": (
        lambda: D.Dirichlet(jnp.array([1.0, 2.0, 3.0])),
        lambda: D.Dirichlet(jnp.ones((2, 3))),
        (2,),
        (3,),
    ),
    "uniform": (
        lambda: D.Uniform(-1.0, 2.0),
        lambda: D.Uniform(jnp.zeros((2, 1)), jnp.ones(3)),
        (2, 3),
        (),
    ),
    "exponential": (
        lambda: D.Exponential(2.0),
        lambda: D.Exponential(jnp.ones(3)),
        (3,),
        (),
    ),
}
INTEGER_SAMPLES = {"categorical", "poisson"}
SCALAR_EVENT = {"onehot": (4,), "dirichlet": (3,)}
REPARAMETERIZED = {
    D.Normal: True, D.Gamma: True, D.Beta: True, D.Dirichlet: True, D.Uniform: True,
    D.Exponential: True, D.Bernoulli: False, D.Categorical: False, D.OneHotCategorical: False,
    D.Poisson: False,
}  # fmt: skip


def expected_dtype(name, x64=False):
    if name in INTEGER_SAMPLES:
        return jnp.int64 if x64 else INT
    return jnp.float64 if x64 else FLOAT


def check_sample(name, d, x, batch_shape, event_shape, lead=()):
    assert x.shape == lead + batch_shape + event_shape
    assert x.dtype == expected_dtype(name)
    assert d.batch_shape == batch_shape and d.event_shape == event_shape


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample_shapes_dtypes_jit(name):
    """Scalar parameters eagerly; broadcast batch parameters under jit (vmap: test_sample_mean)."""
    scalar, batched, batch_shape, event_shape = CASES[name][0](), *CASES[name][1:]
    batched = batched()
    k = keys(0, 2)
    jit_sample = jax.jit(lambda dist, key: dist.sample(key))  # distribution as a pytree argument
    for d, bs, es, x in [
        (scalar, (), SCALAR_EVENT.get(name, ()), scalar.sample(k[0])),
        (batched, batch_shape, event_shape, jit_sample(batched, k[1])),
    ]:
        check_sample(name, d, x, bs, es)
        lp = d.log_prob(x)
        assert lp.shape == bs and lp.dtype == FLOAT
        assert np.all(np.isfinite(lp))


@pytest.mark.parametrize("name", ["normal", "bernoulli_probs", "categorical", "gamma"])
def test_raw_uint32_keys(name):
    d = CASES[name][0]()
    check_sample(name, d, d.sample(jax.random.PRNGKey(1)), (), SCALAR_EVENT.get(name, ()))


@pytest.mark.parametrize("name", sorted(CASES))
def test_x64_dtypes(name):
    with jax.enable_x64(True):
        d = CASES[name][0]()  # Python-scalar (or freshly created) parameters.
        x = d.sample(jax.random.key(2))
        assert x.dtype == expected_dtype(name, x64=True)
        assert d.log_prob(x).dtype == jnp.float64


@pytest.mark.parametrize("name", sorted(CASES))
def test_pytree_and_immutability(name):
    d = CASES[name][1]()
    leaves, treedef = jax.tree_util.tree_flatten(d)
    assert len(leaves) >= 1
    hash(treedef)
    # Unflattening with placeholders must not run __init__ or arithmetic.
    placeholder = jax.tree_util.tree_unflatten(treedef, [object()] * len(leaves))
    assert type(placeholder) is type(d)
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.batch_shape == d.batch_shape
    assert type(d).is_reparameterized is REPARAMETERIZED[type(d)]
    with pytest.raises(AttributeError):
        d.foo = 1


def test_logits_and_probs_have_different_treedefs():
    a = jax.tree_util.tree_structure(D.Bernoulli(logits=0.0))
    b = jax.tree_util.tree_structure(D.Bernoulli(probs=0.5))
    assert a != b


@pytest.mark.parametrize("cls", [D.Bernoulli, D.Categorical, D.OneHotCategorical])
def test_logits_probs_errors(cls):
    with pytest.raises(ValueError, match=r"logits.*probs"):
        cls()
    with pytest.raises(ValueError, match=r"logits.*probs"):
        cls(logits=jnp.zeros(2), probs=jnp.ones(2) / 2)


# ----------------------------------------------------------------------------- log_prob


def integrate(d, grid):
    return np.trapezoid(np.exp(np.asarray(d.log_prob(jnp.asarray(grid)), np.float64)), grid)


@pytest.mark.parametrize(
    "d, lo, hi",
    [
        (D.Normal(0.5, 2.0), -20.0, 20.0),
        (D.Gamma(2.0, 1.5), 0.0, 40.0),
        (D.Beta(2.0, 3.0), 0.0, 1.0),
        (D.Uniform(-1.0, 2.0), -2.0, 3.0),
        (D.Exponential(2.0), 0.0, 30.0),
    ],
)
def test_continuous_densities_integrate_to_one(d, lo, hi):
    assert abs(integrate(d, np.linspace(lo, hi, 200_001)) - 1.0) < 1e-3


def test_normal_log_prob_closed_form():
    x, mu, s = np.array([-3.0, 0.0, 0.5, 4.0]), 0.5, 2.0
    density = np.exp(-((x - mu) ** 2) / (2 * s**2)) / (s * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(D.Normal(mu, s).log_prob(x), np.log(density), rtol=1e-6)


def test_gamma_beta_exponential_uniform_closed_forms():
    x = np.array([0.1, 0.5, 0.9])
    a, b = 2.5, 1.5
    gamma_pdf = b**a * x ** (a - 1) * np.exp(-b * x) / math.gamma(a)
    np.testing.assert_allclose(D.Gamma(a, b).log_prob(x), np.log(gamma_pdf), rtol=1e-5)
    beta_pdf = (
        x ** (a - 1) * (1 - x) ** (b - 1) * math.gamma(a + b) / (math.gamma(a) * math.gamma(b))
    )
    np.testing.assert_allclose(D.Beta(a, b).log_prob(x), np.log(beta_pdf), rtol=1e-5)
    np.testing.assert_allclose(D.Exponential(b).log_prob(x), np.log(b * np.exp(-b * x)), rtol=1e-6)
    assert D.Exponential(b).log_prob(-0.1) == -np.inf
    u = D.Uniform(-1.0, 3.0).log_prob(np.array([-1.5, -1.0, 0.0, 2.999, 3.0]))
    np.testing.assert_allclose(u, [-np.inf] + [np.log(0.25)] * 3 + [-np.inf], rtol=1e-6)


def test_dirichlet_closed_form():
    # Dirichlet(1, 1, 1) is uniform on the 2-simplex, whose area (in 2 coordinates) is 1/2.
    uniform = D.Dirichlet(jnp.ones(3)).log_prob(jnp.array([0.2, 0.3, 0.5]))
    np.testing.assert_allclose(uniform, np.log(2), rtol=1e-5)
    a, x = np.array([1.5, 2.0, 3.0]), np.array([0.2, 0.3, 0.5])
    pdf = math.gamma(a.sum()) / np.prod([math.gamma(v) for v in a]) * np.prod(x ** (a - 1))
    np.testing.assert_allclose(D.Dirichlet(a).log_prob(x), np.log(pdf), rtol=1e-5)
    # For K = 2 it is a density over the first coordinate and integrates to 1.
    t = np.linspace(0.0, 1.0, 100_001)
    lp = D.Dirichlet(jnp.array([2.0, 3.0])).log_prob(jnp.stack([t, 1 - t], axis=-1))
    assert abs(np.trapezoid(np.exp(np.asarray(lp, np.float64)), t) - 1.0) < 1e-3


@pytest.mark.parametrize(
    "d",
    [
        D.Bernoulli(logits=jnp.array([-2.0, 0.0, 3.0])),
        D.Bernoulli(probs=jnp.array([0.0, 0.3, 1.0])),
        D.Categorical(logits=jnp.array([[0.0, 1.0, -jnp.inf], [2.0, -1.0, 0.5]])),
        D.Categorical(probs=jnp.array([1.0, 0.0, 3.0])),
        D.OneHotCategorical(logits=jnp.array([[0.0, -jnp.inf, 1.0], [2.0, -1.0, 0.5]])),
    ],
)
def test_discrete_log_prob_normalised(d):
    support = d.enumerate_support()
    assert support.shape == (d.support_size,) + d.batch_shape + d.event_shape
    total = jnp.sum(jnp.exp(d.log_prob(support)), axis=0)
    np.testing.assert_allclose(total, np.ones(d.batch_shape), rtol=1e-6)


def test_discrete_specific_values():
    logits = np.array([-2.0, 0.0, 3.0])
    p1 = 1 / (1 + np.exp(-logits))
    bern = D.Bernoulli(logits=logits)
    np.testing.assert_allclose(bern.log_prob(1.0), np.log(p1), rtol=1e-6)
    np.testing.assert_allclose(bern.log_prob(0.0), np.log(1 - p1), rtol=1e-6)
    # Degenerate probabilities give finite log-probs for the possible value.
    b = D.Bernoulli(probs=jnp.array([0.0, 1.0]))
    np.testing.assert_array_equal(b.log_prob(jnp.array([0.0, 1.0])), [0.0, 0.0])
    np.testing.assert_array_equal(b.log_prob(jnp.array([1.0, 0.0])), [-np.inf, -np.inf])
    c = D.Categorical(probs=jnp.array([1.0, 2.0, 3.0, 4.0]))  # unnormalised
    np.testing.assert_allclose(c.log_prob(jnp.arange(4)), np.log([0.1, 0.2, 0.3, 0.4]), rtol=1e-6)
    logits = np.array([0.5, -1.0, 2.0])
    softmax = np.exp(logits) / np.exp(logits).sum()
    np.testing.assert_allclose(
        D.Categorical(logits=logits).log_prob(2), np.log(softmax[2]), rtol=1e-6
    )
    oh = D.OneHotCategorical(logits=logits).log_prob(jnp.eye(3))
    np.testing.assert_allclose(oh, np.log(softmax), rtol=1e-6)
    np.testing.assert_array_equal(
        D.Bernoulli(logits=jnp.zeros(3)).enumerate_support()[:, 0], [0, 1]
    )
    np.testing.assert_array_equal(
        D.Categorical(logits=jnp.zeros((2, 3))).enumerate_support()[:, 1], [0, 1, 2]
    )


def test_poisson_log_prob():
    lam = 3.0
    k = np.arange(8)
    pmf = np.array([math.exp(-lam) * lam**i / math.factorial(i) for i in k])
    np.testing.assert_allclose(D.Poisson(lam).log_prob(k), np.log(pmf), rtol=1e-5)
    total = jnp.sum(jnp.exp(D.Poisson(lam).log_prob(jnp.arange(100))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-5)
    np.testing.assert_array_equal(D.Poisson(lam).log_prob(jnp.array([-1.0, 2.5])), [-np.inf] * 2)


def test_poisson_large_rate():
    lam = 1e4
    d = D.Poisson(lam)
    x = np.array([9_900, 10_000, 10_150])
    exact = x * math.log(lam) - lam - np.array([math.lgamma(v + 1) for v in x])
    lp = d.log_prob(x)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp, exact, atol=0.05)
    s = d.sample(jax.random.key(3))
    assert np.isfinite(d.log_prob(s)) and abs(int(s) - lam) < 6 * math.sqrt(lam)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("logit", [0.0, 50.0, -50.0])
@pytest.mark.parametrize("x", [0.0, 1.0])
def test_bernoulli_logits_gradient_exact(logit, x):
    t0 = jnp.float32(logit)
    lp, g = jax.value_and_grad(lambda t: D.Bernoulli(logits=t).log_prob(x))(t0)
    assert g == x - jax.nn.sigmoid(t0)
    np.testing.assert_allclose(g, x - 1 / (1 + math.exp(-logit)), rtol=1e-6, atol=0)
    if logit == 0.0:
        assert g == x - 0.5
    softplus = max(logit, 0.0) + math.log1p(math.exp(-abs(logit)))
    np.testing.assert_allclose(lp, x * logit - softplus, atol=1e-6)


def test_categorical_masked_logits():
    logits = jnp.array([0.0, -jnp.inf, 1.0, -jnp.inf])
    d = D.Categorical(logits=logits)
    xs = jax.vmap(d.sample)(keys(4, 2000))
    assert set(np.unique(xs).tolist()) == {0, 2}
    grad_fn = jax.vmap(jax.grad(lambda t, x: D.Categorical(logits=t).log_prob(x)), (None, 0))
    lps, grads = jax.vmap(d.log_prob)(xs), grad_fn(logits, xs)
    assert np.all(np.isfinite(lps)) and np.all(np.isfinite(grads))
    softmax = np.array([1.0, 0.0, math.e, 0.0]) / (1 + math.e)
    np.testing.assert_allclose(grads[0], np.eye(4)[int(xs[0])] - softmax, rtol=1e-6, atol=1e-7)
    # One-hot version and zero probabilities behave the same way.
    oh = jax.grad(lambda t: D.OneHotCategorical(logits=t).log_prob(jnp.eye(4)[2]))(logits)
    assert np.all(np.isfinite(oh))
    gp = jax.grad(lambda p: D.Categorical(probs=p).log_prob(0))(jnp.array([0.5, 0.0, 0.5]))
    assert np.all(np.isfinite(gp))


# ----------------------------------------------------------------------------- moments


def exact_mean_var(name):
    """Hand-written means/variances for the scalar-parameter CASES."""
    p, k = np.array([0.1, 0.2, 0.3, 0.4]), np.arange(4)
    a = np.array([1.0, 2.0, 3.0])
    s = a.sum()
    sig = 1 / (1 + math.exp(-0.3))
    return {
        "normal": (0.5, 4.0),
        "bernoulli_logits": (sig, sig * (1 - sig)),
        "bernoulli_probs": (0.3, 0.21),
        "categorical": (k @ p, k**2 @ p - (k @ p) ** 2),
        "onehot": (p, p * (1 - p)),
        "poisson": (3.0, 3.0),
        "gamma": (2.0 / 1.5, 2.0 / 1.5**2),
        "beta": (0.4, 6.0 / (25 * 6)),
        "dirichlet": (a / s, a * (s - a) / (s**2 * (s + 1))),
        "uniform": (0.5, 9.0 / 12),
        "exponential": (0.5, 0.25),
    }[name]  # fmt: skip


def assert_mean_within_5se(name, d, xs, lead):
    """Checks sample shape and that the sample mean is within 5 exact standard errors."""
    check_sample(name, d, xs, (), SCALAR_EVENT.get(name, ()), lead=lead)
    mean, var = exact_mean_var(name)
    xs = np.asarray(xs, np.float64)
    se = np.sqrt(var / len(xs))
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * se), (name, xs.mean(0), mean, se)
    if name != "categorical":  # Categorical has no `mean` (indices are labels).
        np.testing.assert_allclose(d.mean, mean, rtol=1e-6)


# (constructor, parameters of CASES[name][0], d E[first component] / d parameters).
REPARAM_CASES = {
    "normal": (D.Normal, (0.5, 2.0), (1.0, 0.0)),
    "gamma": (D.Gamma, (2.0, 1.5), (1 / 1.5, -2.0 / 1.5**2)),
    "beta": (D.Beta, (2.0, 3.0), (3.0 / 25, -2.0 / 25)),
    "dirichlet": (D.Dirichlet, (jnp.array([1.0, 2.0, 3.0]),), (np.array([5.0, -1.0, -1.0]) / 36,)),
    "uniform": (D.Uniform, (-1.0, 2.0), (0.5, 0.5)),
    "exponential": (D.Exponential, (2.0,), (-0.25,)),
}


@pytest.mark.parametrize("name", sorted(set(CASES) - set(REPARAM_CASES)))
def test_sample_mean(name):
    d = CASES[name][0]()
    draw = jax.jit(lambda dist, ks: jax.vmap(dist.sample)(ks))  # vmap over keys, under jit
    xs = draw(d, keys(5, N_MC))
    assert_mean_within_5se(name, d, xs, (N_MC,))


@pytest.mark.parametrize("name", sorted(REPARAM_CASES))
def test_reparameterized_sample_mean_and_gradient(name):
    cls, params, exact = REPARAM_CASES[name]
    params = tuple(jnp.asarray(p, FLOAT) for p in params)

    def first_component(ps, key):
        x = cls(*ps).sample(key)
        return jnp.ravel(x)[0], x

    per_sample = jax.jit(jax.vmap(jax.grad(first_component, has_aux=True), (None, 0)))
    grads, xs = per_sample(params, keys(6, N_MC))
    assert_mean_within_5se(name, cls(*params), xs, (N_MC,))
    for g, e in zip(grads, exact, strict=True):
        g = np.asarray(g, np.float64)
        se = g.std(0) / math.sqrt(N_MC)
        assert np.all(np.abs(g.mean(0) - e) <= 5 * se + 1e-6), (name, g.mean(0), e, se)
