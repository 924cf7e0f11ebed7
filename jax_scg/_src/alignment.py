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

ELEMENTWISE = _ELEMENTWISE = frozenset(
    """abs acos acosh add add_any and asin asinh atan atan2 atanh cbrt ceil clamp copy copy_p
    convert_element_type cos cosh digamma div eq erf erf_inv erfc exp exp2 expm1 floor ge gt
    integer_pow is_finite le lgamma log log1p logistic lt max min mul ne neg nextafter not or
    pow reduce_precision rem round rsqrt select_n sign sin sinh sqrt square stop_gradient sub
    tan tanh xor""".split()
)
_IDENTITIES = frozenset("optimization_barrier device_put pvary pcast".split())
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


MESH = "mesh"


def across(atom, axes) -> tuple:
    """The atom of a site as seen after a collective over mesh ``axes``: the site on every
    device along them (``("mesh", atom, axes)``, see ``collectives.py``)."""
    if atom[0] == MESH:
        atom, axes = atom[1], (*atom[2], *axes)
    return (MESH, atom, tuple(sorted(set(axes), key=str)))


def _merge_mesh_atoms(entries) -> set:
    """A site seen both on this device and across devices (or across several axis sets)
    becomes one atom across the union of the axes: its log-probability, summed over the
    devices, already holds this device's (counted once, never twice)."""
    axes: dict = {}
    for e in entries:
        atom = base(e)
        if atom[0] == MESH:
            axes[atom[1]] = across(atom, axes.get(atom[1], ()))[2]
    if not axes:
        return set(entries)

    def merged(atom):
        inner = atom[1] if atom[0] == MESH else atom
        return (MESH, inner, axes[inner]) if inner in axes else atom

    return {(ELEM, merged(e[1]), e[2]) if e[0] == ELEM else merged(e) for e in entries}


def normalize(entries) -> frozenset:
    """One entry per site: a plain atom wins over alignments; alignments merge axis by axis."""
    entries = _merge_mesh_atoms(entries)
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


def relabel(entries, atom_map, axis_shift: int = 0) -> frozenset:
    """The entries with every atom replaced by ``atom_map(atom)``, alignment kept.

    Aligned axes move by ``axis_shift``: +1 when a loop stacks a value along a new leading
    axis, -1 when a loop body sees one slice of a stacked operand (an axis that was the
    stacked axis becomes mixed).
    """
    out = set()
    for e in entries:
        if e[0] == ELEM:
            axes = tuple(None if a is None or a + axis_shift < 0 else a + axis_shift for a in e[2])
            out.add((ELEM, atom_map(e[1]), axes))
        else:
            out.add(atom_map(e))
    return normalize(out)


def keep_axes_below(entries, ndim: int) -> frozenset:
    """The entries with alignment to axes ``ndim`` and above forgotten (those axes mix)."""
    return normalize(_remap(entries, lambda a: a if a < ndim else None))


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
    """Axis map of a reshape: axes kept as they are (size-1 axes aside) map, others mix."""
    table, i, j = {}, 0, 0
    while i < len(in_shape) and j < len(out_shape):
        if in_shape[i] == 1:
            i += 1
        elif out_shape[j] == 1:
            j += 1
        elif in_shape[i] == out_shape[j]:
            table[i] = j
            i, j = i + 1, j + 1
        else:  # a group of axes merged or split: skip to the end of the group
            a, b = in_shape[i], out_shape[j]
            i, j = i + 1, j + 1
            while a != b:
                if a < b:
                    a, i = a * in_shape[i], i + 1
                else:
                    b, j = b * out_shape[j], j + 1
    return table.get


def _broadcasts_in_place(shape, out_shape) -> bool:
    """Same rank, each axis equal or of size 1: element i reads element i (or the only one)."""
    return len(shape) == len(out_shape) and all(d in (1, o) for d, o in zip(shape, out_shape))


def _kept_unless(moved):
    """Axis map keeping every axis except those in ``moved`` (which mix)."""
    return lambda a: None if a in moved else a


def _same_layout_rule(moved_axes):
    """A rule for operations whose output has the inputs' layout except on some axes.

    ``moved_axes(params, in_shapes, out_shape)`` gives, per input, the axes along which
    output element ``i`` is not input element ``i``.
    """

    def rule(params, in_shapes, out_shape, in_influence):
        moved = moved_axes(params, in_shapes, out_shape)
        return union([_remap(s, _kept_unless(m)) for s, m in zip(in_influence, moved)])

    return rule


def _slice_moves(params, in_shapes, out_shape):
    """A prefix slice keeps element ``i`` at ``i``; an offset or a stride moves it."""
    shape, starts = in_shapes[0], params["start_indices"]
    strides = params["strides"] or (1,) * len(shape)
    return [{a for a in range(len(shape)) if starts[a] != 0 or strides[a] != 1}]


def _pad_moves(params, in_shapes, out_shape):
    config = params["padding_config"]
    return [{a for a, (low, _, interior) in enumerate(config) if low or interior}, set()]


def _concatenate_moves(params, in_shapes, out_shape):
    return [set() if k == 0 else {params["dimension"]} for k in range(len(in_shapes))]


def _dynamic_slice_moves(params, in_shapes, out_shape):
    partial = {a for a, (d, o) in enumerate(zip(in_shapes[0], out_shape)) if d != o}
    return [partial] + [set()] * (len(in_shapes) - 1)


def _dynamic_update_slice_moves(params, in_shapes, out_shape):
    partial = {a for a, (d, u) in enumerate(zip(in_shapes[0], in_shapes[1])) if d != u}
    return [set(), partial] + [set()] * (len(in_shapes) - 2)


def _along_axis_moves(params, in_shapes, out_shape):
    return [{params["axis"]}] * len(in_shapes)


def _rev_moves(params, in_shapes, out_shape):
    return [set(params["dimensions"])]


def _gather(params, in_shapes, out_shape, in_influence) -> frozenset:
    """``x[i]``-style indexing: the output's batch axes follow the indices' axes, full slices
    of the operand keep their axis, and what is picked by index mixes."""
    dn = params["dimension_numbers"]
    operand_shape, indices_shape = in_shapes[0], in_shapes[1]
    offset_dims = tuple(dn.offset_dims)
    batch_out = [a for a in range(len(out_shape)) if a not in offset_dims]
    indices_map = {k: batch_out[k] for k in range(len(indices_shape) - 1)}
    operand_batching = tuple(getattr(dn, "operand_batching_dims", ()))
    indices_batching = tuple(getattr(dn, "start_indices_batching_dims", ()))
    operand_map = {a: indices_map.get(b) for a, b in zip(operand_batching, indices_batching)}
    windowed = [
        a
        for a in range(len(operand_shape))
        if a not in dn.collapsed_slice_dims and a not in operand_batching
    ]
    for j, a in enumerate(windowed):
        full = params["slice_sizes"][a] == operand_shape[a]
        operand_map[a] = offset_dims[j] if full else None
    return union(
        [
            _remap(in_influence[0], operand_map.get),
            _remap(in_influence[1], indices_map.get),
            *[whole(s) for s in in_influence[2:]],
        ]
    )


def _elementwise(params, in_shapes, out_shape, in_influence) -> frozenset:
    kept = [
        s if _broadcasts_in_place(shape, out_shape) else whole(s)
        for s, shape in zip(in_influence, in_shapes)
    ]
    return union(kept)


def _first_operand_rule(axis_map_of):
    """A rule remapping the first operand's axes; the other operands' influence mixes."""

    def rule(params, in_shapes, out_shape, in_influence):
        axis_map = axis_map_of(params, in_shapes, out_shape)
        return union([_remap(in_influence[0], axis_map), *[whole(s) for s in in_influence[1:]]])

    return rule


def _removed_axes_map(param_name):
    def axis_map_of(params, in_shapes, out_shape):
        removed = sorted(params[param_name])
        return lambda a: None if a in removed else a - sum(r < a for r in removed)

    return axis_map_of


_CUMULATIVE = ("cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp")
_RULES = {
    **{name: _elementwise for name in _ELEMENTWISE},
    # shard_map's invariant -> varying cast (a sample, typed invariant, meets per-device data):
    # a type change, the same values.
    **{name: _elementwise for name in ("pvary", "pcast")},
    **{name: _first_operand_rule(_removed_axes_map("axes")) for name in _REDUCTIONS},
    **{name: _same_layout_rule(_along_axis_moves) for name in _CUMULATIVE},
    "squeeze": _first_operand_rule(_removed_axes_map("dimensions")),
    "broadcast_in_dim": _first_operand_rule(
        lambda params, in_shapes, out_shape: params["broadcast_dimensions"].__getitem__
    ),
    "transpose": _first_operand_rule(
        lambda params, in_shapes, out_shape: tuple(params["permutation"]).index
    ),
    "reshape": _first_operand_rule(
        lambda params, in_shapes, out_shape: _reshape_map(in_shapes[0], out_shape)
    ),
    "dot_general": lambda params, in_shapes, out_shape, in_influence: _dot_general(
        params, in_shapes, in_influence
    ),
    "gather": _gather,
    "slice": _same_layout_rule(_slice_moves),
    "pad": _same_layout_rule(_pad_moves),
    "concatenate": _same_layout_rule(_concatenate_moves),
    "dynamic_slice": _same_layout_rule(_dynamic_slice_moves),
    "dynamic_update_slice": _same_layout_rule(_dynamic_update_slice_moves),
    "rev": _same_layout_rule(_rev_moves),
    "stack": lambda params, in_shapes, out_shape, in_influence: union(
        [_remap(s, lambda a: a if a < params["axis"] else a + 1) for s in in_influence]
    ),
    "sort": _same_layout_rule(lambda params, in_shapes, out_shape: [{params["dimension"]}]),
}
# Operations whose loss of alignment is real mixing of elements, not a missing rule.
MIXING = frozenset({*_REDUCTIONS, *_CUMULATIVE, "dot_general", "sort"})


def transfer(name: str, params: dict, in_shapes, out_shape, in_influence) -> frozenset:
    """Influence of a single-output equation's output, keeping alignment where it is exact."""
    rule = _RULES.get(name)
    if rule is None:
        return union([whole(s) for s in in_influence])
    return rule(params, [tuple(s) for s in in_shapes], tuple(out_shape), in_influence)


def transfer_multi(name: str, params: dict, num_outputs: int, in_influence):
    """Influence of each output of a multiple-output equation; None where there is no rule."""
    if name in ("sort", "split"):
        axis = params["dimension" if name == "sort" else "axis"]
        return [union([_remap(s, _kept_unless({axis})) for s in in_influence])] * num_outputs
    if name in _IDENTITIES and len(in_influence) == num_outputs:  # a pvary of several values
        return list(in_influence)
    return None


def lost_alignment(name: str, in_influence, out) -> list:
    """The atoms that operation ``name`` itself made plain (credited as a whole) in ``out``:
    aligned in some input, plain in none, plain in ``out``. Elementwise operations and real
    mixing (reductions, contractions) are not losses of a rule."""
    if name in MIXING or name in _ELEMENTWISE:
        return []
    aligned = {e[1] for s in in_influence for e in s if e[0] == ELEM}
    plain = {e for s in in_influence for e in s if e[0] != ELEM}
    return sorted((a for a in aligned - plain if a in out), key=repr)


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
    # An aligned axis may differ in size: a prefix slice (``x[0]``, ``x[:2]``) keeps the first
    # elements, a concatenation or padding after the site appends elements it does not
    # influence (log-probability 0 there); a site axis of size 1 broadcasts.
    for k, target in enumerate(sorted(targets)):
        size, wanted = log_probs.shape[k], cost_shape[target]
        if size > wanted:
            log_probs = lax.slice_in_dim(log_probs, 0, wanted, axis=k)
        elif 1 < size < wanted:
            padding = [(0, 0, 0)] * log_probs.ndim
            padding[k] = (0, wanted - size, 0)
            log_probs = lax.pad(log_probs, jnp.zeros((), log_probs.dtype), padding)
    layout = tuple(d if i in targets else 1 for i, d in enumerate(cost_shape))
    return lax.broadcast_in_dim(log_probs, layout, tuple(sorted(targets)))
