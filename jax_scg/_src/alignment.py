"""Per-element credit: which elements of a value depend on which elements of a site.

An influence set holds *entries*. A plain atom (a tuple such as ``("site", uid)``) means
every element of the value may depend on every element of the site. An aligned entry
``("elem", atom, axes)`` means element ``i`` of the value depends only on the site elements
whose index agrees with ``i`` on the aligned axes: ``axes[k]`` is the value's axis that
matches axis ``k`` of the site's elementwise log-probability, or None where the value mixes
all elements along that axis. So 256 data points with local latents ``z_i`` and per-point
terms summed give each term the score of its own ``z_i`` only, as a ``plate`` would, found
from the dataflow. Wherever a rule is unknown, entries fall back to plain atoms: more
credit than needed, never less (unbiased, more variance).
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

ELEM = "elem"

_ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp copy copy_p
    convert_element_type cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt
    integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or
    pow reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub
    tan tanh xor""".split()
)
_REDUCTIONS = frozenset(
    "reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin".split()
)


def base(entry):
    """The site atom behind an entry."""
    return entry[1] if entry[0] == ELEM else entry


def whole(entries) -> frozenset:
    """The same influence with per-element alignment forgotten."""
    return frozenset(base(e) for e in entries)


def _merge(a: tuple, b: tuple) -> tuple:
    return tuple(x if x == y else None for x, y in zip(a, b))


def normalize(entries) -> frozenset:
    """One entry per site: a plain atom wins over alignments; alignments merge axis by axis."""
    plain = {e for e in entries if e[0] != ELEM}
    aligned: dict = {}
    for e in entries:
        if e[0] == ELEM and e[1] not in plain:
            aligned[e[1]] = e[2] if e[1] not in aligned else _merge(aligned[e[1]], e[2])
    for atom, axes in aligned.items():
        plain.add((ELEM, atom, axes) if any(a is not None for a in axes) else atom)
    return frozenset(plain)


def union(sets) -> frozenset:
    out: set = set()
    for s in sets:
        out |= s
    return normalize(out)


def site_value(atom, log_prob_ndim: int) -> frozenset:
    """The influence of a site's own value on itself: aligned on its batch axes."""
    if log_prob_ndim == 0:
        return frozenset({atom})
    return frozenset({(ELEM, atom, tuple(range(log_prob_ndim)))})


def _remap(entries, axis_map) -> set:
    out = set()
    for e in entries:
        if e[0] == ELEM:
            out.add((ELEM, e[1], tuple(None if a is None else axis_map(a) for a in e[2])))
        else:
            out.add(e)
    return out


def _reshape_map(in_shape, out_shape):
    """Axis map of a reshape that only inserts or removes axes of size 1, else None."""
    in_axes = [i for i, d in enumerate(in_shape) if d != 1]
    out_axes = [i for i, d in enumerate(out_shape) if d != 1]
    if [in_shape[i] for i in in_axes] != [out_shape[i] for i in out_axes]:
        return None
    table = dict(zip(in_axes, out_axes))
    return lambda a: table.get(a)


def _broadcasts_in_place(shape, out_shape) -> bool:
    """Same rank, each axis equal or of size 1: element i reads element i (or the only one)."""
    return len(shape) == len(out_shape) and all(d in (1, o) for d, o in zip(shape, out_shape))


def transfer(name: str, params: dict, in_shapes, out_shape, in_influence) -> frozenset:
    """Influence of a single-output equation's output, keeping alignment where it is exact."""
    first, rest = in_influence[0] if in_influence else frozenset(), in_influence[1:]
    others = [whole(s) for s in rest]
    if name in _ELEMENTWISE:
        kept = [
            s if _broadcasts_in_place(shape, out_shape) else whole(s)
            for s, shape in zip(in_influence, in_shapes)
        ]
        return union(kept)
    if name == "dot_general":
        return _dot_general(params, in_shapes, in_influence)
    axis_map = None
    if name == "broadcast_in_dim":
        dims = params["broadcast_dimensions"]
        axis_map = lambda a: dims[a]  # noqa: E731
    elif name in _REDUCTIONS:
        removed = sorted(params["axes"])
        axis_map = lambda a: None if a in removed else a - sum(r < a for r in removed)  # noqa: E731
    elif name == "squeeze":
        removed = sorted(params["dimensions"])
        axis_map = lambda a: None if a in removed else a - sum(r < a for r in removed)  # noqa: E731
    elif name == "transpose":
        perm = tuple(params["permutation"])
        axis_map = perm.index
    elif name == "reshape":
        axis_map = _reshape_map(tuple(in_shapes[0]), tuple(out_shape))
    if axis_map is None:
        return union([whole(s) for s in in_influence])
    return union([_remap(first, axis_map), *others])


def _dot_general(params, in_shapes, in_influence) -> frozenset:
    """A matrix product keeps the alignment of batch and free axes; contracted axes mix.

    The output's axes are the batch axes, then the left operand's free axes, then the right
    operand's: so ``z @ W.T`` with ``z`` of shape (points, units) keeps per-point credit.
    """
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = params["dimension_numbers"]
    lhs_free = [a for a in range(len(in_shapes[0])) if a not in lhs_contract + lhs_batch]
    rhs_free = [a for a in range(len(in_shapes[1])) if a not in rhs_contract + rhs_batch]

    def axis_map(batch, contract, free, offset):
        def where(a):
            if a in batch:
                return list(batch).index(a)
            if a in contract:
                return None
            return len(batch) + offset + free.index(a)

        return where

    lhs_map = axis_map(lhs_batch, lhs_contract, lhs_free, 0)
    rhs_map = axis_map(rhs_batch, rhs_contract, rhs_free, len(lhs_free))
    return union([_remap(in_influence[0], lhs_map), _remap(in_influence[1], rhs_map)])


def log_prob_for_cost(log_probs, axes: tuple, cost_shape):
    """A site's elementwise log-probabilities laid out on a cost of shape ``cost_shape``.

    Axes of the cost that no site axis aligns with get size 1 (the result broadcasts
    against the cost), so a box computed from it costs one ``exp`` per distinct value.
    """
    mixed = tuple(k for k, a in enumerate(axes) if a is None)
    if mixed:
        log_probs = jnp.sum(log_probs, axis=mixed)
    targets = [a for a in axes if a is not None]
    order = sorted(range(len(targets)), key=targets.__getitem__)
    log_probs = jnp.transpose(log_probs, order)
    layout = tuple(d if i in targets else 1 for i, d in enumerate(cost_shape))
    return lax.broadcast_in_dim(log_probs, layout, tuple(sorted(targets)))
