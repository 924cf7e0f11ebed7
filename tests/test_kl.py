"""Tests for jax_scg.distributions.kl_divergence.

Every closed form is checked against a reference computed without it: continuous pairs by
quadrature of ∫ p log(p/q) in float64 (trapezoid rules on the real line after a change of
variables, which converge geometrically for these smooth, fast-decaying integrands),
discrete pairs by exact sums over the support, both from the distributions' own
``log_prob``. Gradients are checked against ``jax.grad`` of the same references.
"""

import math
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as nd
import pytest
from helpers import mc

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src import kl as kl_module

# ----------------------------------------------------------------------------- references


def _lead(t, batch_ndim):
    """``t`` with ``batch_ndim`` trailing unit axes, to broadcast against a batch shape."""
    return t.reshape(t.shape + (1,) * batch_ndim)


def _weighted_log_ratio(lp, lq, log_weight):
    """``exp(lp + log_weight) * (lp - lq)``, 0 where ``p`` has no mass (0 log 0 = 0)."""
    mass = lp > -jnp.inf
    lp = jnp.where(mass, lp, 0.0)
    return jnp.where(mass, jnp.exp(lp + log_weight) * (lp - lq), 0.0)


def _trapezoid(values, h, axes):
    # The integrands vanish (to double precision) at the ends, so the plain sum is the rule.
    return h ** len(axes) * jnp.sum(values, axis=axes)


def quad_real(p, q, batch_ndim):
    """∫ over R with x = loc_p + scale_p t (p a Normal), t in [-14, 14]."""
    t = _lead(jnp.linspace(-14.0, 14.0, 1121), batch_ndim)
    loc, scale = jnp.asarray(p.loc), jnp.asarray(p.scale)
    x = loc + scale * t
    lp, lq = p.log_prob(x), q.log_prob(x)
    return _trapezoid(_weighted_log_ratio(lp, lq, jnp.log(scale)), t[1] - t[0], (0,))


def quad_positive(p, q, batch_ndim):
    """∫ over (0, inf) with x = exp(t), t in [-90, 9]."""
    t = _lead(jnp.linspace(-90.0, 9.0, 19801), batch_ndim)
    x = jnp.exp(t)
    lp, lq = p.log_prob(x), q.log_prob(x)
    return _trapezoid(_weighted_log_ratio(lp, lq, t), t[1] - t[0], (0,))


def quad_unit(p, q, batch_ndim):
    """∫ over (0, 1) with x = sigmoid(t), t in [-200, 35] (x < 1 exactly; needs beta_p >= 1)."""
    t = _lead(jnp.linspace(-200.0, 35.0, 23501), batch_ndim)
    x = jax.nn.sigmoid(t)
    log_jac = jax.nn.log_sigmoid(t) + jax.nn.log_sigmoid(-t)
    lp, lq = p.log_prob(x), q.log_prob(x)
    return _trapezoid(_weighted_log_ratio(lp, lq, log_jac), t[1] - t[0], (0,))


def quad_simplex3(p, q, batch_ndim):
    """∫ over the 2-simplex with x = (σ(s), σ(-s)σ(t), σ(-s)σ(-t)), s, t in [-50, 50]."""
    grid = jnp.linspace(-50.0, 50.0, 401)
    s = _lead(grid[:, None], batch_ndim)
    t = _lead(grid[None, :], batch_ndim)
    sig = jax.nn.sigmoid
    x = jnp.stack(jnp.broadcast_arrays(sig(s), sig(-s) * sig(t), sig(-s) * sig(-t)), axis=-1)
    ls = jax.nn.log_sigmoid
    log_jac = ls(s) + 2 * ls(-s) + ls(t) + ls(-t)
    lp, lq = p.log_prob(x), q.log_prob(x)
    return _trapezoid(_weighted_log_ratio(lp, lq, log_jac), grid[1] - grid[0], (0, 1))


def quad_uniform(p, q, batch_ndim):
    """Midpoint rule on p's support [low_p, high_p] (exact: the integrand is constant)."""
    n = 64
    u = _lead((jnp.arange(n) + 0.5) / n, batch_ndim)
    low, high = jnp.asarray(p.low), jnp.asarray(p.high)
    x = low + (high - low) * u
    lp, lq = p.log_prob(x), q.log_prob(x)
    return jnp.sum(_weighted_log_ratio(lp, lq, jnp.log((high - low) / n)), axis=0)


def sum_support(values):
    """Exact sum of p log(p/q) over the given support values (leading axis)."""

    def reference(p, q, batch_ndim):
        v = values(batch_ndim)
        lp, lq = p.log_prob(v), q.log_prob(v)
        return jnp.sum(_weighted_log_ratio(lp, lq, 0.0), axis=0)

    return reference


BINARY = sum_support(lambda nd_: _lead(jnp.array([0.0, 1.0]), nd_))
CLASSES4 = sum_support(lambda nd_: _lead(jnp.arange(4), nd_))
ONE_HOT4 = sum_support(lambda nd_: jnp.eye(4).reshape((4,) + (1,) * nd_ + (4,)))
COUNTS = sum_support(lambda nd_: _lead(jnp.arange(400.0), nd_))  # rates <= 25: tail ~1e-200


# ----------------------------------------------------------------------------- cases


class Case(NamedTuple):
    p: object  # params -> distribution
    p_params: tuple
    q: object
    q_params: tuple
    reference: object
    batch_shape: tuple


def _by(cls, field):
    """``params -> cls(field=params)``."""

    def make(x):
        return cls(**{field: x})

    return make


_bern_logits, _bern_probs = _by(D.Bernoulli, "logits"), _by(D.Bernoulli, "probs")
_cat_logits, _cat_probs = _by(D.Categorical, "logits"), _by(D.Categorical, "probs")
_onehot_logits = _by(D.OneHotCategorical, "logits")
_onehot_probs = _by(D.OneHotCategorical, "probs")


LOGITS_2x1x4 = [[[0.3, -1.0, 2.0, 0.0]], [[-0.5, 0.5, 1.5, -2.0]]]
PROBS_3x4 = [[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.05, 2.0, 0.5, 0.7]]  # unnormalised

CASES = {
    "normal": Case(
        D.Normal, ([[-1.0], [0.5]], [[0.5], [2.0]]),
        D.Normal, ([0.0, 1.0, -2.0], [1.0, 0.3, 3.0]),
        quad_real, (2, 3),
    ),
    "bernoulli_logits": Case(
        _bern_logits, ([[-2.0], [0.3]],), _bern_logits, ([1.5, -0.7, 4.0],), BINARY, (2, 3)
    ),
    "bernoulli_probs": Case(
        _bern_probs, ([0.1, 0.6, 0.95],), _bern_probs, (0.3,), BINARY, (3,)
    ),
    "bernoulli_logits_probs": Case(
        _bern_logits, ([[-1.0], [2.5]],), _bern_probs, ([0.2, 0.9],), BINARY, (2, 2)
    ),
    "categorical_logits_probs": Case(
        _cat_logits, (LOGITS_2x1x4,), _cat_probs, (PROBS_3x4,), CLASSES4, (2, 3)
    ),
    "categorical_probs_logits": Case(
        _cat_probs, (PROBS_3x4,), _cat_logits, ([0.2, -0.4, 1.0, 0.1],), CLASSES4, (3,)
    ),
    "onehot": Case(
        _onehot_probs, (PROBS_3x4,), _onehot_logits, (LOGITS_2x1x4,), ONE_HOT4, (2, 3)
    ),
    "poisson": Case(
        D.Poisson, ([0.5, 3.0, 20.0],), D.Poisson, ([[1.0], [25.0]],), COUNTS, (2, 3)
    ),
    "gamma": Case(
        D.Gamma, ([[0.7], [3.0]], [[1.0], [0.5]]),
        D.Gamma, ([2.0, 0.5, 1.2], [1.5, 0.2, 4.0]),
        quad_positive, (2, 3),
    ),
    "exponential": Case(
        D.Exponential, ([0.5, 2.0, 7.0],), D.Exponential, ([[1.0], [0.2]],), quad_positive, (2, 3)
    ),
    "exponential_gamma": Case(
        D.Exponential, ([0.5, 2.0],), D.Gamma, ([[0.8], [2.5]], [1.0, 3.0]), quad_positive, (2, 2)
    ),
    "gamma_exponential": Case(
        D.Gamma, ([0.6, 2.0, 4.0], 1.5), D.Exponential, ([[0.5], [3.0]],), quad_positive, (2, 3)
    ),
    "beta": Case(
        D.Beta, ([[0.5], [2.0]], [[1.0], [3.5]]),
        D.Beta, ([0.3, 1.0, 5.0], [0.7, 2.0, 1.5]),
        quad_unit, (2, 3),
    ),
    "dirichlet": Case(
        D.Dirichlet, ([[0.8, 1.5, 2.0], [3.0, 0.7, 1.2]],),
        D.Dirichlet, ([[1.0, 1.0, 1.0]],),
        quad_simplex3, (2,),
    ),
    "dirichlet_batched_q": Case(
        D.Dirichlet, ([2.0, 1.0, 0.9],),
        D.Dirichlet, ([[0.5, 2.0, 4.0], [1.5, 1.5, 0.8]],),
        quad_simplex3, (2,),
    ),
    "uniform": Case(  # q = [-1, 2] contains every p; q = [0.1, 1] only the last
        D.Uniform, ([0.0, -1.0, 0.2], [1.0, 0.5, 0.9]),
        D.Uniform, ([[-1.0], [0.1]], [[2.0], [1.0]]),
        quad_uniform, (2, 3),
    ),
    "uniform_inside": Case(
        D.Uniform, ([0.0, -0.5], [1.0, 0.25]), D.Uniform, (-1.0, [2.0, 0.5]), quad_uniform, (2,)
    ),
}  # fmt: skip


def _params(values):
    return tuple(jnp.asarray(v) for v in values)


def _kl_and_reference(case):
    def kl(pp, qp):
        return D.kl_divergence(case.p(*pp), case.q(*qp))

    def reference(pp, qp):
        return case.reference(case.p(*pp), case.q(*qp), len(case.batch_shape))

    return kl, reference


# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("name", sorted(CASES))
def test_values_and_gradients_match_quadrature_or_exact_sum(name):
    """Values (broadcast batch shapes) and gradients in both distributions' parameters."""
    case = CASES[name]
    kl, reference = _kl_and_reference(case)
    total = lambda fn: lambda pp, qp: jnp.sum(fn(pp, qp))  # noqa: E731
    with_grads = name != "uniform"  # "uniform" has +inf entries: no gradient to check

    @jax.jit
    def evaluate(pp, qp):
        values = kl(pp, qp), reference(pp, qp)
        if not with_grads:
            return values, None
        grads = [jax.grad(total(fn), argnums=(0, 1))(pp, qp) for fn in (kl, reference)]
        return values, grads

    with jax.enable_x64(True):
        (value, expected), grads = evaluate(_params(case.p_params), _params(case.q_params))
        value, expected, grads = jax.tree_util.tree_map(np.asarray, (value, expected, grads))
    assert value.shape == case.batch_shape and value.dtype == np.float64
    assert not np.any(np.isnan(expected))
    np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-12)
    if not with_grads:
        assert np.isinf(value).sum() == 2 and np.isfinite(value[0]).all()
        return
    assert np.all(np.isfinite(value))
    got, want = (jax.tree_util.tree_leaves(g) for g in grads)
    assert len(got) == len(case.p_params) + len(case.q_params)
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g)) and np.any(g != 0)
        np.testing.assert_allclose(g, w, rtol=1e-8, atol=1e-10)


def test_dirichlet_with_two_categories_is_beta():
    with jax.enable_x64(True):
        a = jnp.array([[0.4], [2.0]])
        b, c, d = jnp.array([1.5, 0.6, 3.0]), 2.5, jnp.array([0.9, 4.0, 1.0])
        beta = D.kl_divergence(D.Beta(a, b), D.Beta(c, d))
        stack = lambda x, y: jnp.stack(jnp.broadcast_arrays(x, y), axis=-1)  # noqa: E731
        dirichlet = D.kl_divergence(D.Dirichlet(stack(a, b)), D.Dirichlet(stack(c, d)))
        assert dirichlet.shape == beta.shape == (2, 3)
        np.testing.assert_allclose(dirichlet, beta, rtol=1e-12, atol=1e-14)


def test_onehot_and_categorical_reduce_the_class_axis_alike():
    logits_p = jnp.array(LOGITS_2x1x4)
    probs_q = jnp.array(PROBS_3x4)
    cat = D.kl_divergence(D.Categorical(logits=logits_p), D.Categorical(probs=probs_q))
    onehot = D.kl_divergence(
        D.OneHotCategorical(logits=logits_p), D.OneHotCategorical(probs=probs_q)
    )
    assert cat.shape == onehot.shape == (2, 3)
    np.testing.assert_allclose(onehot, cat, rtol=1e-6)
    same = D.kl_divergence(D.OneHotCategorical(probs=probs_q), D.OneHotCategorical(probs=probs_q))
    np.testing.assert_allclose(same, np.zeros(3), atol=1e-6)


# ----------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("name", ["normal", "categorical_logits_probs", "onehot", "dirichlet"])
def test_jit_and_vmap(name):
    case = CASES[name]
    kl, _ = _kl_and_reference(case)
    pp, qp = _params(case.p_params), _params(case.q_params)
    eager = kl(pp, qp)
    p, q = case.p(*pp), case.q(*qp)
    np.testing.assert_allclose(jax.jit(D.kl_divergence)(p, q), eager, rtol=1e-6)
    # vmap over a new leading axis of both distributions' parameters (3 stacked copies,
    # scaled so that each copy differs); the distributions themselves are the vmapped args.
    scales = jnp.array([1.0, 0.5, 2.0])
    scaled = lambda x: x * scales.reshape((3,) + (1,) * x.ndim)  # noqa: E731
    ps, qs = case.p(*map(scaled, pp)), case.q(*map(scaled, qp))
    only_p = jax.vmap(D.kl_divergence, in_axes=(0, None))(ps, case.q(*qp))
    both = jax.jit(jax.vmap(D.kl_divergence))(ps, qs)
    assert only_p.shape == both.shape == (3,) + case.batch_shape
    for i in range(3):
        scale = lambda params, i=i: tuple(x * scales[i] for x in params)  # noqa: E731
        np.testing.assert_allclose(only_p[i], kl(scale(pp), qp), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(both[i], kl(scale(pp), scale(qp)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CASES))
def test_float32_kept_and_float64_under_x64(name):
    """The result's dtype, from tracing (eager and jitted calls trace the same function)."""
    case = CASES[name]
    kl = _kl_and_reference(case)[0]
    dtype = lambda pp, qp: jax.eval_shape(kl, pp, qp).dtype  # noqa: E731
    assert dtype(_params(case.p_params), _params(case.q_params)) == jnp.float32
    with jax.enable_x64(True):
        as32 = lambda v: tuple(jnp.asarray(x, jnp.float32) for x in v)  # noqa: E731
        assert dtype(as32(case.p_params), as32(case.q_params)) == jnp.float32
        assert dtype(_params(case.p_params), _params(case.q_params)) == jnp.float64


def test_python_scalar_parameters_follow_the_array_dtype():
    with jax.enable_x64(True):
        x32 = jnp.array([0.5, 1.5], jnp.float32)
        pairs = [
            (D.Normal(x32, 1.0), D.Normal(0.0, 2.0)),
            (D.Bernoulli(probs=x32 / 2), D.Bernoulli(logits=0.3)),
            (D.Gamma(x32, 2.0), D.Exponential(1.0)),
            (D.Uniform(0.0, x32), D.Uniform(-1.0, 2.0)),
        ]
        for p, q in pairs:
            assert D.kl_divergence(p, q).dtype == jnp.float32
            assert D.kl_divergence(q, p).dtype == jnp.float32
        assert D.kl_divergence(D.Normal(0.0, 1.0), D.Normal(1.0, 2.0)).dtype == jnp.float64


# ----------------------------------------------------------------------------- edge cases


def test_zero_probabilities_in_p_give_finite_kl_and_gradients():
    # KL(Bernoulli(0) || Bernoulli(q)) = -log(1 - q); KL(Bernoulli(1) || Bernoulli(q)) = -log q.
    q = 0.3
    got = D.kl_divergence(D.Bernoulli(probs=jnp.array([0.0, 1.0])), D.Bernoulli(probs=q))
    np.testing.assert_allclose(got, [-math.log(1 - q), -math.log(q)], rtol=1e-6)
    logits = jnp.array([-jnp.inf, jnp.inf])
    got = D.kl_divergence(D.Bernoulli(logits=logits), D.Bernoulli(logits=0.4))
    s = 1 / (1 + math.exp(-0.4))
    np.testing.assert_allclose(got, [-math.log(1 - s), -math.log(s)], rtol=1e-6)
    grad_q = jax.grad(lambda b: D.kl_divergence(D.Bernoulli(probs=0.0), D.Bernoulli(logits=b)))
    np.testing.assert_allclose(grad_q(0.4), s, rtol=1e-6)  # d/db -log(1 - sigmoid(b))

    # Categorical: a masked class of p contributes 0 (value and gradient).
    p_logits = jnp.array([-jnp.inf, 0.0, math.log(3.0)])  # p = (0, 1/4, 3/4)
    q_probs = jnp.array([0.5, 0.25, 0.25])
    expected = 0.25 * math.log(0.25 / 0.25) + 0.75 * math.log(0.75 / 0.25)
    for make in (D.Categorical, D.OneHotCategorical):
        fn = lambda lp, pq, make=make: D.kl_divergence(make(logits=lp), make(probs=pq))  # noqa: E731
        np.testing.assert_allclose(fn(p_logits, q_probs), expected, rtol=1e-6)
        g_p, g_q = jax.grad(fn, argnums=(0, 1))(p_logits, q_probs)
        assert np.all(np.isfinite(g_p)) and np.all(np.isfinite(g_q)) and g_p[0] == 0
        p_probs = jnp.array([0.0, 0.25, 0.75])
        got = D.kl_divergence(make(probs=p_probs), make(probs=q_probs))
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    # Poisson(0) is a point mass at 0: KL = rate_q.
    np.testing.assert_allclose(D.kl_divergence(D.Poisson(0.0), D.Poisson(2.5)), 2.5)


def test_q_without_mass_where_p_has_some_gives_inf():
    inf = float("inf")
    got = D.kl_divergence(D.Bernoulli(probs=jnp.array([0.5, 0.0])), D.Bernoulli(probs=0.0))
    np.testing.assert_array_equal(got, [inf, 0.0])
    got = D.kl_divergence(D.Bernoulli(logits=0.0), D.Bernoulli(logits=jnp.array([jnp.inf])))
    np.testing.assert_array_equal(got, [inf])
    p = D.Categorical(probs=jnp.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]]))
    q = D.Categorical(logits=jnp.array([0.0, 0.0, -jnp.inf]))
    np.testing.assert_allclose(D.kl_divergence(p, q), [0.0, inf], atol=1e-7)
    np.testing.assert_array_equal(D.kl_divergence(D.Poisson(1.0), D.Poisson(0.0)), inf)
    assert D.kl_divergence(D.Uniform(0.0, 2.0), D.Uniform(0.5, 3.0)) == inf


def test_unsupported_pairs_raise_with_what_to_do():
    with pytest.raises(NotImplementedError) as info:
        D.kl_divergence(D.Normal(0.0, 1.0), D.Gamma(1.0, 1.0))
    message = str(info.value)
    assert message.startswith("jax_scg: ") and "KL(Normal || Gamma)" in message
    assert "E_p[log p(x) - log q(x)]" in message and "scg.sample" in message
    assert "register_kl(Normal, Gamma)" in message
    with pytest.raises(NotImplementedError, match=r"KL\(Categorical \|\| OneHotCategorical\)"):
        D.kl_divergence(D.Categorical(probs=jnp.ones(3)), D.OneHotCategorical(probs=jnp.ones(3)))
    with pytest.raises(NotImplementedError, match=r"^jax_scg: .*numpyro.*Normal.*distrax.*"):
        D.kl_divergence(nd.Normal(0.0, 1.0), distrax.Normal(0.0, 1.0))
    with pytest.raises(NotImplementedError, match=r"^jax_scg: .*Normal \|\| .*numpyro.*Normal"):
        D.kl_divergence(D.Normal(0.0, 1.0), nd.Normal(0.0, 1.0))
    with pytest.raises(NotImplementedError, match=r"^jax_scg: .*Normal \|\| .*Gamma.*NumPyro"):
        D.kl_divergence(nd.Normal(0.0, 1.0), nd.Gamma(1.0, 1.0))
    with pytest.raises(NotImplementedError, match=r"^jax_scg: .*Normal \|\| .*Gamma.*distrax"):
        D.kl_divergence(distrax.Normal(0.0, 1.0), distrax.Gamma(1.0, 1.0))
    with pytest.raises(ValueError, match="^jax_scg: .*same number of categories"):
        D.kl_divergence(D.Categorical(logits=jnp.zeros(3)), D.Categorical(logits=jnp.zeros(4)))
    with pytest.raises(TypeError, match="^jax_scg: register_kl takes two classes"):
        D.register_kl(D.Normal, "Normal")


def test_registry_falls_back_through_the_mro_and_accepts_new_pairs():
    class Wide(D.Normal):
        pass

    p, q = Wide(0.3, 1.5), D.Normal(-0.2, 0.7)
    expected = D.kl_divergence(D.Normal(0.3, 1.5), q)
    np.testing.assert_allclose(D.kl_divergence(p, q), expected)
    np.testing.assert_allclose(D.kl_divergence(q, Wide(0.3, 1.5)), D.kl_divergence(q, p))
    D.register_kl(Wide, D.Normal)(lambda p, q: jnp.asarray(-1.0))
    try:
        assert D.kl_divergence(p, q) == -1.0  # the closer pair wins
        assert D.kl_divergence(p, Wide(0.0, 1.0)) == -1.0
        np.testing.assert_allclose(D.kl_divergence(q, p), D.kl_divergence(q, D.Normal(0.3, 1.5)))
    finally:
        del kl_module._REGISTRY[(Wide, D.Normal)]
    np.testing.assert_allclose(D.kl_divergence(p, q), expected)


# ----------------------------------------------------------------------------- delegation


def test_numpyro_pairs_are_delegated_and_agree_with_the_built_in_forms():
    loc, scale = jnp.array([0.0, 1.0]), jnp.array([0.5, 2.0])
    a, b = jnp.array([0.7, 3.0]), jnp.array([1.5, 0.4])
    conc_p, conc_q = jnp.array([0.8, 1.5, 2.0]), jnp.array([[1.0, 2.0, 0.5], [3.0, 1.0, 1.0]])
    probs_p, probs_q = jnp.array([0.1, 0.2, 0.7]), jnp.array([0.3, 0.3, 0.4])
    pairs = [
        (nd.Normal(loc, scale), nd.Normal(0.3, 1.2), D.Normal(loc, scale), D.Normal(0.3, 1.2)),
        (nd.Gamma(a, b), nd.Gamma(2.0, 1.0), D.Gamma(a, b), D.Gamma(2.0, 1.0)),
        (nd.Beta(a, b), nd.Beta(2.0, 1.0), D.Beta(a, b), D.Beta(2.0, 1.0)),
        (nd.Dirichlet(conc_p), nd.Dirichlet(conc_q), D.Dirichlet(conc_p), D.Dirichlet(conc_q)),
        (
            nd.Categorical(probs=probs_p), nd.Categorical(probs=probs_q),
            D.Categorical(probs=probs_p), D.Categorical(probs=probs_q),
        ),
    ]  # fmt: skip
    from numpyro.distributions.kl import kl_divergence as numpyro_kl

    for np_p, np_q, p, q in pairs:
        got = D.kl_divergence(np_p, np_q)
        np.testing.assert_array_equal(got, numpyro_kl(np_p, np_q))  # delegated
        np.testing.assert_allclose(got, D.kl_divergence(p, q), rtol=2e-5, atol=1e-6)
    # The adapters that scg.sample wraps foreign distributions in are unwrapped.
    wrapped = kl_module.adapters.NumPyroDistribution(pairs[0][0])
    np.testing.assert_array_equal(D.kl_divergence(wrapped, pairs[0][1]), numpyro_kl(*pairs[0][:2]))


def test_distrax_pairs_are_delegated_and_agree_with_the_built_in_forms():
    logits_p, logits_q = jnp.array([0.3, -1.0, 2.0]), jnp.array([[0.0, 0.5, -0.5], [1.0, 1.0, 1.0]])
    pairs = [
        (
            distrax.Normal(0.5, 2.0), distrax.Normal(-1.0, 0.5),
            D.Normal(0.5, 2.0), D.Normal(-1.0, 0.5),
        ),
        (
            distrax.Bernoulli(logits=logits_p), distrax.Bernoulli(logits=0.7),
            D.Bernoulli(logits=logits_p), D.Bernoulli(logits=0.7),
        ),
        (
            distrax.Categorical(logits=logits_p), distrax.Categorical(logits=logits_q),
            D.Categorical(logits=logits_p), D.Categorical(logits=logits_q),
        ),
        (distrax.Beta(0.7, 3.0), distrax.Beta(2.0, 1.0), D.Beta(0.7, 3.0), D.Beta(2.0, 1.0)),
        (distrax.Gamma(0.7, 3.0), distrax.Gamma(2.0, 1.0), D.Gamma(0.7, 3.0), D.Gamma(2.0, 1.0)),
        (
            distrax.Uniform(0.0, 1.0), distrax.Uniform(-1.0, 2.0),
            D.Uniform(0.0, 1.0), D.Uniform(-1.0, 2.0),
        ),
    ]  # fmt: skip
    for dx_p, dx_q, p, q in pairs:
        got = D.kl_divergence(dx_p, dx_q)
        np.testing.assert_array_equal(got, dx_p.kl_divergence(dx_q))  # delegated
        np.testing.assert_allclose(got, D.kl_divergence(p, q), rtol=2e-5, atol=1e-6)


# ----------------------------------------------------------------------------- ELBO

X0, W = 1.3, 2.0  # the observation; the shift that the Bernoulli latent adds to its mean
PRIOR_B = 0.3


def negative_elbo(theta, key):
    """-ELBO in the TraceMeanField_ELBO form: analytic KL for z, sampled terms for the rest.

    q(z) = Normal(mu, sigma), p(z) = Normal(0, 1); q(b) = Bernoulli(sigmoid(phi)),
    p(b) = Bernoulli(PRIOR_B); x | z, b ~ Normal(z + W b, 1).
    """
    mu, log_sigma, phi = theta
    k_z, k_b = jax.random.split(key)
    q_z = D.Normal(mu, jnp.exp(log_sigma))
    z = scg.sample(k_z, q_z)
    b, log_q_b = scg.sample_and_log_prob(k_b, D.Bernoulli(logits=phi))
    log_lik = D.Normal(z + W * b, 1.0).log_prob(X0)
    log_p_b = D.Bernoulli(probs=PRIOR_B).log_prob(b)
    return -(log_lik + log_p_b - log_q_b) + D.kl_divergence(q_z, D.Normal(0.0, 1.0))


def negative_elbo_exact(theta):
    """The same objective in closed form (Normal moments, enumeration of b)."""
    mu, log_sigma, phi = theta
    sigma2 = jnp.exp(2 * log_sigma)
    total = 0.0
    for b, log_q, log_p in (
        (1.0, jax.nn.log_sigmoid(phi), math.log(PRIOR_B)),
        (0.0, jax.nn.log_sigmoid(-phi), math.log(1 - PRIOR_B)),
    ):
        expected_log_lik = -0.5 * math.log(2 * math.pi) - 0.5 * ((X0 - mu - W * b) ** 2 + sigma2)
        total = total + jnp.exp(log_q) * (expected_log_lik + log_p - log_q)
    kl_z = 0.5 * (sigma2 + mu**2 - 1) - log_sigma
    return -total + kl_z


def test_elbo_with_analytic_kl_gives_unbiased_gradients():
    theta = jnp.array([0.4, -0.3, 0.8])
    n = 4000
    grads = np.asarray(mc(scg.grad(negative_elbo), theta, seed=4711, n=n), np.float64)
    exact = np.asarray(jax.grad(negative_elbo_exact)(theta))
    mean, se = grads.mean(0), grads.std(0, ddof=1) / math.sqrt(n)
    assert np.all(se > 0), se
    assert np.all(np.abs(mean - exact) <= 5 * se), (mean, exact, se)
    # The objective's expectation is the closed form too (the KL term is exact).
    values = jax.vmap(negative_elbo, in_axes=(None, 0))(
        theta, jax.random.split(jax.random.key(7), n)
    )
    values = np.asarray(values, np.float64)
    assert abs(values.mean() - negative_elbo_exact(theta)) <= 5 * values.std(ddof=1) / math.sqrt(n)
