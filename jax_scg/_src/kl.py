"""Closed-form Kullback-Leibler divergences ``KL(p || q) = E_p[log p(x) - log q(x)]``.

``kl_divergence(p, q)`` looks the pair's types up in a small registry (``register_kl``) and
returns the divergence with the broadcast batch shape of ``p`` and ``q`` (event dimensions,
such as Categorical's class axis or Dirichlet's simplex axis, are summed). Pairs of NumPyro
distributions are handed to ``numpyro.distributions.kl.kl_divergence`` and pairs of distrax
distributions to ``p.kl_divergence(q)``; both libraries are imported only then.

Built-in pairs (``ψ`` is the digamma function, ``B`` the beta function; each formula is
``E_p[log p - log q]`` worked out with ``E[log X] = ψ(α) - log β`` for ``X ~ Gamma(α, β)``,
``E[log X_k] = ψ(α_k) - ψ(Σα)`` for ``X ~ Dirichlet(α)``, and the first two moments):

================================  ===========================================================
pair                              KL(p || q)
================================  ===========================================================
Normal, Normal                    ``log(σq/σp) + (σp² + (μp - μq)²) / (2σq²) - 1/2``
Bernoulli, Bernoulli              ``Σ_{x∈{0,1}} p(x) (log p(x) - log q(x))``
Categorical, Categorical          ``Σ_k p_k (log p_k - log q_k)`` (also OneHotCategorical)
Poisson, Poisson                  ``λp log(λp/λq) - λp + λq``
Gamma, Gamma                      ``(αp - αq) ψ(αp) - log Γ(αp) + log Γ(αq)
                                  + αq log(βp/βq) + αp (βq - βp)/βp``
Exponential, Exponential          ``λq/λp - 1 - log(λq/λp)``
Exponential, Gamma (and reverse)  Gamma, Gamma with the Exponential as ``Gamma(1, λ)``
Beta, Beta                        ``log B(αq, βq) - log B(αp, βp) + (αp - αq) ψ(αp)
                                  + (βp - βq) ψ(βp) + (αq - αp + βq - βp) ψ(αp + βp)``
Dirichlet, Dirichlet              ``log Γ(Σαp) - log Γ(Σαq) - Σ(log Γ(αp) - log Γ(αq))
                                  + Σ (αp - αq)(ψ(αp) - ψ(Σαp))``
Uniform, Uniform                  ``log((bq - aq)/(bp - ap))`` if ``[ap, bp] ⊆ [aq, bq]``,
                                  else ``+inf``
================================  ===========================================================

Sources: S. Kullback, *Information Theory and Statistics* (Wiley, 1959) for the definition
and the discrete and Normal cases; W. D. Penny, *KL-Divergences of Normal, Gamma, Dirichlet
and Wishart densities* (technical report, Wellcome Department of Cognitive Neurology, 2001)
for the Gamma and Dirichlet cases (Beta is Dirichlet with two categories, Exponential is
Gamma with shape 1); M. Gil, F. Alajaji & T. Linder, *Rényi divergence measures for
commonly used univariate continuous distributions*, Information Sciences 249 (2013), whose
table lists the univariate continuous cases.

Discrete pairs are computed from normalised log-probabilities (a stable log-sigmoid or
log-softmax of the logits), with ``0 log 0 = 0``: a category that ``p`` gives no mass
contributes 0, and one that ``p`` gives mass but ``q`` none makes the divergence ``+inf``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import betaln, digamma, gammaln

from jax_scg._src import adapters
from jax_scg._src import distributions as dists
from jax_scg._src.distributions import _safe_log, _softplus

Array = jax.Array
KLFn = Callable[[Any, Any], Array]

__all__ = ["kl_divergence", "register_kl"]

_REGISTRY: dict[tuple[type, type], KLFn] = {}


def register_kl(type_p: type, type_q: type) -> Callable[[KLFn], KLFn]:
    """Registers a closed form ``fn(p, q) -> KL(p || q)`` for a pair of distribution types.

    ``kl_divergence`` uses the registered function for ``p`` of type ``type_p`` and ``q`` of
    type ``type_q``, and for subclasses of them when no closer pair is registered (the pair
    with the fewest steps up the two classes' MROs wins; on a tie, the one closer to ``p``'s
    own class). Registering a pair again replaces its function.

    Args:
      type_p: Class of the first argument, ``p``.
      type_q: Class of the second argument, ``q``.

    Returns:
      A decorator that registers its function and returns it unchanged.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_scg import distributions as D
      >>> class Laplace(D.Distribution):
      ...     _params = ("loc", "scale")
      ...     def __init__(self, loc, scale):
      ...         self._set(loc=loc, scale=scale)
      >>> @D.register_kl(Laplace, Laplace)
      ... def _kl_laplace(p, q):  # Gil, Alajaji & Linder (2013)
      ...     d = jnp.abs(p.loc - q.loc)
      ...     r = p.scale / q.scale
      ...     return d / q.scale + r * jnp.exp(-d / p.scale) - 1 - jnp.log(r)
      >>> round(float(D.kl_divergence(Laplace(0.0, 1.0), Laplace(1.0, 2.0))), 4)
      0.3771
    """
    if not (isinstance(type_p, type) and isinstance(type_q, type)):
        raise TypeError(f"jax_scg: register_kl takes two classes; got {type_p!r} and {type_q!r}.")

    def decorator(fn: KLFn) -> KLFn:
        _REGISTRY[(type_p, type_q)] = fn
        return fn

    return decorator


def _lookup(type_p: type, type_q: type) -> KLFn | None:
    """The registered function for the closest pair of base classes, or None."""
    best = None
    for i, base_p in enumerate(type_p.__mro__):
        for j, base_q in enumerate(type_q.__mro__):
            fn = _REGISTRY.get((base_p, base_q))
            if fn is not None and (best is None or (i + j, i) < best[0]):
                best = ((i + j, i), fn)
    return None if best is None else best[1]


def _type_name(dist: Any) -> str:
    cls = type(dist)
    if cls.__module__ == dists.__name__:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}"


def _library(dist: Any) -> str | None:
    if adapters.is_numpyro_distribution(dist):
        return "NumPyro"
    if adapters.is_distrax_distribution(dist):
        return "distrax"
    return None


def _not_implemented(p: Any, q: Any, why: str = "", fix: str = "") -> NotImplementedError:
    pair = f"KL({_type_name(p)} || {_type_name(q)})"
    fix = fix or (
        "estimate it with samples, KL = E_p[log p(x) - log q(x)]: draw "
        "`x = scg.sample(key, p)` and use `p.log_prob(x) - q.log_prob(x)` as a cost (unbiased, "
        "and scg.grad differentiates it in both distributions' parameters); or register a "
        f"closed form with `@jax_scg.distributions.register_kl({type(p).__name__}, "
        f"{type(q).__name__})`."
    )
    return NotImplementedError(
        f"jax_scg: kl_divergence has no closed form for {pair}{why}.\n  What to do: {fix}"
    )


def kl_divergence(p: Any, q: Any) -> Array:
    """Closed-form ``KL(p || q) = E_p[log p(x) - log q(x)]``.

    For the built-in distributions (pairs listed in :mod:`jax_scg._src.kl`) and pairs added
    with :func:`register_kl`. Two NumPyro distributions go to
    ``numpyro.distributions.kl.kl_divergence``, two distrax distributions to
    ``p.kl_divergence(q)``. The result is differentiable in both distributions'
    parameters and works under ``jax.jit`` and ``jax.vmap``.

    Args:
      p: The distribution the expectation is taken under.
      q: The reference distribution.

    Returns:
      ``KL(p || q)`` with the broadcast batch shape of ``p`` and ``q`` (event dimensions
      summed), in the parameters' floating dtype; ``+inf`` where ``p`` puts mass where ``q``
      has none.

    Raises:
      NotImplementedError: for a pair with no closed form (or distributions from two
        different libraries); estimate such a KL with samples instead.
      ValueError: for Categorical or Dirichlet pairs with different numbers of categories.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jax_scg import distributions as D
      >>> round(float(D.kl_divergence(D.Normal(0.0, 1.0), D.Normal(1.0, 1.0))), 4)
      0.5
      >>> p = D.Bernoulli(probs=jnp.array([0.0, 0.5, 1.0]))
      >>> print(D.kl_divergence(p, D.Bernoulli(probs=0.5)))  # 0 log 0 = 0
      [0.6931472 0.        0.6931472]
      >>> float(D.kl_divergence(D.Bernoulli(probs=0.5), D.Bernoulli(probs=1.0)))
      inf
    """
    if isinstance(p, adapters.NumPyroDistribution | adapters.DistraxDistribution):
        p = p.dist
    if isinstance(q, adapters.NumPyroDistribution | adapters.DistraxDistribution):
        q = q.dist
    fn = _lookup(type(p), type(q))
    if fn is not None:
        return fn(p, q)
    lib_p, lib_q = _library(p), _library(q)
    if lib_p == lib_q == "NumPyro":
        from numpyro.distributions.kl import kl_divergence as numpyro_kl

        try:
            return numpyro_kl(p, q)
        except NotImplementedError as err:
            raise _not_implemented(p, q, " (NumPyro has none either)") from err
    if lib_p == lib_q == "distrax":
        try:  # distrax (already imported: p is one of its distributions) dispatches itself
            return p.kl_divergence(q)
        except NotImplementedError as err:
            raise _not_implemented(p, q, " (distrax has none either)") from err
    if lib_p != lib_q and (lib_p or lib_q):
        raise _not_implemented(
            p, q, f" (a {lib_p or 'jax_scg'} and a {lib_q or 'jax_scg'} distribution)"
        )
    raise _not_implemented(p, q)


# ----------------------------------------------------------------------------- helpers


def _dtype(p: dists.Distribution, q: dists.Distribution) -> Any:
    """Common floating dtype of both distributions' parameters (Python scalars are weak)."""
    return jnp.result_type(*p._param_values(), *q._param_values(), float)


def _arrays(dtype: Any, *xs: Any) -> tuple[Array, ...]:
    return tuple(jnp.asarray(x, dtype) for x in xs)


def _batched(kl: Array, p: dists.Distribution, q: dists.Distribution) -> Array:
    """``kl`` broadcast to the joint batch shape of ``p`` and ``q``."""
    return jnp.broadcast_to(kl, jnp.broadcast_shapes(p.batch_shape, q.batch_shape))


def _p_log_ratio(log_p: Array, log_q: Array) -> Array:
    """``p (log p - log q)`` with ``p = exp(log_p)``: 0 where p = 0, +inf where only q = 0.

    Where ``p`` has no mass the term and its gradients are 0, whatever ``log_q`` is.
    """
    has_mass = log_p > -jnp.inf
    log_p = jnp.where(has_mass, log_p, 0)
    return jnp.where(has_mass, jnp.exp(log_p) * (log_p - log_q), 0)


def _log1m(x: Array) -> Array:
    """``log(1 - x)``, ``-inf`` (with zero gradient) at ``x == 1``."""
    below = x < 1
    return jnp.where(below, jnp.log1p(-jnp.where(below, x, 0)), -jnp.inf)


def _bernoulli_log_probs(d: dists.Bernoulli, dtype: Any) -> tuple[Array, Array]:
    """``(log P(x = 1), log P(x = 0))``, from logits by a stable log-sigmoid."""
    (x,) = _arrays(dtype, d._param)
    if d._kind == "logits":
        return -_softplus(-x), -_softplus(x)
    return _safe_log(x), _log1m(x)


def _categorical_log_probs(d: dists.Categorical, dtype: Any) -> Array:
    """Normalised log-probabilities by a stable log-softmax (``-inf`` for masked classes)."""
    (x,) = _arrays(dtype, d._param)
    logits = x if d._kind == "logits" else _safe_log(x)
    return jax.nn.log_softmax(logits, axis=-1)


def _same_event_size(p: Any, q: Any, size_p: int, size_q: int, what: str) -> None:
    if size_p != size_q:
        raise ValueError(
            f"jax_scg: KL({type(p).__name__} || {type(q).__name__}) needs the same number of "
            f"{what} in both; got {size_p} and {size_q}."
        )


# ----------------------------------------------------------------------------- closed forms


@register_kl(dists.Normal, dists.Normal)
def _kl_normal_normal(p: dists.Normal, q: dists.Normal) -> Array:
    loc_p, scale_p, loc_q, scale_q = _arrays(_dtype(p, q), p.loc, p.scale, q.loc, q.scale)
    ratio = scale_p / scale_q
    z = (loc_p - loc_q) / scale_q
    return _batched(0.5 * (ratio * ratio - 1 + z * z) - jnp.log(ratio), p, q)


@register_kl(dists.Bernoulli, dists.Bernoulli)
def _kl_bernoulli_bernoulli(p: dists.Bernoulli, q: dists.Bernoulli) -> Array:
    dtype = _dtype(p, q)
    log_p1, log_p0 = _bernoulli_log_probs(p, dtype)
    log_q1, log_q0 = _bernoulli_log_probs(q, dtype)
    return _batched(_p_log_ratio(log_p1, log_q1) + _p_log_ratio(log_p0, log_q0), p, q)


@register_kl(dists.Categorical, dists.Categorical)
@register_kl(dists.OneHotCategorical, dists.OneHotCategorical)
def _kl_categorical_categorical(p: dists.Categorical, q: dists.Categorical) -> Array:
    _same_event_size(p, q, p.support_size, q.support_size, "categories")
    dtype = _dtype(p, q)
    terms = _p_log_ratio(_categorical_log_probs(p, dtype), _categorical_log_probs(q, dtype))
    return _batched(jnp.sum(terms, axis=-1), p, q)


@register_kl(dists.Categorical, dists.OneHotCategorical)
@register_kl(dists.OneHotCategorical, dists.Categorical)
def _kl_categorical_onehot(p: Any, q: Any) -> Array:
    raise _not_implemented(
        p,
        q,
        ": their values differ (integer indices against one-hot vectors)",
        "build both distributions as the same class (both Categorical or both "
        "OneHotCategorical) from the same logits or probs.",
    )


@register_kl(dists.Poisson, dists.Poisson)
def _kl_poisson_poisson(p: dists.Poisson, q: dists.Poisson) -> Array:
    rate_p, rate_q = _arrays(_dtype(p, q), p.rate, q.rate)
    has_mass = rate_p > 0
    safe_rate_p = jnp.where(has_mass, rate_p, 1)
    log_ratio = jnp.log(safe_rate_p) - _safe_log(rate_q)
    return _batched(jnp.where(has_mass, rate_p * log_ratio, 0) - rate_p + rate_q, p, q)


def _gamma_gamma(a_p: Array, b_p: Array, a_q: Array, b_q: Array) -> Array:
    return (
        (a_p - a_q) * digamma(a_p)
        - gammaln(a_p)
        + gammaln(a_q)
        + a_q * (jnp.log(b_p) - jnp.log(b_q))
        + a_p * (b_q / b_p - 1)
    )


@register_kl(dists.Gamma, dists.Gamma)
def _kl_gamma_gamma(p: dists.Gamma, q: dists.Gamma) -> Array:
    arrays = _arrays(_dtype(p, q), p.concentration, p.rate, q.concentration, q.rate)
    return _batched(_gamma_gamma(*arrays), p, q)


@register_kl(dists.Exponential, dists.Gamma)
def _kl_exponential_gamma(p: dists.Exponential, q: dists.Gamma) -> Array:
    rate_p, a_q, b_q = _arrays(_dtype(p, q), p.rate, q.concentration, q.rate)
    return _batched(_gamma_gamma(jnp.ones_like(rate_p), rate_p, a_q, b_q), p, q)


@register_kl(dists.Gamma, dists.Exponential)
def _kl_gamma_exponential(p: dists.Gamma, q: dists.Exponential) -> Array:
    a_p, b_p, rate_q = _arrays(_dtype(p, q), p.concentration, p.rate, q.rate)
    return _batched(_gamma_gamma(a_p, b_p, jnp.ones_like(rate_q), rate_q), p, q)


@register_kl(dists.Exponential, dists.Exponential)
def _kl_exponential_exponential(p: dists.Exponential, q: dists.Exponential) -> Array:
    rate_p, rate_q = _arrays(_dtype(p, q), p.rate, q.rate)
    ratio = rate_q / rate_p
    return _batched(ratio - 1 - jnp.log(ratio), p, q)


@register_kl(dists.Beta, dists.Beta)
def _kl_beta_beta(p: dists.Beta, q: dists.Beta) -> Array:
    a_p, b_p, a_q, b_q = _arrays(
        _dtype(p, q), p.concentration1, p.concentration0, q.concentration1, q.concentration0
    )
    kl = (
        betaln(a_q, b_q)
        - betaln(a_p, b_p)
        + (a_p - a_q) * digamma(a_p)
        + (b_p - b_q) * digamma(b_p)
        + (a_q - a_p + b_q - b_p) * digamma(a_p + b_p)
    )
    return _batched(kl, p, q)


@register_kl(dists.Dirichlet, dists.Dirichlet)
def _kl_dirichlet_dirichlet(p: dists.Dirichlet, q: dists.Dirichlet) -> Array:
    _same_event_size(p, q, p.event_shape[0], q.event_shape[0], "concentrations")
    a_p, a_q = _arrays(_dtype(p, q), p.concentration, q.concentration)
    total_p = jnp.sum(a_p, axis=-1)
    total_q = jnp.sum(a_q, axis=-1)
    kl = (
        gammaln(total_p)
        - gammaln(total_q)
        - jnp.sum(gammaln(a_p) - gammaln(a_q), axis=-1)
        + jnp.sum((a_p - a_q) * (digamma(a_p) - digamma(total_p)[..., None]), axis=-1)
    )
    return _batched(kl, p, q)


@register_kl(dists.Uniform, dists.Uniform)
def _kl_uniform_uniform(p: dists.Uniform, q: dists.Uniform) -> Array:
    low_p, high_p, low_q, high_q = _arrays(_dtype(p, q), p.low, p.high, q.low, q.high)
    inside = (low_q <= low_p) & (high_p <= high_q)
    kl = jnp.log(high_q - low_q) - jnp.log(high_p - low_p)
    return _batched(jnp.where(inside, kl, jnp.inf), p, q)
