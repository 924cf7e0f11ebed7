"""The ``sample`` primitive: a stochastic node that survives tracing into a jaxpr.

Called outside any jax_scg transform, ``sample`` simply draws from the distribution, eagerly or
under ``jit``/``vmap``. Under ``scg.surrogate`` the primitive marks a stochastic node of the
computation graph; the rewrite in ``interpreter.py`` replaces it by a draw plus a log-probability.

This module and ``jaxpr.py`` are the only places that register rules with JAX's internals.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from jax_scg._src import adapters, estimators
from jax_scg._src.errors import SiteError, site_message, traced_control_flow_message

ESTIMATORS = ("auto", "score_function", "pathwise")
SCORE_FUNCTION = "score_function"
PATHWISE = "pathwise"


@dataclasses.dataclass(frozen=True)
class SiteInfo:
    """Static description of one ``sample`` call, stored in the primitive's params.

    Attributes:
      treedef: tree structure of the distribution; its leaves are the primitive's operands
        after the key.
      estimator: the estimator the user asked for (one of ``ESTIMATORS``, or a value from
        ``estimators.py``).
      reparameterized: the distribution's ``is_reparameterized`` flag.
      name: the user's ``name=``, or None.
      label: how messages name the site: its name, or its distribution and source line.
      has_baseline: whether a baseline array follows the leaves among the operands.
      batch_axes: one entry per ``jax.vmap`` that encloses the call inside the traced
        function, outermost first; each entry gives ``in_axes`` (0 or None) for every
        operand ``(key, *leaves[, baseline][, value], *estimator_leaves)``.
      estimator_treedef: tree structure of an estimator with array parameters (e.g. REBAR's
        η and temperature), whose leaves are the last operands; None for static estimators.
      has_value: whether the site's value was planted by ``scg.condition`` (an operand after
        the baseline) instead of drawn.
      distribution: the distribution's class name (for ``scg.graph``).
      discontinuity: for an ``"auto"`` site whose cost jumps in its value (``round``, a step,
        an index computed from it; see ``discontinuities.py``), the operation and its source
        line; ``"auto"`` then means the score function (for the costs reached through a
        jump only, where ``score_through`` is set). Empty otherwise.
      score_through: for such a site, the uids of the program's top-level equations where
        its value jumps, when the per-cost split applies (``discontinuities.py``): the site
        stays pathwise, and the costs computed from those equations' outputs take its score
        function instead, with its value stopped in them. Empty: the whole site switches.
      causal: whether the distribution is causal along the last axis of its log-probability
        (``Autoregressive``): element ``t`` is ``log p(x_t | x_<t)``, so a cost aligned with
        position ``t`` takes the score of positions ``<= t``.
    """

    treedef: Any
    estimator: str
    reparameterized: bool
    name: str | None
    label: str
    has_baseline: bool = False
    batch_axes: tuple = ()
    estimator_treedef: Any = None
    has_value: bool = False
    distribution: str = ""
    discontinuity: str = ""
    score_through: frozenset = frozenset()
    causal: bool = False

    def planted(self, operands):
        """The value planted by ``scg.condition`` (the operand after the baseline), or None."""
        if not self.has_value:
            return None
        return operands[1 + self.treedef.num_leaves + int(self.has_baseline)]

    @property
    def num_estimator_leaves(self) -> int:
        return 0 if self.estimator_treedef is None else self.estimator_treedef.num_leaves

    def estimator_from(self, operands):
        """The estimator with its array parameters (operands after the baseline), if any."""
        if self.estimator_treedef is None:
            return self.estimator
        leaves = operands[len(operands) - self.num_estimator_leaves :]
        return jax.tree_util.tree_unflatten(self.estimator_treedef, leaves)

    def split(self, operands):
        """``(key, leaves, baseline or None)`` from the primitive's operands."""
        n = self.treedef.num_leaves
        key, leaves = operands[0], list(operands[1 : 1 + n])
        return key, leaves, (operands[1 + n] if self.has_baseline else None)

    def __repr__(self) -> str:
        return f"<site {self.label}>"

    def resolved_estimator(self, value_dtype):
        """The estimator that ``"auto"`` stands for, given the dtype of the sampled value."""
        if isinstance(self.estimator, estimators.RELAX):
            return SCORE_FUNCTION  # plus its control variate's term (``control_term``)
        if self.estimator != "auto":
            return self.estimator
        if self.discontinuity and not self.score_through:
            return SCORE_FUNCTION
        continuous = jnp.issubdtype(value_dtype, jnp.inexact)
        return PATHWISE if self.reparameterized and continuous else SCORE_FUNCTION


def _vectorize(fn, batch_axes, leading_axes=()):
    """Wraps ``fn`` in one ``vmap`` per recorded batch level (innermost applied first)."""
    for axes in reversed(batch_axes):
        fn = jax.vmap(fn, in_axes=(*leading_axes, *axes))
    return fn


def _leaf_axes(site: SiteInfo, with_key: bool) -> tuple:
    n = site.treedef.num_leaves
    return tuple(axes[(0 if with_key else 1) : 1 + n] for axes in site.batch_axes)


def draw(site: SiteInfo, key, leaves):
    """Draws the site's value from ``key`` and the distribution's parameters."""

    def single(key, *leaves):
        return jax.tree_util.tree_unflatten(site.treedef, leaves).sample(key)

    return _vectorize(single, _leaf_axes(site, with_key=True))(key, *leaves)


def log_prob(site: SiteInfo, value, leaves):
    """Elementwise log-probability of ``value`` (batch levels first, then the batch shape)."""

    def single(value, *leaves):
        return jax.tree_util.tree_unflatten(site.treedef, leaves).log_prob(value)

    return _vectorize(single, _leaf_axes(site, with_key=False), leading_axes=(0,))(value, *leaves)


def abstract_draw(site: SiteInfo, key, leaves) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the site's draw, from its operands' shapes and dtypes only.

    ``key`` and ``leaves`` may be arrays, tracers, abstract values or structs. Memoised on
    what the draw depends on (the distribution's tree structure, the batch levels, the
    operands' shapes and dtypes, JAX's dtype configuration), so the many sites of a deep
    program trace their distribution's ``sample`` once between them, not once per pass.
    """
    return _abstract(_draw_struct, site, key, leaves)


def abstract_log_prob(site: SiteInfo, key, leaves) -> jax.ShapeDtypeStruct:
    """Shape and dtype of the elementwise log-probability of a draw (memoised likewise)."""
    return _abstract(_log_prob_struct, site, key, leaves)


def _abstract(evaluate, site: SiteInfo, key, leaves):
    structs = tuple(jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (key, *leaves))
    config = (
        jax.config.jax_enable_x64,
        jax.config.jax_default_prng_impl,
        jax.config.jax_numpy_rank_promotion,
        jax.config.jax_numpy_dtype_promotion,
    )
    try:
        return evaluate(site.treedef, site.batch_axes, structs, config)
    except (TypeError, ValueError):
        # Static fields that the memo's key cannot hash or compare (a NumPy array), or an
        # error of the distribution itself, which the evaluation without the memo raises again.
        return evaluate.__wrapped__(site.treedef, site.batch_axes, structs, None)


# Bounded: a tree structure can hold the user's functions (an Autoregressive's sampler).
@functools.lru_cache(maxsize=256)
def _draw_struct(treedef, batch_axes, structs, config):
    del config  # part of the cache key only
    site = SiteInfo(treedef, "auto", False, None, "", batch_axes=batch_axes)
    return jax.eval_shape(lambda k, ls: draw(site, k, ls), structs[0], list(structs[1:]))


@functools.lru_cache(maxsize=256)
def _log_prob_struct(treedef, batch_axes, structs, config):
    site = SiteInfo(treedef, "auto", False, None, "", batch_axes=batch_axes)
    if config is None:
        value = _draw_struct.__wrapped__(treedef, batch_axes, structs, config)
    else:
        value = _draw_struct(treedef, batch_axes, structs, config)
    return jax.eval_shape(lambda v, ls: log_prob(site, v, ls), value, list(structs[1:]))


def relaxed_draw(site: SiteInfo, relaxation, key, leaves):
    """The relaxed value of a site whose estimator is a relaxation (see ``estimators.py``)."""

    def single(key, *leaves):
        return relaxation.draw(jax.tree_util.tree_unflatten(site.treedef, leaves), key)

    return _vectorize(single, _leaf_axes(site, with_key=True))(key, *leaves)


def branch_draw(site: SiteInfo, estimator, key, leaves, index):
    """Branch ``index`` of a branching estimator: ``(value, weight)`` (see ``estimators.py``)."""

    def single(key, *leaves):
        values, weights = estimator.branches(
            jax.tree_util.tree_unflatten(site.treedef, leaves), key
        )
        return values[index], weights[index]

    return _vectorize(single, _leaf_axes(site, with_key=True))(key, *leaves)


def control_term(site: SiteInfo, key, operands):
    """RELAX's surrogate term for the site (zero in value), summed over its batch levels.

    ``operands`` are the primitive's operands after the key (their batch axes are those of
    ``site.batch_axes``, estimator leaves last).
    """
    n, m = site.treedef.num_leaves, site.num_estimator_leaves
    leaves, estimator_leaves = operands[:n], operands[len(operands) - m :]

    def single(key, leaves, estimator_leaves):
        dist = jax.tree_util.tree_unflatten(site.treedef, leaves)
        estimator = site.estimator_from([key, *estimator_leaves])
        return estimator.control_term(dist, key)

    fn = single
    for axes in reversed(site.batch_axes):
        fn = jax.vmap(fn, in_axes=(axes[0], list(axes[1 : 1 + n]), list(axes[len(axes) - m :])))
    return jnp.sum(fn(key, list(leaves), list(estimator_leaves)))


def num_branches(site: SiteInfo, operands) -> int:
    """How many branches the site's estimator evaluates (from the operands' shapes only)."""

    def weights(operands):
        key, leaves, _ = site.split(operands)
        estimator = site.estimator_from(operands)

        def single(key, *leaves):
            dist = jax.tree_util.tree_unflatten(site.treedef, leaves)
            return estimator.branches(dist, key)[1]

        return _vectorize(single, _leaf_axes(site, with_key=True))(key, *leaves)

    return jax.eval_shape(weights, list(operands)).shape[len(site.batch_axes)]


def fold_branch(site: SiteInfo, key, index):
    """``key`` folded with a branch index, for a site drawn independently in each branch."""
    fn = lambda k: jax.random.fold_in(k, index)  # noqa: E731
    for _ in site.batch_axes:
        fn = jax.vmap(fn)
    return fn(key)


def broadcast_baseline(site: SiteInfo, baseline, log_probs):
    """The baseline broadcast to the elementwise log-probability's shape, batch levels too."""

    def single(lp, b):
        return jnp.broadcast_to(b, lp.shape).astype(lp.dtype)

    axes = tuple((0, level[-1]) for level in site.batch_axes)
    fn = single
    for in_axes in reversed(axes):
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn(log_probs, baseline)


sample_p = Primitive("scg_sample")


def _sample_impl(*operands, site):
    key, leaves, _ = site.split(operands)
    return draw_or_planted(site, operands)


def draw_or_planted(site: SiteInfo, operands):
    """The site's value: planted by ``scg.condition`` if it was, else drawn."""
    key, leaves, _ = site.split(operands)
    value = site.planted(operands)
    if value is None:
        return draw(site, key, leaves)
    shape = abstract_draw(site, key, leaves)
    return jnp.broadcast_to(jnp.asarray(value, shape.dtype), shape.shape)


def _check_pathwise_value(site: SiteInfo, dtype):
    if site.estimator == PATHWISE and not jnp.issubdtype(dtype, jnp.inexact):
        raise SiteError(
            site_message(
                site.label,
                f'estimator="pathwise" needs a continuous value, but this distribution '
                f"draws {dtype} values.",
                'use estimator="score_function" (or "auto") for discrete sites.',
            )
        )


def _sample_abstract_eval(*operands, site):
    _check_key_varies_with_parameters(site, *site.split(list(operands))[:2])
    key, leaves, _ = site.split(operands)
    # Typed invariant inside ``jax.shard_map`` (as jax_scg always has: a loop carrying draws
    # needs no cast); the rewrite draws with jax.random, whose values carry their true type.
    out = abstract_draw(site, key, leaves)
    _check_pathwise_value(site, out.dtype)
    return jax.core.ShapedArray(out.shape, out.dtype, weak_type=getattr(out, "weak_type", False))


def _check_key_varies_with_parameters(site, key, leaves):
    """Inside ``jax.shard_map``: parameters that differ between devices need a key that does
    too (as under ``vmap``), else the devices' draws share their random bits."""
    from jax_scg._src.jaxpr import varying_axes  # jaxpr.py imports this module

    key_axes = varying_axes(key)
    missing = frozenset().union(*(varying_axes(leaf) for leaf in leaves)) - key_axes
    if missing:
        axes = ", ".join(sorted(map(repr, missing)))
        raise SiteError(
            site_message(
                site.label,
                f"inside shard_map its parameters vary along the mesh axis {axes} but its key "
                "is replicated there, so the devices' draws would share their random bits "
                "(correlated draws, a wrong joint log-probability and a wrong gradient).",
                "give each device its own key, e.g. pass jax.random.split(key, n) sharded "
                "over that axis (in_specs=P(axis)), or fold in jax.lax.axis_index(axis).",
            )
        )


def _sample_jvp(primals, tangents, *, site):
    key, leaves, _ = site.split(primals)
    out = sample_p.bind(*primals, site=site)
    leaf_tangents = site.split(tangents)[1]
    planted_pathwise = site.has_value and site.resolved_estimator(out.dtype) == PATHWISE
    if all(type(t) is ad.Zero for t in leaf_tangents) or planted_pathwise:
        return out, ad.Zero(jax.typeof(out).to_tangent_aval())
    if site.resolved_estimator(out.dtype) != PATHWISE:
        raise SiteError(
            site_message(
                site.label,
                "plain JAX differentiation reached a score-function or relaxed site; it would "
                "silently return a wrong (pathwise-only) gradient.",
                "differentiate with scg.grad(fn) / scg.value_and_grad(fn), or apply "
                "jax.grad/jax.hessian to scg.surrogate(fn).",
            )
        )
    leaf_tangents = [ad.instantiate_zeros(t) for t in leaf_tangents]
    _, out_tangent = jax.jvp(lambda *ls: draw(site, key, ls), tuple(leaves), tuple(leaf_tangents))
    return out, out_tangent


def _sample_batch(args, dims, *, site):
    if dims[0] is None:
        raise SiteError(
            site_message(
                site.label,
                "it is under jax.vmap with an unbatched key but batched parameters, so every "
                "batch member would reuse the same random bits (correlated draws, a wrong "
                "log-probability and a wrong gradient).",
                "split the key and map over it too, e.g. "
                "jax.vmap(f)(params, jax.random.split(key, n)).",
            )
        )
    n_est = site.num_estimator_leaves
    if n_est and any(d is not None for d in dims[len(dims) - n_est :]):
        raise SiteError(
            site_message(
                site.label,
                "the estimator's parameters (e.g. REBAR's eta and temperature) are batched by a "
                "jax.vmap inside the loss; one site has one set of estimator parameters.",
                "compute them outside the vmap, or vmap the whole scg.grad call instead.",
            )
        )
    moved = [a if d is None else jnp.moveaxis(a, d, 0) for a, d in zip(args, dims)]
    level = tuple(None if d is None else 0 for d in dims)
    batched_site = dataclasses.replace(site, batch_axes=(level, *site.batch_axes))
    return sample_p.bind(*moved, site=batched_site), 0


sample_p.def_impl(_sample_impl)
sample_p.def_abstract_eval(_sample_abstract_eval)
mlir.register_lowering(sample_p, mlir.lower_fun(_sample_impl, multiple_results=False))
ad.primitive_jvps[sample_p] = _sample_jvp
batching.primitive_batchers[sample_p] = _sample_batch


# An identity whose transpose raises: it marks values that reverse-mode differentiation must not
# reach (the outputs of a while_loop with sites inside). Forward mode passes straight through.
reverse_guard_p = Primitive("scg_reverse_guard")
reverse_guard_p.def_impl(lambda x, *, label: x)
reverse_guard_p.def_abstract_eval(lambda x, *, label: x)
mlir.register_lowering(reverse_guard_p, mlir.lower_fun(lambda x, *, label: x, False))
batching.primitive_batchers[reverse_guard_p] = lambda args, dims, *, label: (
    reverse_guard_p.bind(args[0], label=label),
    dims[0],
)


def _reverse_guard_jvp(primals, tangents, *, label):
    (x,), (t,) = primals, tangents
    out_tangent = t if type(t) is ad.Zero else reverse_guard_p.bind(t, label=label)
    return reverse_guard_p.bind(x, label=label), out_tangent


def _reverse_guard_transpose(cotangent, x, *, label):
    raise SiteError(
        site_message(
            label,
            "reverse-mode differentiation (jax.grad, jax.vjp, jacrev) reached a site inside a "
            "lax.while_loop; JAX cannot reverse-differentiate while loops.",
            "use forward mode (jax.jvp, jax.jacfwd of scg.surrogate(fn)), or write the loop "
            "with lax.fori_loop with static bounds or lax.scan.",
        )
    )


ad.primitive_jvps[reverse_guard_p] = _reverse_guard_jvp
ad.primitive_transposes[reverse_guard_p] = _reverse_guard_transpose


# A declaration, an identity in value: ``values[..., t]`` depends on the sequence operand only
# through its positions ``<= t`` (``scg.causal``). The interpreter gives it an influence rule.
causal_p = Primitive("scg_causal")
causal_p.def_impl(lambda values, sequence: values)
causal_p.def_abstract_eval(lambda values, sequence: values)
mlir.register_lowering(causal_p, mlir.lower_fun(lambda values, sequence: values, False))


def _causal_jvp(primals, tangents):
    return causal_p.bind(*primals), tangents[0]


def _causal_batch(args, dims):
    size = next(a.shape[d] for a, d in zip(args, dims) if d is not None)
    front = [
        jnp.broadcast_to(a, (size, *a.shape)) if d is None else jnp.moveaxis(a, d, 0)
        for a, d in zip(args, dims)
    ]
    return causal_p.bind(*front), 0


ad.primitive_jvps[causal_p] = _causal_jvp
batching.primitive_batchers[causal_p] = _causal_batch


def causal(values, sequence):
    """Declares that ``values[..., t]`` depends on ``sequence`` only through its positions ``<= t``.

    An identity in value. Under ``scg.grad`` it gives each element of ``values`` the score of
    the sequence's positions up to its own (per-position causal credit) instead of the whole
    sequence's, where the dataflow alone cannot tell: a per-token KL penalty or reward
    computed by another pass of a causal (masked-attention) model over the sampled tokens.
    The declaration is the user's claim, as a causal attention mask is: values at position
    ``t`` that read later positions make the estimate biased.

    Args:
      values: an array of the sequence's shape, e.g. per-position costs.
      sequence: the value of a causal site (``jax_scg.distributions.Autoregressive``),
        as ``scg.sample`` returned it.

    Returns:
      ``values``, unchanged.

    Raises:
      ValueError: if the shapes differ. Under ``scg.grad``, ``SiteError`` if ``sequence`` is
        not the value of a causal site.

    Examples:
      >>> import jax.numpy as jnp
      >>> causal(jnp.array([0.5, 1.0]), jnp.array([3, 1]))
      Array([0.5, 1. ], dtype=float32)
    """
    values, sequence = jnp.asarray(values), jnp.asarray(sequence)
    if values.shape != sequence.shape:
        raise ValueError(
            f"jax_scg: scg.causal(values, sequence) needs values of the sequence's shape "
            f"{sequence.shape} (one per position), got {values.shape}.\n  Fix: compute one "
            "value per position, e.g. per-token costs before summing them."
        )
    return causal_p.bind(values, sequence)


# --------------------------------------------------------------------------------------------
# The public ``sample`` function.

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))  # jax_scg/_src
_JAX_DIR = os.path.dirname(os.path.abspath(jax.__file__))


def _caller_location() -> str:
    """``file:line (in function)`` of the first frame outside jax_scg and JAX."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith((_PACKAGE_DIR, _JAX_DIR)):
            return f"{os.path.basename(filename)}:{frame.f_lineno} (in {frame.f_code.co_name})"
        frame = frame.f_back
    return "<unknown location>"


def _is_distribution(dist) -> bool:
    return (
        callable(getattr(dist, "sample", None))
        and callable(getattr(dist, "log_prob", None))
        and hasattr(dist, "is_reparameterized")
    )


def _check_key(key, label: str):
    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if jnp.ndim(key) == 0:
            return key
        problem = f"the key has shape {jnp.shape(key)}; one sample call takes one key."
    elif dtype is not None and dtype == jnp.uint32 and jnp.ndim(key) == 1:
        return key
    else:
        shape = jnp.shape(key) if dtype is not None else ""
        problem = f"the key must be a PRNG key, got {type(key).__name__} {dtype}{list(shape)}."
    raise TypeError(
        site_message(
            label,
            problem,
            "pass a key from jax.random.key(seed) or jax.random.PRNGKey(seed) (split it for "
            "each site); for many independent draws give the distribution batched parameters, "
            "or jax.vmap over jax.random.split(key, n).",
        )
    )


_BRANCHING_NEEDS = {
    "enumerate": "it needs a distribution with a finite support (enumerate_support())",
    "disarm": "it needs a Bernoulli distribution",
    "arm": "it needs a Bernoulli distribution",
    "measure_valued": "it needs a Normal distribution",
    "rebar": "it needs a Bernoulli or OneHotCategorical distribution (its relaxed branches "
    "give the costs vectors of the simplex, which the costs of an integer Categorical, "
    "indexing with its value, cannot take: use OneHotCategorical, or "
    "scg.estimators.relax(control_variate, params), whose control variate is your own "
    "function of the relaxed value and whose costs see samples only)",
    "unordered_set": "it needs a Categorical or OneHotCategorical distribution",
    "indecater": "it needs a Bernoulli, Categorical or OneHotCategorical distribution",
}


def sample(key, dist, *, estimator: str = "auto", baseline=None, name: str | None = None):
    """Draws from ``dist``: a stochastic node of a stochastic computation graph.

    Outside ``scg.surrogate``/``scg.grad`` this is just ``dist.sample(key)``. Inside them, the
    site contributes a score-function term (its log-probability, multiplying the costs it
    influences) or a pathwise (reparameterisation) gradient, as ``estimator`` says.

    Args:
      key: a PRNG key, typed (``jax.random.key``) or raw (``jax.random.PRNGKey``). Use each
        key for one site only.
      dist: a distribution: any pytree with ``sample(key)``, ``log_prob(value)`` and a boolean
        ``is_reparameterized`` (see ``jax_scg.distributions``).
      estimator: ``"auto"`` (pathwise when the distribution is reparameterised and its value
        continuous, score function otherwise; for the costs computed through a
        discontinuity in a pathwise value, such as ``round(x)``, the score function),
        ``"score_function"``, ``"pathwise"``, or
        another estimator by name or value (``"enumerate"``, ``"disarm"``, ``"arm"``,
        ``"measure_valued"``, ``"gumbel_softmax"``, ``"straight_through"``; see
        ``jax_scg.estimators``).
      baseline: an optional baseline ``b`` (Schulman et al. 2015, section 4; Mao et al.
        2019): an array computed before the site (a constant, a running average, a value
        function of the state), broadcastable to the site's log-probability. Each element's
        score multiplies (downstream cost − b) instead of the downstream cost. The estimate
        stays unbiased at every order, and the surrogate's value is unchanged.
      name: an optional name for the site, used in error messages; unique within a program.

    Returns:
      The sampled value, as ``dist.sample(key)`` would return it.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> x = scg.sample(jax.random.key(0), D.Normal(0.0, 1.0))
      >>> x.shape, str(x.dtype)
      ((), 'float32')
    """
    label = repr(name) if name is not None else f"{type(dist).__name__} at {_caller_location()}"
    if name is not None and not isinstance(name, str):
        raise TypeError(site_message(repr(name), "name= must be a string.", "pass a str name."))
    dist = adapters.adapt(dist)
    if not _is_distribution(dist):
        raise TypeError(
            site_message(
                label,
                f"dist must be a distribution, got {type(dist).__name__}.",
                "pass one of jax_scg.distributions, or a pytree with sample(key), "
                "log_prob(value) and a boolean is_reparameterized attribute.",
            )
        )
    if isinstance(estimator, str):
        estimator = estimators.NAMED.get(estimator, estimator)
    if isinstance(estimator, estimators.Relaxation):
        if not estimator.supports(dist):
            raise SiteError(
                site_message(
                    label,
                    f"the {estimator.kind} relaxation needs a Bernoulli or OneHotCategorical "
                    f"distribution, got {type(dist).__name__}.",
                    "use OneHotCategorical instead of Categorical, or another estimator.",
                )
            )
    elif isinstance(estimator, estimators.RELAX):
        if not estimator.supports(dist):
            raise SiteError(
                site_message(
                    label,
                    f"estimator 'relax' does not apply to {type(dist).__name__}: it needs a "
                    "Bernoulli, Categorical or OneHotCategorical distribution (RELAX), or a "
                    "reparameterised one (LAX).",
                    'use another estimator (e.g. "score_function" with a baseline).',
                )
            )
    elif isinstance(estimator, estimators.Branching):
        if not estimator.supports(dist):
            raise SiteError(
                site_message(
                    label,
                    f"estimator {estimator.kind!r} does not apply to {type(dist).__name__}: "
                    f"{_BRANCHING_NEEDS.get(estimator.kind, 'its supports() refused it')}.",
                    'use another estimator (e.g. "score_function").',
                )
            )
        if baseline is not None:
            raise SiteError(
                site_message(
                    label,
                    f"baseline= was given to a site with estimator {estimator.kind!r}, which has "
                    "no score term for a baseline to act on.",
                    'drop the baseline (or use estimator="score_function" with it).',
                )
            )
    elif estimator not in ESTIMATORS:
        valid = (*ESTIMATORS, *estimators.NAMED)
        raise ValueError(
            site_message(
                label,
                f"unknown estimator {estimator!r}.",
                f"use one of {', '.join(repr(e) for e in valid)}, or a value from "
                "jax_scg.estimators.",
            )
        )
    if estimator == PATHWISE and not dist.is_reparameterized:
        raise SiteError(
            site_message(
                label,
                f'estimator="pathwise" but {type(dist).__name__} is not reparameterised '
                "(its samples carry no gradient to its parameters).",
                'use estimator="score_function" (or "auto").',
            )
        )
    key = _check_key(key, label)
    leaves, treedef = jax.tree_util.tree_flatten(dist)
    try:
        leaves = [jnp.asarray(leaf) for leaf in leaves]
    except TypeError as err:
        raise TypeError(
            site_message(
                label,
                f"the distribution's leaves must be arrays ({err}).",
                "keep static configuration out of the pytree's children.",
            )
        ) from None
    try:
        abstract_log_prob(SiteInfo(treedef, "auto", False, name, label), key, leaves)
    except (ValueError, TypeError) as err:
        raise ValueError(
            site_message(
                label,
                f"the distribution cannot draw or score a value: {err}",
                "fix what the message names; for the parametric distributions, give "
                "parameters that broadcast together (e.g. loc and scale of shapes (3,) and "
                "(3,) or ()), of float dtype.",
            )
        ) from None
    estimator_leaves, estimator_treedef = [], None
    with_parameters = isinstance(estimator, (estimators.Branching, estimators.RELAX))
    if with_parameters and estimator.skeleton() is not estimator:
        estimator_leaves, estimator_treedef = jax.tree_util.tree_flatten(estimator)
        estimator_leaves = [jnp.asarray(x, jnp.result_type(float)) for x in estimator_leaves]
        estimator = estimator.skeleton()
    site = SiteInfo(
        treedef,
        estimator,
        bool(dist.is_reparameterized),
        name,
        label,
        baseline is not None,
        estimator_treedef=estimator_treedef,
        distribution=getattr(dist, "name", type(dist).__name__),
        causal=bool(getattr(dist, "causal", False)),
    )
    drawn = DRAWN_WHILE_TRACING.get()
    if drawn is not None:
        drawn.append(label)
    if estimator == PATHWISE:  # eager calls skip abstract evaluation, so check here too
        _check_pathwise_value(site, abstract_draw(site, key, leaves).dtype)
    operands = [key, *leaves]
    if baseline is not None:
        operands.append(_check_baseline(site, key, leaves, baseline))
    planted = PLANTED.get()
    if planted is not None and name is not None and name in planted:
        operands.append(_check_planted(site, estimator, key, leaves, planted[name]))
        planted.used.add(name)
        site = dataclasses.replace(site, has_value=True)
    return sample_p.bind(*operands, *estimator_leaves, site=site)


class Planted(dict):
    """Site name -> value to plant (see ``scg.condition``), recording the names used."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.used: set = set()


# Values planted at named sites by ``scg.condition`` while the conditioned function runs.
PLANTED = contextvars.ContextVar("jax_scg_planted", default=None)
# While ``tracing_for_sites`` traces a program: the labels of the sites drawn so far, to name
# them when Python control flow meets a traced value.
DRAWN_WHILE_TRACING = contextvars.ContextVar("jax_scg_drawn", default=None)

_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,  # includes TracerBoolConversionError
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerArrayConversionError,
)


def _user_frame(tb) -> tuple[str, str]:
    """``(file:line, code)`` of the innermost frame outside JAX and jax_scg."""
    import linecache

    found = ("", "")
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        inside = any(f"{os.sep}{pkg}{os.sep}" in filename for pkg in ("jax", "jax_scg", "jaxlib"))
        if not inside:
            code = linecache.getline(filename, tb.tb_lineno).strip()
            found = (f"{filename}:{tb.tb_lineno}", code)
        tb = tb.tb_next
    return found


def tracing_for_sites(fn_name: str, trace):
    """Runs ``trace()`` (a ``jax.make_jaxpr`` of the user's program); Python control flow
    on a traced value becomes a ``TypeError`` that says why, where, and what to do."""
    token = DRAWN_WHILE_TRACING.set([])
    try:
        return trace()
    except _TRACER_ERRORS as err:
        line, code = _user_frame(err.__traceback__)
        said = str(err).strip().splitlines()[0]
        drawn = DRAWN_WHILE_TRACING.get()
        message = traced_control_flow_message(fn_name, line, code, drawn, said)
        raise TypeError(message) from err
    finally:
        DRAWN_WHILE_TRACING.reset(token)


def _check_planted(site: SiteInfo, estimator, key, leaves, value):
    if estimator not in ESTIMATORS:
        raise SiteError(
            site_message(
                site.label,
                "scg.condition planted a value at a site with estimator "
                f"{getattr(estimator, 'kind', estimator)!r}, which evaluates several values of "
                "its own (or values beside its sample).",
                'plant values only at "score_function"/"pathwise"/"auto" sites.',
            )
        )
    expected = abstract_draw(site, key, leaves)
    try:
        value = jnp.asarray(value)
    except TypeError:
        value = None
    if value is None or value.shape != expected.shape:
        got = "a non-array" if value is None else f"shape {value.shape}"
        raise ValueError(
            site_message(
                site.label,
                f"scg.condition planted {got}, but the site draws shape {expected.shape}.",
                "plant a value shaped like one draw of this site (sites under jax.vmap inside "
                "the function draw the whole batch).",
            )
        )
    return value.astype(expected.dtype)


def _check_baseline(site: SiteInfo, key, leaves, baseline):
    fix = (
        "pass a float array computed before the site (a constant, a running average, a value "
        "function of the state) that broadcasts to the log-probability's shape."
    )
    try:
        baseline = jnp.asarray(baseline)
    except TypeError:
        raise TypeError(
            site_message(site.label, f"baseline must be an array, got {type(baseline)}.", fix)
        ) from None
    if not jnp.issubdtype(baseline.dtype, jnp.inexact):
        baseline = baseline.astype(jnp.result_type(float))
    lp_shape = abstract_log_prob(site, key, leaves).shape
    try:
        ok = jnp.broadcast_shapes(baseline.shape, lp_shape) == tuple(lp_shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            site_message(
                site.label,
                f"baseline has shape {baseline.shape}, which does not broadcast to the "
                f"site's log-probability shape {tuple(lp_shape)}.",
                fix,
            )
        )
    return baseline


def sample_and_log_prob(
    key, dist, *, detach_log_prob: bool = False, estimator: str = "auto", baseline=None, name=None
):
    """Draws like ``sample`` and also returns the drawn value's log-probability.

    Made for objectives that contain the site's own log-probability, such as an ELBO's
    ``-log q(z)``. With ``detach_log_prob=False`` (the default) the log-probability is an
    ordinary differentiable value: every derivative of the surrogate stays unbiased.

    With ``detach_log_prob=True`` the returned log-probability carries no direct derivative
    with respect to the distribution's parameters; its value still enters the costs, so its
    score-function term remains. This drops the zero-mean term ``E[∇ log q(z)] = 0``, as
    Pyro's and NumPyro's ``TraceGraph_ELBO`` do, and lowers the variance of *first-order*
    estimates. Higher derivatives are then biased: the Hessian misses the Fisher
    information ``E[∇ log q ∇ log qᵀ]``. Use it for gradients only.

    Args:
      key: as in ``sample``.
      dist: as in ``sample``.
      detach_log_prob: drop the direct derivative of the log-probability (first order only).
      estimator: as in ``sample``.
      baseline: as in ``sample``.
      name: as in ``sample``.

    Returns:
      ``(value, log_prob)``, the log-probability with the distribution's batch shape.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> z, log_q = scg.sample_and_log_prob(jax.random.key(0), D.Bernoulli(logits=0.0))
      >>> float(log_q)  # log(1/2)
      -0.6931471824645996
    """
    value = sample(key, dist, estimator=estimator, baseline=baseline, name=name)
    params = jax.lax.stop_gradient(dist) if detach_log_prob else dist
    return value, params.log_prob(value)
