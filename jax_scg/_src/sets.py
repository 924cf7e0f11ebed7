"""Branching estimators for categorical sites that evaluate several chosen values at once.

``unordered_set(k)`` (Kool, van Hoof & Welling 2020) evaluates the costs at ``k`` distinct
values drawn without replacement; ``indecater()`` (De Smet, Sansone & Zuidberg Dos Martires
2023) evaluates them at every value of every coordinate of a vector of independent
categoricals, the other coordinates held at one shared sample. Both are unbiased at first
order, and both are ``estimators.Branching`` values: the downstream code runs once per branch.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax_scg._src import distributions as dists
from jax_scg._src import estimators

MAX_SET_SIZE = 12
"""The largest ``k`` of ``unordered_set``: its weights sum over the 2^k subsets of the set."""


def _centred(x):
    """``x - stop_gradient(x)``: zero in value, derivative that of ``x``."""
    return x - jax.lax.stop_gradient(x)


def _categorical_log_probs(dist):
    """Normalised log-probabilities, shape ``batch_shape + (n,)`` (Bernoulli: ``n = 2``)."""
    if isinstance(dist, dists.Bernoulli):
        logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
        return jnp.stack([jax.nn.log_sigmoid(-logits), jax.nn.log_sigmoid(logits)], axis=-1)
    return jnp.broadcast_to(dist.log_probs, dist.batch_shape + (dist.support_size,))


def _as_values(dist, index):
    """The site's values for category indices ``index`` (one-hot, float or integer)."""
    if isinstance(dist, dists.OneHotCategorical):
        return jax.nn.one_hot(index, dist.support_size, dtype=dist._dtype)
    if isinstance(dist, dists.Bernoulli):
        return index.astype(dist._dtype)
    return index


def gumbel_top_k(key, log_probs, k: int):
    """``k`` distinct categories drawn without replacement, by Gumbel-top-k.

    The ``k`` largest of ``log_probs + Gumbel noise`` (last axis) are distributed as ``k``
    successive draws without replacement (Kool, van Hoof & Welling 2019); returned in
    decreasing order of their perturbed values, shape ``log_probs.shape[:-1] + (k,)``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> s = gumbel_top_k(jax.random.key(0), jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4])), 3)
      >>> s.shape, len(set(s.tolist()))
      ((3,), 3)
    """
    perturbed = log_probs + jax.random.gumbel(key, log_probs.shape, log_probs.dtype)
    return jax.lax.top_k(jax.lax.stop_gradient(perturbed), k)[1]


def _subset_tables(k: int):
    """Per popcount ``L``: the masks of ``L`` of ``k`` positions, their members, and the masks
    with each member removed (static numpy arrays)."""
    levels = []
    for size in range(1, k + 1):
        members = np.array(list(itertools.combinations(range(k), size)), np.int32)
        bits = (1 << members).astype(np.int64)
        masks = bits.sum(-1)
        levels.append((masks, members, masks[:, None] - bits))
    return levels


def set_log_probs(log_p, outside):
    """``log Q(U)`` for every subset ``U`` of a set ``S`` (index: the bit mask of ``U``).

    ``Q(U)`` is the probability of drawing the elements of ``U`` (in any order) first when
    sampling without replacement from the categories outside ``S \\ U``: ``Q(S)`` is the
    probability of the sample ``S``, ``Q(S \\ {s})`` that of ``S \\ {s}`` from the categories
    without ``s``. With ``r`` the probability outside ``S``, ``Q(∅) = 1`` and ``Q(U) = Σ_{u∈U}
    p(u) Q(U \\ {u}) / (r + p(U))`` (the first of an ordering of ``U`` is drawn with probability
    ``p(u) / (r + p(U))``): ``k 2^k`` operations instead of the ``k!`` orderings.

    Args:
      log_p: ``log p(s)`` of the ``k`` elements of ``S``.
      outside: ``log r``, the log-probability of the categories outside ``S`` (``-inf`` if none).

    Returns:
      ``log Q``, shape ``(2^k,)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> p = jnp.array([0.5, 0.3])  # S = {a, b} of {a, b, c}; r = 0.2
      >>> q = jnp.exp(set_log_probs(jnp.log(p), jnp.log(0.2)))
      >>> round(float(q[3]), 4) == round(0.5 * 0.3 / 0.5 + 0.3 * 0.5 / 0.7, 4)  # p({a, b})
      True
    """
    k = log_p.shape[0]
    log_q = jnp.full((2**k,), -jnp.inf, log_p.dtype).at[0].set(0.0)
    for masks, members, without in _subset_tables(k):
        first = jax.nn.logsumexp(log_p[members] + log_q[without], axis=-1)
        mass = jnp.logaddexp(outside, jax.nn.logsumexp(log_p[members], axis=-1))
        log_q = log_q.at[masks].set(first - jnp.where(mass > -jnp.inf, mass, 0.0))  # 0 not NaN
    return log_q


def _set_weights(log_p, chosen, with_baseline: bool):
    """The unordered set estimator's weights of the ``k`` categories ``chosen`` (one site).

    Categories of probability zero (Gumbel-top-k draws them last, only once every category of
    positive probability is in the set) are left out of the set: weight 0, and the others'
    weights those of the exact sum.
    """
    k = chosen.shape[0]
    fixed = jax.lax.stop_gradient(log_p)
    log_p_set = fixed[chosen]
    outside = jnp.ones(log_p.shape, bool).at[chosen].set(False)
    log_r = jax.nn.logsumexp(jnp.where(outside, fixed, -jnp.inf))
    log_q = set_log_probs(log_p_set, log_r)  # entries with a zero-probability member unused
    valid = log_p_set > -jnp.inf
    bits = jnp.asarray(1 << np.arange(k), jnp.int32)
    full = jnp.sum(jnp.where(valid, bits, 0))  # the set: its members of positive probability
    log_ratio = log_q[full & ~bits] - log_q[full]  # log R(S, s)
    ratio = jnp.where(valid, jnp.exp(log_ratio), 0.0)
    value = jnp.exp(log_p_set) * ratio  # p(s) R(S, s): the value estimate's weights
    slope = _centred(jnp.exp(log_p[chosen])) * ratio  # ∇p(s) R(S, s)
    if not with_baseline or k == 1:
        return value + slope
    # R^{D\s}(S, s') = Q(S \ {s, s'}) / Q(S \ {s}) (1 for s' = s): the weights of the
    # leave-s-out estimate of E[f] that is the baseline of s.
    pairs = full & ~(bits[:, None] | bits[None, :])
    loo = jnp.exp(log_q[pairs] - log_q[full & ~bits][:, None])
    loo = jnp.where(np.eye(k, dtype=bool), 1.0, loo)
    loo = jnp.where(valid[:, None] & valid[None, :], loo, 0.0)
    baseline = jnp.exp(log_p_set) * jnp.einsum("i,ij->j", slope, loo)
    return value + slope - baseline


@dataclasses.dataclass(frozen=True)
class UnorderedSet(estimators.Branching):
    """The unordered set estimator (Kool, van Hoof & Welling 2020) for categorical sites.

    Draws a set ``S`` of ``k`` distinct categories without replacement (Gumbel-top-k; per
    element of a batched site, independently) and runs the downstream code once per element
    of ``S``. With ``R(S, s) = p^{D\\s}(S \\ {s}) / p(S)`` (the leave-one-out ratio of the
    probabilities of the sampled sets), the value is ``Σ_{s∈S} p(s) R(S, s) f(s)``, an unbiased
    estimate of ``E[f]`` (stochastic sum-and-sample without replacement), and the gradient is
    ``Σ_{s∈S} ∇p(s) R(S, s) (f(s) − b(S, s))`` with the built-in baseline ``b(S, s) = Σ_{s'∈S}
    p(s') R^{D\\s}(S, s') f(s')``, ``R^{D\\s}(S, s') = p^{D\\{s,s'}}(S \\ {s, s'}) /
    p^{D\\s}(S \\ {s})`` (``1`` for ``s' = s``): the leave-``s``-out estimate of ``E[f]``.
    Unbiased at first order. With ``k`` at least the number of categories it is the exact sum.

    Cost: ``k`` evaluations of the downstream code and ``k 2^k`` operations per site element
    for the set probabilities, so ``k ≤ 12`` (``MAX_SET_SIZE``). Categories of probability
    zero (``-inf`` logits) are drawn only once the set holds all the others, and then get
    weight zero. A cost combining several elements of a
    batched site is refused (each element draws its own set; use ``indecater`` there).

    Attributes:
      k: the size of the sampled set.
      baseline: whether to subtract the built-in baseline (it needs ``k ≥ 2``; with ``k = 1``
        the estimator is the score function).

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> costs = jnp.array([1.0, -2.0, 0.5, 3.0])
      >>> def f(t, key):
      ...     return costs[scg.sample(key, D.Categorical(logits=t), estimator=UnorderedSet(2))]
      >>> logits = jnp.array([0.0, 1.0, 2.0, -1.0])
      >>> exact = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * costs))(logits)
      >>> many = jax.random.split(jax.random.key(0), 4000)
      >>> grads = jax.jit(jax.vmap(scg.grad(f), (None, 0)))(logits, many)
      >>> bool(jnp.allclose(grads.mean(0), exact, atol=0.05))  # unbiased: 2 of 4 categories
      True
    """

    k: int
    baseline: bool = True
    kind = "unordered_set"
    guarantee = "first order"

    def __post_init__(self):
        if not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1:
            raise ValueError(f"unordered_set(k): k must be a positive integer, got {self.k!r}")
        if self.k > MAX_SET_SIZE:
            raise ValueError(
                f"unordered_set(k={self.k}): k is at most {MAX_SET_SIZE} (the set's "
                f"probabilities sum over its 2^k subsets); use a smaller k, or several "
                "independent sets."
            )

    def supports(self, dist) -> bool:
        return isinstance(dist, dists.Categorical)

    def branches(self, dist, key):
        log_p = _categorical_log_probs(dist)
        batch, n = log_p.shape[:-1], log_p.shape[-1]
        k = min(self.k, n)  # a set of every category: the exact sum
        flat = log_p.reshape(-1, n)
        chosen = gumbel_top_k(key, flat, k)
        weights = jax.vmap(lambda lp, s: _set_weights(lp, s, self.baseline))(flat, chosen)
        values = _as_values(dist, chosen.T.reshape((k, *batch)))
        return values, weights.T.reshape((k, *batch))


@dataclasses.dataclass(frozen=True)
class IndeCateR(estimators.Branching):
    """IndeCateR (De Smet, Sansone & Zuidberg Dos Martires 2023) for independent categoricals.

    For a site of ``D`` independent categorical coordinates (a batched ``Categorical`` or
    ``OneHotCategorical``; ``Bernoulli`` as two categories) and one sample ``x``, the
    gradient is ``Σ_d Σ_c ∇p_d(c) f(x with x_d := c)`` (the CatLog-derivative trick: each
    coordinate's expectation summed exactly, the others at the shared sample), and the value
    ``(1/D) Σ_d Σ_c p_d(c) f(x with x_d := c)``. Unbiased at first order. ``D·n`` branches
    (``n`` categories): the downstream code runs once per changed coordinate and category.

    Unlike the other branching estimators, whose weights are per element of the site, a
    branch here changes one coordinate of the whole vector, so its weight is one number for
    the whole site (the weights have size-1 axes where the site has its batch axes): the
    costs may combine the site's elements freely (sums, matrix products, neural networks).

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(t, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=t), estimator=IndeCateR())
      ...     return jnp.prod(x)  # all coordinates at once
      >>> t = jnp.array([0.5, -1.0])
      >>> g = scg.grad(f)(t, jax.random.key(0))
      >>> g.shape
      (2,)
    """

    kind = "indecater"
    guarantee = "first order"

    def supports(self, dist) -> bool:
        return isinstance(dist, (dists.Bernoulli, dists.Categorical))

    def branches(self, dist, key):
        log_p = _categorical_log_probs(dist)
        batch, n = log_p.shape[:-1], log_p.shape[-1]
        size = math.prod(batch)
        flat = log_p.reshape(size, n)
        sample = jax.random.categorical(key, jax.lax.stop_gradient(flat), axis=-1)
        # Branch (d, c): the sample with coordinate d set to c.
        changed = np.eye(size, dtype=bool)[:, None, :]
        index = jnp.where(changed, jnp.arange(n)[None, :, None], sample[None, None, :])
        values = _as_values(dist, index.reshape((size * n, *batch)))
        p = jnp.exp(flat)
        weights = jax.lax.stop_gradient(p) / size + _centred(p)
        return values, weights.reshape((size * n,) + (1,) * len(batch))


def unordered_set(k: int, baseline: bool = True) -> UnorderedSet:
    """The unordered set estimator with sets of ``k`` (Categorical; unbiased, first order).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.unordered_set(4).guarantee
      'first order'
    """
    return UnorderedSet(k, baseline)


def indecater() -> IndeCateR:
    """IndeCateR for vectors of independent categoricals (unbiased, first order).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.indecater().kind
      'indecater'
    """
    return IndeCateR()


estimators.NAMED["indecater"] = indecater()
