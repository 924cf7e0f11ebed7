"""Where the sites' keys come from: two sites drawing from one key are refused.

Two draws from the same key are the same random bits, so the sites are dependent; the rewrite
would treat them as independent and return a biased estimate. Keys are followed through the
operations that do not change them (static slices of a key array, reshapes, wrapping and
unwrapping key data), so ``keys[0]`` taken twice is one key. A site in a loop body whose key is
the same at every iteration (closed over, or carried unchanged) draws the same bits every
iteration, and is refused too. Sites in different branches of one ``cond``/``switch`` never
both run, so they may share a key. A key that feeds a site and also a plain ``jax.random``
call gives correlated values: a ``FallbackWarning``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import jax
import numpy as np

from jax_scg._src.errors import FallbackWarning, SiteError, site_message, user_stacklevel
from jax_scg._src.jaxpr import Const, Scope, aval_of, scan_counts

# Operations that only wrap or unwrap a key: the same random bits.
_SAME_KEY = frozenset({"copy", "copy_p"})
# Static rearrangements of a key array: each output key is one of the input's keys.
_REARRANGE = frozenset({"slice", "squeeze", "reshape", "expand_dims"})


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class Keys:
    """Which keys a key array holds: keys ``rows`` (flat, row-major in ``shape``) of ``root``.

    ``root`` is an input, a constant, an unknown value, or the result of splitting or folding
    one key of another root: ``("split", (root, row))``, so that ``split(k, 2)[i]`` and
    ``split(k, 4)[i]`` are one key (JAX's default threefry gives them the same bits).
    """

    root: tuple
    rows: tuple
    shape: tuple

    @staticmethod
    def all_of(root, shape) -> Keys:
        return Keys(root, tuple(range(math.prod(shape))), tuple(shape))

    def rearranged(self, name, params, in_shape, out_shape) -> Keys | None:
        if tuple(in_shape) != self.shape:
            return None
        if name != "slice":  # squeeze, reshape, expand_dims: the same keys in row-major order
            return (
                Keys(self.root, self.rows, tuple(out_shape))
                if _same_size(in_shape, out_shape)
                else None
            )
        if len(self.shape) == 1:  # a slice of a vector of keys, e.g. keys[i]: no table
            strides = params.get("strides") or (1,)
            (lo,), (hi,) = params["start_indices"], params["limit_indices"]
            rows = self.rows[lo : hi : strides[0]]
            return (
                Keys(self.root, rows, tuple(out_shape))
                if _same_size((len(rows),), out_shape)
                else None
            )
        table = np.asarray(self.rows, dtype=np.int64).reshape(self.shape)
        if name == "slice":
            strides = params.get("strides") or (1,) * table.ndim
            table = table[
                tuple(
                    slice(lo, hi, st)
                    for lo, hi, st in zip(params["start_indices"], params["limit_indices"], strides)
                )
            ]
        if table.size != math.prod(out_shape):
            return None
        return Keys(self.root, tuple(table.reshape(-1).tolist()), tuple(out_shape))

    def one(self):
        """The single key this holds, ``(root, row)``, or None."""
        return (self.root, self.rows[0]) if len(self.rows) == 1 else None


@dataclasses.dataclass
class _Use:
    label: str
    branch: tuple  # ((cond uid, branch index), ...): the branches the site is inside
    per_iteration: bool  # inside a loop, with a key that is the same every iteration
    rows: frozenset = frozenset()


class _Keys:
    def __init__(self):
        self.uses: dict = {}  # root -> [_Use]
        self.plain: dict = {}  # root -> [(rows, operation name)] (a jax.random call)
        self.count = 0

    def new_identity(self):
        self.count += 1
        return ("fresh", self.count)

    def walk(self, scope: Scope, identities, branch=(), invariant=frozenset()):
        """``identities``: per input of ``scope``, its identity (``Keys`` for keys);
        ``invariant``: the roots that are the same at every iteration of an enclosing loop."""
        ident = dict(zip(scope.inputs, identities))

        def of(ref):
            if isinstance(ref, Const):
                value = ref.value
                shape = tuple(getattr(value, "shape", ()))
                root = ("const", _constant_identity(value))
                return Keys.all_of(root, shape) if _is_key(jax.typeof(value)) else root
            return ident[ref]

        for eqn in scope.eqns:
            ins = [of(r) for r in eqn.inputs]
            first = ins[0] if ins else None
            outs = None
            if eqn.is_site:
                site = eqn.params["site"]
                if not site.has_value and isinstance(first, Keys):  # planted: draws nothing
                    use = _Use(
                        site.label,
                        branch,
                        _derived_from(first.root, invariant),
                        frozenset(first.rows),
                    )
                    self.uses.setdefault(first.root, []).append(use)
            elif eqn.name in _SAME_KEY and len(eqn.inputs) == 1:
                outs = [first]
            elif eqn.name == "random_unwrap":  # the key's data: the same bits, other shape
                outs = [("data", first)]
            elif eqn.name == "random_wrap":  # raw keys (jax.random.PRNGKey) become typed keys
                data = first[1] if isinstance(first, tuple) and first[0] == "data" else None
                shape = scope.avals[eqn.outputs[0]].shape
                same = isinstance(data, Keys) and data.shape == tuple(shape)
                outs = [data if same else Keys.all_of(_root(first), shape)]
            elif eqn.name in _REARRANGE and isinstance(first, Keys):
                out_shape = scope.avals[eqn.outputs[0]].shape
                in_shape = aval_of(eqn.inputs[0], scope).shape
                rearranged = first.rearranged(eqn.name, eqn.params, in_shape, out_shape)
                outs = None if rearranged is None else [rearranged]
            elif eqn.subs:
                outs = self._sub_program(
                    eqn, ins, branch, invariant, [scope.avals[v] for v in eqn.outputs]
                )
            elif eqn.name in ("random_split", "random_fold_in") and isinstance(first, Keys):
                outs = self._derive(eqn, first, ins[1:], scope)
            if outs is None:
                if eqn.name.startswith(("random_", "threefry")):
                    for key in ins:
                        if isinstance(key, Keys):
                            self.plain.setdefault(key.root, []).append((key.rows, eqn.name))
                outs = [self.fresh(scope.avals[v]) for v in eqn.outputs]
            ident.update(zip(eqn.outputs, outs))

    def _derive(self, eqn, key: Keys, data, scope):
        """``random_split``/``random_fold_in`` of one key: a root named after that key."""
        parent = key.one()
        if parent is None:  # of a key array (under vmap): every key of it at once
            parent = (key.root, key.rows, key.shape)
        self.plain.setdefault(key.root, []).append((key.rows, eqn.name))
        shape = scope.avals[eqn.outputs[0]].shape
        if eqn.name == "random_split":
            return [Keys.all_of(("split", parent), shape)]
        (value,) = data
        row = _constant_index(value)
        if row is not None:  # fold_in(k, i) is split(k, n)[i] (JAX's default threefry)
            return [Keys(("split", parent), (row,), tuple(shape))]
        return [Keys.all_of(("fold", parent, _root(value)), shape)]

    def fresh(self, aval):
        """An unknown value: for a key array, keys of a new root."""
        root = self.new_identity()
        return Keys.all_of(root, aval.shape) if _is_key(aval) else root

    def _sub_program(self, eqn, ins, branch, invariant, out_avals):
        fresh = [self.fresh(a) for a in out_avals]
        if eqn.name in ("scan", "while"):
            if eqn.name == "scan":
                nc, nk = scan_counts(eqn.params)
                (body,) = eqn.subs
                consts, init, xs = ins[:nc], ins[nc : nc + nk], ins[nc + nk :]
                length = eqn.params.get("length", 2)
            else:
                n_cond, nc = eqn.params["cond_nconsts"], eqn.params["body_nconsts"]
                body = eqn.subs[1]
                consts, init, xs, length = ins[n_cond : n_cond + nc], ins[n_cond + nc :], [], 2
            carried = [
                c if _same(body.outputs[j], body.inputs[nc + j]) else self.fresh(body.avals[v])
                for j, (c, v) in enumerate(zip(init, body.inputs[nc : nc + len(init)]))
            ]
            # One key per iteration of a scanned key array: the same keys in any loop over it.
            sliced = [
                Keys.all_of(("scanned", x), body.avals[v].shape)
                if isinstance(x, Keys)
                else self.fresh(body.avals[v])
                for x, v in zip(xs, body.inputs[nc + len(init) :])
            ]
            same_every_time = [_root(c) for c in consts] + [
                _root(c) for c, i in zip(carried, init) if c is i
            ]
            looped = invariant | set(same_every_time) if length > 1 else invariant
            self.walk(body, consts + carried + sliced, branch, frozenset(looped))
            return fresh
        if eqn.name == "cond":
            for b, sub in enumerate(eqn.subs):
                self.walk(sub, ins[1:], branch + ((eqn.uid, b),), invariant)
            return fresh
        for sub in eqn.subs:
            if len(sub.inputs) == len(ins):
                self.walk(sub, ins, branch, invariant)
        return fresh


def _is_key(aval) -> bool:
    return jax.dtypes.issubdtype(aval.dtype, jax.dtypes.prng_key)


def _constant_identity(value):
    """Small constants by value (two literals ``3`` are one), others by object."""
    if isinstance(value, (int, float, np.ndarray, np.generic)) and np.size(value) <= 16:
        if not _is_key(jax.typeof(value)):
            return _freeze(np.asarray(value).tolist())
    return id(value)


def _constant_index(identity):
    """The integer of a constant scalar's identity, or None."""
    root = _root(identity)
    if root[0] == "const" and isinstance(root[1], int) and not isinstance(root[1], bool):
        return root[1]
    return None


def _root(identity):
    return identity.root if isinstance(identity, Keys) else identity


def _same_size(in_shape, out_shape) -> bool:
    return math.prod(in_shape) == math.prod(out_shape)


def _same(ref, var) -> bool:
    return type(ref) is int and ref == var


def _derived_from(root, invariant) -> bool:
    """Whether a key root is the same at every iteration: one of ``invariant``, or split or
    folded (with a constant or loop-invariant value) from one."""
    while root not in invariant:
        if root[0] == "split":
            root = root[1][0]
        elif root[0] == "fold" and (_root(root[2])[0] == "const" or _root(root[2]) in invariant):
            root = root[1][0]
        else:
            return False
    return True


def _first_clash(uses) -> tuple[_Use, _Use] | None:
    """The first two uses (in order) that draw a common key outside exclusive branches, or
    None. Linear in the keys drawn where no two uses share one (the common case: sites on
    ``split(key, n)[i]``), where comparing every pair would be quadratic in the sites."""
    drawn_by: dict = {}  # row -> indices of the uses so far that draw it
    for j, use in enumerate(uses):
        sharing = sorted({i for row in use.rows for i in drawn_by.get(row, ())})
        for i in sharing:
            if not _exclusive(uses[i], use):
                return uses[i], use
        for row in use.rows:
            drawn_by.setdefault(row, []).append(j)
    return None


def _exclusive(a: _Use, b: _Use) -> bool:
    """Whether two sites sit in different branches of one cond (never both run)."""
    branches_a = dict(a.branch)
    return any(uid in branches_a and branches_a[uid] != idx for uid, idx in b.branch)


def check_keys(scope: Scope):
    """Raises a ``SiteError`` where two sites draw from one key, or a loop's site draws from
    the same key every iteration; warns where a key feeds a site and a plain random call."""
    keys = _Keys()
    inputs = [
        Keys.all_of(("input", i), scope.avals[v].shape) if _is_key(scope.avals[v]) else ("input", i)
        for i, v in enumerate(scope.inputs)
    ]
    keys.walk(scope, inputs)
    for root, uses in keys.uses.items():
        for use in uses:
            if use.per_iteration:
                raise SiteError(
                    site_message(
                        use.label,
                        "the site is inside a loop, and its key is the same at every iteration "
                        "(closed over or carried unchanged), so every iteration draws the same "
                        "value; jax_scg would treat the draws as independent and return a "
                        "wrong gradient.",
                        "give each iteration its own key: scan over jax.random.split(key, n), "
                        "or use jax.random.fold_in(key, i) with the iteration index, or split "
                        "a carried key every iteration.",
                    )
                )
        clash = _first_clash(uses)
        if clash is not None:
            first, second = clash
            raise SiteError(
                site_message(
                    first.label,
                    f"it draws from the same key as site {second.label}, so the two "
                    "draws are dependent (the same random bits); jax_scg would treat "
                    "them as independent and return a wrong gradient.",
                    "split the key, e.g. k1, k2 = jax.random.split(key), and give each "
                    "sample call its own.",
                )
            )
        used = frozenset().union(*(u.rows for u in uses))
        plain = [name for rows, name in keys.plain.get(root, ()) if not used.isdisjoint(rows)]
        if plain:
            warnings.warn(
                site_message(
                    uses[0].label,
                    f"its key also feeds a plain jax.random call (`{plain[0]}`), so that "
                    "call's values are correlated with the site's draw.",
                    "split the key first and give the site and the other call their own keys.",
                ),
                FallbackWarning,
                stacklevel=user_stacklevel(),
            )
