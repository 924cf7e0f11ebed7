"""A small program representation read from JAX's jaxprs; the only module that reads jaxprs.

``Scope`` is a straight-line program (one jaxpr); ``Eqn`` is one operation in it. Nested
``jit``/``closed_call`` bodies are inlined with fresh variables, so that the same jitted function
called twice gives two distinct sets of sites, identified by their position in the program.
Control flow keeps its sub-programs in ``Eqn.subs``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.extend import core as jex_core
from jax.extend import source_info_util

from jax_scg._src.primitive import sample_p

# Call-like primitives whose bodies are inlined (their names differ between JAX versions).
INLINED_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call"})


class Const(NamedTuple):
    """A literal or a constant the traced function closed over."""

    value: Any


Ref = Any  # an ``int`` variable id, or a ``Const``


@dataclasses.dataclass(eq=False)
class Eqn:
    uid: int
    primitive: Any
    params: dict
    inputs: tuple
    outputs: tuple
    subs: tuple = ()
    source_info: tuple = ()  # its own source info, then those of the calls inlined around it

    @property
    def name(self) -> str:
        return self.primitive.name

    @property
    def is_site(self) -> bool:
        return self.primitive is sample_p

    @property
    def source(self) -> str:
        """The user's source line that made this operation (``file:line (function)``)."""
        for info in self.source_info:  # an operation inside jnp's jitted functions has only
            try:  # JAX's frames: the call to the jitted function names the user's line
                summary = source_info_util.summarize(info)
            except Exception:  # noqa: BLE001 - a description for messages only
                summary = ""
            if summary:
                return summary
        return ""


@dataclasses.dataclass(eq=False)
class Scope:
    inputs: tuple
    outputs: tuple
    eqns: list
    avals: dict  # variable id -> abstract value (shape, dtype)

    def sites(self):
        """Every site equation in this scope and its sub-programs, in program order."""
        for eqn in self.eqns:
            if eqn.is_site:
                yield eqn
            for sub in eqn.subs:
                yield from sub.sites()

    def has_baselines(self) -> bool:
        return any(eqn.params["site"].has_baseline for eqn in self.sites())

    def first_site_label(self) -> str | None:
        return next((eqn.params["site"].label for eqn in self.sites()), None)


_ids = itertools.count()


def aval_of(ref: Ref, scope: Scope):
    return jax.typeof(ref.value) if isinstance(ref, Const) else scope.avals[ref]


def _sub_jaxprs(eqn) -> tuple:
    """The (jaxpr, consts) pairs of the control flow we understand, in a fixed order."""
    p = eqn.params
    name = eqn.primitive.name
    if name == "scan":
        closed = [p["jaxpr"]]
    elif name == "cond":
        closed = list(p["branches"])
    elif name == "while":
        closed = [p["cond_jaxpr"], p["body_jaxpr"]]
    elif name in ("checkpoint", "remat2", "remat"):
        return ((p["jaxpr"], ()),)
    else:
        closed = list(jex_core.jaxprs_in_params(p))
        return tuple(
            (j, ()) if isinstance(j, jex_core.Jaxpr) else (j.jaxpr, j.consts) for j in closed
        )
    return tuple((c.jaxpr, c.consts) for c in closed)


def _emit_into(jaxpr, consts, input_refs, eqns: list, avals: dict, calls: tuple = ()) -> list:
    """Appends ``jaxpr``'s equations to ``eqns`` with fresh ids; returns its output refs."""
    env: dict = {}
    for var, value in zip(jaxpr.constvars, consts):
        env[var] = Const(value)
    for var, ref in zip(jaxpr.invars, input_refs):
        env[var] = ref

    def read(atom):
        return Const(atom.val) if isinstance(atom, jex_core.Literal) else env[atom]

    for eqn in jaxpr.eqns:
        inputs = [read(a) for a in eqn.invars]
        if eqn.primitive.name in INLINED_CALLS:
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner_jaxpr, inner_consts = (
                (inner.jaxpr, inner.consts) if hasattr(inner, "consts") else (inner, ())
            )
            outs = _emit_into(
                inner_jaxpr, inner_consts, inputs, eqns, avals, (eqn.source_info, *calls)
            )
            for var, ref in zip(eqn.outvars, outs):
                env[var] = ref
            continue
        outputs = []
        for var in eqn.outvars:
            uid = next(_ids)
            avals[uid] = var.aval
            env[var] = uid
            outputs.append(uid)
        subs = tuple(scope_from_jaxpr(j, c) for j, c in _sub_jaxprs(eqn))
        eqns.append(
            Eqn(
                next(_ids),
                eqn.primitive,
                dict(eqn.params),
                tuple(inputs),
                tuple(outputs),
                subs,
                (eqn.source_info, *calls),
            )
        )
    return [read(a) for a in jaxpr.outvars]


def scope_from_jaxpr(jaxpr, consts=()) -> Scope:
    """Reads an (open) jaxpr and its constants into a ``Scope``."""
    avals: dict = {}
    inputs = []
    for var in jaxpr.invars:
        uid = next(_ids)
        avals[uid] = var.aval
        inputs.append(uid)
    eqns: list = []
    outputs = _emit_into(jaxpr, consts, inputs, eqns, avals)
    return Scope(tuple(inputs), tuple(outputs), eqns, avals)


def scan_counts(params: dict) -> tuple:
    """``(num_consts, num_carry)`` of a scan equation, across JAX versions."""
    if "num_consts" in params:  # JAX <= 0.10
        return params["num_consts"], params["num_carry"]
    consts, carry, _ = params["ft_in"].unpack()  # JAX 0.11: a flat tree of the operands
    return len(list(consts)), len(list(carry))


def bind(eqn: Eqn, invals) -> list:
    """Evaluates an equation unchanged on new inputs (as ``jax.core.eval_jaxpr`` does)."""
    bind_params = eqn.primitive.get_bind_params(eqn.params)
    subfuns = ()
    if isinstance(bind_params, tuple):  # JAX < 0.7 returned (subfuns, params)
        subfuns, bind_params = bind_params
    if eqn.name == "pvary":  # shard_map's invariant -> varying cast, inserted at tracing
        return [vary_over(x, frozenset(eqn.params["axes"])) for x in invals]
    if not eqn.subs:
        invals = _same_varying_axes(invals)
        wrapped = _cached_call(eqn.primitive, bind_params) if _inexact_in(invals) else None
        if wrapped is not None:
            out = wrapped(*invals)
            return list(out) if eqn.primitive.multiple_results else [out]
    out = eqn.primitive.bind(*subfuns, *invals, **bind_params)
    return list(out) if eqn.primitive.multiple_results else [out]


def _inexact_in(values) -> bool:
    """Whether a floating-point value is among ``values`` (only those carry derivatives)."""
    return any(jax.dtypes.issubdtype(jax.typeof(v).dtype, np.inexact) for v in values)


def _cached_call(primitive, params):
    """The primitive with these parameters as a function under ``jax.jit(inline=True)``,
    one per (primitive, parameters), or None where the parameters are unhashable.

    Binding through a cached jitted function is what ``jax.numpy`` does: the jaxpr stays the
    same (the call is inlined when traced), but ``jax.grad`` linearises each distinct
    operation once and reuses it, where a bare ``bind`` builds a fresh linearisation per
    equation. A deep program of repeated layers re-emits several times faster this way.
    """
    try:
        key = (primitive, tuple(sorted(params.items())))
        hash(key)
    except TypeError:
        return None
    return _jitted_primitive(key)


@functools.lru_cache(maxsize=4096)
def _jitted_primitive(key):
    primitive, items = key
    params = dict(items)

    def call(*args):
        return primitive.bind(*args, **params)

    call.__name__ = call.__qualname__ = primitive.name
    return jax.jit(call, inline=_INLINED_WHEN_TRACED)


# ``jax.jit(inline=True)`` inlined the call into the jaxpr being traced up to JAX 0.10; from
# JAX 0.11 it means "inline when lowering" (``jax.Inline.JAX_LATE``) and the traced-time
# inlining that jax.numpy uses is ``jax.Inline.JAX_EARLY``.
_INLINED_WHEN_TRACED = jax.Inline.JAX_EARLY if hasattr(jax, "Inline") else True


def _varying_axes(aval) -> frozenset:
    """The manual mesh axes a value varies over (JAX 0.10/0.11: ``aval.mat.varying``)."""
    mat = getattr(aval, "mat", None)
    return getattr(mat, "varying", None) or getattr(aval, "vma", None) or frozenset()


def _same_varying_axes(values) -> list:
    """Inside ``jax.shard_map``, marks every input varying over the union of their axes.

    The rewrite computes some values differently from the traced program (e.g. a draw from
    a key that varies over a mesh axis), so an equation may meet inputs that vary over
    different manual axes; JAX's own tracing would have inserted the same ``pcast``.
    """
    axes = [_varying_axes(jax.typeof(x)) for x in values]
    union = frozenset().union(*axes)
    if not union or all(a == union for a in axes):
        return list(values)
    return [
        x if a == union else jax.lax.pcast(x, tuple(sorted(union - a)), to="varying")
        for x, a in zip(values, axes)
    ]


def varying_axes_of(tree) -> frozenset:
    """The union of the manual mesh axes that the leaves of ``tree`` vary over."""
    return frozenset().union(
        *(_varying_axes(jax.typeof(x)) for x in jax.tree_util.tree_leaves(tree))
    )


def vary_over(tree, axes: frozenset):
    """``tree`` with every leaf marked varying over ``axes`` (loop carries, branch outputs).

    Inside ``jax.shard_map`` a loop's carry must keep one type; values that the rewrite adds
    (log-probability sums, surrogates) start invariant and become varying in the body.
    """
    if not axes:
        return tree

    def cast(x):
        missing = tuple(sorted(axes - _varying_axes(jax.typeof(x))))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree_util.tree_map(cast, tree)


def collective_axes(eqn: Eqn) -> tuple:
    """The mesh axis names a collective (``psum``, ``ppermute``, ...) communicates over."""
    axes = eqn.params.get("axes", eqn.params.get("axis_name", ()))
    axes = axes if isinstance(axes, (tuple, list)) else (axes,)
    # Integers (Python's or NumPy's) are positional array axes (reduce_max, argmax), not names.
    return tuple(a for a in axes if not isinstance(a, (int, np.integer)))


def varying_axes(aval) -> frozenset:
    """The manual mesh axes a value of type ``aval`` varies over (empty outside shard_map)."""
    return frozenset(_varying_axes(aval))


def sum_over_varying(x, axes):
    """``psum`` of ``x`` over those of ``axes`` that it varies over: a value replicated along
    an axis is the same on every device there, so it is taken once, not once per device."""
    summed = tuple(a for a in axes if a in _varying_axes(jax.typeof(x)))
    return jax.lax.psum(x, summed) if summed else x


# Tracers of forward- and reverse-mode differentiation (``jax.jvp``/``jacfwd``; ``grad``,
# ``vjp``, ``jacrev`` and ``linearize``, which trace with one of these depending on JAX's
# ``use_direct_linearize``), and tracers that wrap another value in ``.val`` (``vmap``'s,
# ``shard_map``'s), which are looked through.
_DIFFERENTIATING_TRACERS = frozenset({"JVPTracer", "LinearizeTracer"})


def is_differentiated(tree) -> bool:
    """Whether a leaf of ``tree`` is being differentiated by an enclosing ``jax.jvp``,
    ``grad``, ``jacfwd``, ... (through any ``vmap`` or ``shard_map`` around it).

    What a ``jit`` or ``scan`` being traced will later do with its values cannot be seen: a
    value traced into a jaxpr counts as not differentiated.
    """
    for leaf in jax.tree_util.tree_leaves(tree):
        x = leaf
        while isinstance(x, jax.core.Tracer):
            if type(x).__name__ in _DIFFERENTIATING_TRACERS:
                return True
            x = getattr(x, "val", None)
    return False
