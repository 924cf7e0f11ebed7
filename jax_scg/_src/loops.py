"""Rules for loops: ``lax.scan`` (and ``fori_loop`` with static bounds) and ``while_loop``.

Credit is per iteration: a body atom reaches later iterations only through the carry, where
it is the sum of its log-probabilities over the earlier iterations, ``("cum", atom)``, kept
elementwise so that a carry element that depends only on element ``i`` of a site keeps that
alignment (batched environments keep per-episode credit). Both are found as a fixed point
over the body, together with which carries may carry a derivative.

**Fission.** A scan whose carries carry no derivative (no floating-point input reaches them
except through score-function draws: the usual rollout, whose dynamics do not depend on the
parameters) is split in two. The loop keeps what the carries need: the draws and the
dynamics, with its inputs' gradients stopped. What feeds only per-iteration results (the
sites' log-probabilities, baselines, costs, magic boxes, and the parameters they are computed
from) runs after the loop, vectorised over iterations with ``vmap``, from the values the loop
stacks: the *frontier*, values computed in the loop that carry no derivative (states,
actions); anything that does carry one (a policy's logits) is recomputed after the loop from
the frontier. The running sums of log-probabilities become cumulative sums over iterations.
Derivatives of any order then need no backward pass through the loop. Accumulating cost
carries (``total + r_t``) become sums of the per-iteration surrogates. Loops that do not
qualify (a differentiable input reaches a carry: pathwise actions, parameter-dependent
dynamics; a site inside a nested loop or branch; a cost carry that is not an accumulator) are
rewritten in the loop, as is everything when ``Options.fission`` is off.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

from jax_scg._src import alignment, primitive
from jax_scg._src.control_flow import outer_log_probs
from jax_scg._src.errors import SiteError, site_message
from jax_scg._src.interpreter import (
    EMPTY,
    RULES,
    Analysis,
    Rule,
    SubInfo,
    enter,
    is_local,
    tau_dtype,
    to_parent,
)
from jax_scg._src.jaxpr import Const, Scope, scan_counts, vary_over, varying_axes_of


def _next_iteration(entries: frozenset) -> frozenset:
    """A body output's influence as the next iteration's input sees it (through the carry)."""
    return alignment.relabel(entries, lambda a: ("cum", a) if is_local(a) else a)


def _carry_fixed_point(an: Analysis, body: Scope, consts, init, xs, eqn):
    """Analyses a loop body until the carries' influence stops growing.

    ``consts``, ``init`` and ``xs`` are the body inputs' influence. Returns the body's
    analysis and the carries' influence as the body sees it: the initial values' plus,
    through the carry, the earlier iterations' (``("cum", atom)``), with alignment kept where
    every iteration keeps it. Which carries may carry a derivative, and which fallbacks reach
    them, grow to a fixed point alongside.
    """
    nc, nk = len(consts), len(init)
    diff_in = [an.is_diff(r) for r in eqn.inputs[len(eqn.inputs) - nc - nk - len(xs) :]]
    carry, fallbacks = list(init), [EMPTY] * nk
    carry_diff = diff_in[nc : nc + nk]
    while True:
        body_an = an.nested(
            body,
            list(consts) + carry + list(xs),
            [EMPTY] * nc + fallbacks + [EMPTY] * len(xs),
            diff_in[:nc] + carry_diff + diff_in[nc + nk :],
        )
        outs = body.outputs[:nk]
        grown = [alignment.union([c, _next_iteration(body_an.of(r))]) for c, r in zip(carry, outs)]
        more = [f | body_an.fallbacks_of(r) for f, r in zip(fallbacks, outs)]
        diff = [d or body_an.is_diff(r) for d, r in zip(carry_diff, outs)]
        if grown == carry and more == fallbacks and diff == carry_diff:
            return body_an, carry
        carry, fallbacks, carry_diff = grown, more, diff


def _export_loop_atoms(an: Analysis, uid: int, body_an: Analysis):
    """A loop's sites appear in the parent as totals over the iterations, ``("sub", uid, a)``."""
    for a in body_an.local_atoms:
        an.local_atoms.append(("sub", uid, a))
        an.lp_shapes[("sub", uid, a)] = body_an.lp_shapes[a]


def _site_in_sub_program(body: Scope):
    """The label of a site inside one of the body's own sub-programs, or None."""
    for eqn in body.eqns:
        for sub in eqn.subs:
            label = sub.first_site_label()
            if label is not None:
                return label
    return None


# --------------------------------------------------------------------------------------------
# while_loop


@dataclasses.dataclass
class WhileInfo(SubInfo):
    exported: list = dataclasses.field(default_factory=list)
    cum_atoms: list = dataclasses.field(default_factory=list)
    outer_atoms: list = dataclasses.field(default_factory=list)


class WhileRule(Rule):
    """while_loop: per-element credit through the carry; forward-mode derivatives only.

    A while loop has no per-iteration outputs, so every cost after it gets the total of the
    log-probabilities of the iterations (per element where the carry keeps alignment), plus
    whatever decides the trip count.
    """

    def influence(self, an, eqn, in_influence):
        cond_scope, body_scope = eqn.subs
        label = cond_scope.first_site_label()
        if label is not None:
            raise SiteError(
                site_message(
                    label,
                    "the site is inside a while_loop's cond_fun.",
                    "sample in the loop body (carry the value) or outside the loop.",
                )
            )
        p = eqn.params
        n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
        ins = [enter(s) for s in in_influence]
        body_an, carry = _carry_fixed_point(
            an, body_scope, ins[n_cond : n_cond + n_body], ins[n_cond + n_body :], [], eqn
        )
        cond_an = an.nested(cond_scope, ins[:n_cond] + carry)
        trip_count = alignment.whole(cond_an.of(cond_scope.outputs[0]))
        an.subs[eqn.uid] = WhileInfo([body_an])
        _export_loop_atoms(an, eqn.uid, body_an)
        return [to_parent(c | trip_count, eqn.uid) for c in carry]

    def differentiable(self, an, eqn):
        body_an = an.subs[eqn.uid].analyses[0]
        n_body = eqn.params["body_nconsts"]
        return [body_an.is_diff(r) for r in body_an.scope.inputs[n_body:]]

    def mark(self, an, eqn, tree_outputs):
        return None

    def demand(self, an, eqn, need):
        info = an.subs[eqn.uid]
        body_an = info.analyses[0]
        info.exported = [a for a in body_an.local_atoms if ("sub", eqn.uid, a) in need]
        supplied = body_an.demand(info.exported)
        cum = set(info.exported) | {a[1] for a in supplied if a[0] == "cum"}
        info.cum_atoms = [a for a in body_an.local_atoms if a in cum]
        info.outer_atoms = sorted({a[1] for a in supplied if a[0] == "outer"}, key=repr)
        need |= set(info.outer_atoms)

    def emit(self, ev, eqn):
        cond_scope, body_scope = eqn.subs
        label = body_scope.first_site_label()
        if label is None:
            return super().emit(ev, eqn)
        info = ev.analysis.subs[eqn.uid]
        body_an = info.analyses[0]
        p = eqn.params
        invals = [ev.read(r) for r in eqn.inputs]
        cond_consts = invals[: p["cond_nconsts"]]
        body_consts = invals[p["cond_nconsts"] : p["cond_nconsts"] + p["body_nconsts"]]
        init = invals[p["cond_nconsts"] + p["body_nconsts"] :]
        cond_an = ev.analysis.nested(cond_scope, [EMPTY] * len(cond_scope.inputs))
        outer = outer_log_probs(ev, info.outer_atoms)

        def cond_fn(carry):
            return ev.nested(cond_an, cond_consts + list(carry[0])).outputs()[0]

        def body_fn(carry):
            values, cums, baseline_total = carry
            given = dict(outer)
            given.update({("cum", a): c for a, c in zip(info.cum_atoms, cums)})
            bev = ev.nested(body_an, body_consts + list(values), given_log_probs=given)
            cums = [c + bev.lp_elems[a] for a, c in zip(info.cum_atoms, cums)]
            return bev.outputs(), cums, baseline_total + bev.baseline_total()

        zero = jnp.zeros((), tau_dtype())
        cum_init = [jnp.zeros(body_an.lp_shapes[a], tau_dtype()) for a in info.cum_atoms]
        carry_init = (init, cum_init, zero)
        carry_init = vary_over(carry_init, varying_axes_of((invals, carry_init, outer)))
        outs, cums, baseline_total = lax.while_loop(cond_fn, body_fn, carry_init)
        guard = lambda x: primitive.reverse_guard_p.bind(x, label=label)  # noqa: E731
        ev.set_outputs(eqn, [guard(x) for x in outs])
        for a, total in zip(info.cum_atoms, cums):
            ev.lp_elems[("sub", eqn.uid, a)] = guard(total)
        if body_scope.has_baselines():
            ev.baseline_terms.append(guard(baseline_total))


# --------------------------------------------------------------------------------------------
# scan


@dataclasses.dataclass
class Fission:
    """How a scan body is split: what runs in the loop, what after it, what is stacked."""

    loop_eqns: frozenset  # uids of the equations the carries need (run in the loop)
    after_eqns: frozenset  # uids of the equations run after the loop, vectorised
    frontier: tuple  # body variables computed in the loop and stacked for after it
    accumulators: tuple  # carries in the cost tree, each ``carry + increment``


@dataclasses.dataclass
class ScanInfo(SubInfo):
    tree_carries: list = dataclasses.field(default_factory=list)
    tree_ys: list = dataclasses.field(default_factory=list)
    cum_atoms: list = dataclasses.field(default_factory=list)
    outer_atoms: list = dataclasses.field(default_factory=list)
    fission: Fission | None = None
    fission_note: str = ""  # why the loop is not fissioned (for scg.graph), where it is not

    @property
    def body(self) -> Analysis:
        return self.analyses[0]

    def cost_bodies(self) -> list:
        return [self.body] if self.tree_carries or self.tree_ys else []


class ScanRule(Rule):
    """lax.scan (and fori_loop with static bounds): per-iteration credit.

    A body atom reaches later iterations only through the carry; its sum over earlier
    iterations is carried as ``("cum", atom)``. Stacked outputs and carries that are in the
    cost tree get a surrogate per iteration, so each iteration's cost is multiplied only by
    the log-probabilities of the site instances that reach it (reward-to-go).
    """

    def influence(self, an, eqn, in_influence):
        nc, nk = scan_counts(eqn.params)
        body = eqn.subs[0]
        consts = [enter(s) for s in in_influence[:nc]]
        init = [enter(s) for s in in_influence[nc : nc + nk]]
        xs = [enter(s, stacked=True) for s in in_influence[nc + nk :]]
        body_an, _ = _carry_fixed_point(an, body, consts, init, xs, eqn)
        an.subs[eqn.uid] = ScanInfo([body_an])
        _export_loop_atoms(an, eqn.uid, body_an)
        return [
            to_parent(body_an.of(r), eqn.uid, stacked=i >= nk) for i, r in enumerate(body.outputs)
        ]

    def differentiable(self, an, eqn):
        nc, nk = scan_counts(eqn.params)
        body_an = an.subs[eqn.uid].body
        body = body_an.scope
        carries = [body_an.is_diff(body.inputs[nc + j]) for j in range(nk)]
        return carries + [body_an.is_diff(r) for r in body.outputs[nk:]]

    def mark(self, an, eqn, tree_outputs):
        nc, nk = scan_counts(eqn.params)
        info: ScanInfo = an.subs[eqn.uid]
        body = info.body.scope
        carries = {i for i in tree_outputs if i < nk}
        ys = sorted(i - nk for i in tree_outputs if i >= nk)
        while True:
            roots = sorted(carries) + [nk + j for j in ys]
            provided = {body.inputs[nc + j] for j in carries}
            info.body.mark_costs(roots, provided)
            reached = {j for j in range(nk) if body.inputs[nc + j] in info.body.tree}
            if reached <= carries:
                break
            carries |= reached
        info.tree_carries, info.tree_ys = sorted(carries), ys
        an.tree.update(eqn.outputs[j] for j in carries)
        return tuple(nc + j for j in carries)

    def demand(self, an, eqn, need):
        info: ScanInfo = an.subs[eqn.uid]
        wanted = [a for a in info.body.local_atoms if ("sub", eqn.uid, a) in need]
        supplied = info.body.demand(wanted)
        cum = set(wanted) | {a[1] for a in supplied if a[0] == "cum"}
        info.cum_atoms = [a for a in info.body.local_atoms if a in cum]
        info.outer_atoms = sorted({a[1] for a in supplied if a[0] == "outer"}, key=repr)
        need |= set(info.outer_atoms)
        info.fission = plan_fission(eqn, info) if an.options.fission else None
        if not an.options.fission:
            info.fission_note = "fission=False"

    def emit(self, ev, eqn):
        info: ScanInfo = ev.analysis.subs[eqn.uid]
        body = info.body.scope
        rewrite = (
            body.first_site_label() is not None
            or info.tree_carries
            or info.tree_ys
            or info.outer_atoms
        )
        if not rewrite:
            return super().emit(ev, eqn)
        if info.fission is not None:
            return _emit_fissioned(ev, eqn, info, info.fission)
        p = eqn.params
        nc, nk = scan_counts(p)
        invals = [ev.read(r) for r in eqn.inputs]
        consts, init, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]
        s_init = [ev.surrogate(eqn.inputs[nc + j]) for j in info.tree_carries]
        cum_init = [jnp.zeros(info.body.lp_shapes[a], tau_dtype()) for a in info.cum_atoms]
        outer = outer_log_probs(ev, info.outer_atoms)

        def body_fn(carry, x):
            values, s_values, cums, baseline_total = carry
            given = dict(outer)
            given.update({("cum", a): c for a, c in zip(info.cum_atoms, cums)})
            provided = {body.inputs[nc + j]: s for j, s in zip(info.tree_carries, s_values)}
            bev = ev.nested(
                info.body,
                consts + list(values) + list(x),
                provided_surrogates=provided,
                given_log_probs=given,
            )
            outs = bev.outputs()
            new_s = [bev.surrogate(body.outputs[j]) for j in info.tree_carries]
            s_ys = [bev.surrogate(body.outputs[nk + j]) for j in info.tree_ys]
            new_cums = [c + bev.lp_elems[a] for a, c in zip(info.cum_atoms, cums)]
            baseline_total = baseline_total + bev.baseline_total()
            return (outs[:nk], new_s, new_cums, baseline_total), (outs[nk:], s_ys)

        carry_init = (init, s_init, cum_init, jnp.zeros((), tau_dtype()))
        carry_init = vary_over(carry_init, varying_axes_of((invals, carry_init, outer)))
        (final, s_final, totals, baseline_total), (ys, s_ys) = lax.scan(
            body_fn,
            carry_init,
            xs,
            length=p["length"],
            reverse=p["reverse"],
            unroll=p["unroll"],
        )
        ev.set_outputs(eqn, list(final) + list(ys))
        ev.surrogates.update((eqn.outputs[j], s) for j, s in zip(info.tree_carries, s_final))
        ev.surrogates.update((eqn.outputs[nk + j], s) for j, s in zip(info.tree_ys, s_ys))
        for a, total in zip(info.cum_atoms, totals):
            ev.lp_elems[("sub", eqn.uid, a)] = total
        if body.has_baselines():
            ev.baseline_terms.append(baseline_total)


# --------------------------------------------------------------------------------------------
# Fission


def plan_fission(eqn, info: ScanInfo) -> Fission | None:
    """How to split the scan ``eqn``'s body, or None where fission does not apply."""
    body_an = info.body
    body = body_an.scope
    nc, nk = scan_counts(eqn.params)
    scored = [e for e in body.eqns if e.is_site and _wants_log_probs(body_an, e)]
    if not (scored or info.tree_ys or info.tree_carries or info.outer_atoms):
        info.fission_note = "nothing to move after it"
        return None
    if _site_in_sub_program(body) is not None:
        info.fission_note = "a site inside a loop, branch or call in its body"
        return None
    producer = {o: e for e in body.eqns for o in e.outputs}
    carry_inputs = body.inputs[nc : nc + nk]
    cost_carries = {carry_inputs[j] for j in info.tree_carries}
    paths = {j: _accumulation_path(body, nc, j, cost_carries, producer) for j in info.tree_carries}
    if any(path is None for path in paths.values()):
        info.fission_note = "a cost carried in a form other than a running sum"
        return None
    looped = [j for j in range(nk) if j not in paths]
    if any(body_an.is_diff(carry_inputs[j]) for j in looped):
        # a derivative would flow through the carry: keep the loop as it is
        info.fission_note = (
            "a derivative flows through its carry (pathwise values or parameter-dependent dynamics)"
        )
        return None
    loop_eqns = _backward_slice([body.outputs[j] for j in looped], producer)
    accumulated = {carry_inputs[j] for j in paths}
    recomputable = _Recomputable(body, loop_eqns, producer, accumulated)
    after, frontier, seen = set(), [], set()
    roots = list(body.outputs[nk:]) + [body.outputs[j] for j in paths]
    for site in scored:
        roots.append(site.outputs[0])
        if site.uid in loop_eqns:  # drawn in the loop; its log-probability is taken after it
            after.add(site.uid)
            _, leaves, baseline = site.params["site"].split(list(site.inputs))
            roots += [*leaves, *([] if baseline is None else [baseline])]
    while roots:
        v = roots.pop()
        if isinstance(v, Const) or v in seen:
            continue
        seen.add(v)
        e = producer.get(v)
        if e is None:
            if v in carry_inputs and v not in accumulated:
                frontier.append(v)  # the carry at the start of the iteration: stacked
        elif e.uid in loop_eqns and not body_an.is_diff(v) and (e.is_site or not recomputable(v)):
            frontier.append(v)  # computed in the loop, carries no derivative: stacked
        elif e.uid not in after:
            after.add(e.uid)  # recomputed (or only computed) after the loop
            roots += list(e.inputs)
    return Fission(frozenset(loop_eqns), frozenset(after), tuple(frontier), tuple(sorted(paths)))


# Operations cheap enough to repeat after the loop rather than stack their results.
_CHEAP = alignment.ELEMENTWISE | {
    "broadcast_in_dim",
    "reshape",
    "squeeze",
    "expand_dims",
    "transpose",
    "slice",
    "concatenate",
    "pad",
    "rev",
    "iota",
    "stack",
}


class _Recomputable:
    """Whether a value computed in the loop is better recomputed after it than stacked.

    True where it follows by cheap operations from what is stacked or available anyway:
    the carries at the start of the iteration, the sites' values (stacked for their scores),
    the loop's constants and scanned inputs. The frontier is then the states and actions,
    as a hand-written rollout stacks them, not every intermediate of the step.
    """

    def __init__(self, body: Scope, loop_eqns, producer, accumulated):
        self.body, self.loop_eqns, self.producer = body, loop_eqns, producer
        self.accumulated = accumulated
        self.known: dict = {}

    def __call__(self, v) -> bool:
        if isinstance(v, Const):
            return True
        if v not in self.known:
            e = self.producer.get(v)
            if e is None:
                self.known[v] = v not in self.accumulated
            elif e.is_site:
                self.known[v] = True
            else:
                self.known[v] = False  # while deciding (the body is acyclic)
                cheap = e.name in _CHEAP and not e.subs
                self.known[v] = cheap and all(self(r) for r in e.inputs)
        return self.known[v]


def _wants_log_probs(body_an: Analysis, eqn) -> bool:
    site = eqn.params["site"]
    dtype = body_an.scope.avals[eqn.outputs[0]].dtype
    if site.resolved_estimator(dtype) != primitive.SCORE_FUNCTION:
        return False
    injected = site.name is not None and site.name in body_an.options.baselines
    return ("site", eqn.uid) in body_an.needed or site.has_baseline or injected


def _backward_slice(refs, producer) -> set:
    """The uids of the equations that the variables ``refs`` depend on (a site's draw depends
    on its key and parameters, not on its baseline)."""
    uids, stack, seen = set(), list(refs), set()
    while stack:
        v = stack.pop()
        if isinstance(v, Const) or v in seen or v not in producer:
            continue
        seen.add(v)
        e = producer[v]
        uids.add(e.uid)
        stack += _draw_inputs(e) if e.is_site else list(e.inputs)
    return uids


def _draw_inputs(eqn) -> list:
    """The operands a site's draw reads: all but its baseline."""
    site = eqn.params["site"]
    if not site.has_baseline:
        return list(eqn.inputs)
    baseline_position = 1 + site.treedef.num_leaves
    return [r for i, r in enumerate(eqn.inputs) if i != baseline_position]


def _reaches(ref, targets, producer) -> bool:
    """Whether the variable ``ref`` depends on any of ``targets``."""
    stack, seen = [ref], set()
    while stack:
        v = stack.pop()
        if isinstance(v, Const) or v in seen:
            continue
        if v in targets:
            return True
        seen.add(v)
        if v in producer:
            stack += list(producer[v].inputs)
    return False


def _accumulation_path(body: Scope, nc: int, j: int, cost_carries, producer):
    """The uids of the additions that make carry ``j`` ``carry + increment``, else None.

    The carry must enter its new value once, through ``add``/``sub`` (as the minuend), the
    increment must not depend on any cost carry, and nothing else may read the carry or the
    partial sums: then the carry's value and surrogate after the loop are its initial ones
    plus the sums over iterations of the increment's.
    """
    target = body.inputs[nc + j]
    path: set = set()

    def walk(v):  # how often the carry enters v through additions; None if not that form
        if isinstance(v, Const):
            return 0
        if v == target:
            return 1
        e = producer.get(v)
        if e is None:
            return None if v in cost_carries else 0
        if _is_identity(body, e):
            count = walk(e.inputs[0])
            if count:
                path.add(e.uid)
            return count
        if e.name in ("add", "add_any", "sub") and len(e.inputs) == 2:
            first, second = walk(e.inputs[0]), walk(e.inputs[1])
            if first is None or second is None or (e.name == "sub" and second):
                return None
            if first or second:
                path.add(e.uid)
            return first + second
        return None if _reaches(v, cost_carries, producer) else 0

    if walk(body.outputs[j]) != 1:
        return None
    partial = {o for e in body.eqns if e.uid in path for o in e.outputs} | {target}
    for e in body.eqns:
        if e.uid not in path and any(type(r) is int and r in partial for r in e.inputs):
            return None  # the running total is read by something else
    if any(type(o) is int and o in partial for k, o in enumerate(body.outputs) if k != j):
        return None
    return path


def _is_identity(body: Scope, eqn) -> bool:
    """A copy, or a conversion that keeps the dtype (only the weak type changes)."""
    if eqn.name in ("copy", "copy_p"):
        return True
    if eqn.name != "convert_element_type" or isinstance(eqn.inputs[0], Const):
        return False
    return body.avals[eqn.inputs[0]].dtype == eqn.params["new_dtype"]


def _stop_gradients(values):
    return [lax.stop_gradient(v) if jnp.issubdtype(v.dtype, jnp.inexact) else v for v in values]


def _emit_fissioned(ev, eqn, info: ScanInfo, plan: Fission):
    """The loop runs the carries' part; the rest runs after it, vectorised over iterations."""
    p = eqn.params
    nc, nk = scan_counts(p)
    body_an = info.body
    body = body_an.scope
    invals = [ev.read(r) for r in eqn.inputs]
    consts, init, xs = invals[:nc], invals[nc : nc + nk], invals[nc + nk :]
    looped = [j for j in range(nk) if j not in plan.accumulators]
    carry_inputs = body.inputs[nc : nc + nk]

    def loop_body(carry, x):
        values = list(init)  # accumulators are not run in the loop (and not read there)
        for j, c in zip(looped, carry):
            values[j] = c
        lev = ev.nested(
            body_an,
            _stop_gradients(consts) + values + list(x),
            eqns=plan.loop_eqns,
            costs=False,
            log_probs=False,
        )
        return [lev.read(body.outputs[j]) for j in looped], [lev.read(v) for v in plan.frontier]

    carry_init = _stop_gradients([init[j] for j in looped])
    carry_init = vary_over(carry_init, varying_axes_of(invals))
    final, stacked = lax.scan(
        loop_body,
        carry_init,
        _stop_gradients(xs),
        length=p["length"],
        reverse=p["reverse"],
        unroll=p["unroll"],
    )
    outer = outer_log_probs(ev, info.outer_atoms)
    zero_carries = [jnp.zeros(body.avals[v].shape, body.avals[v].dtype) for v in carry_inputs]
    accumulating = {carry_inputs[j]: jnp.zeros((), tau_dtype()) for j in plan.accumulators}

    def after(frontier, x, given=None, running_sums=()):
        # Carries enter as zeros: only the accumulators' are read (their increments are
        # summed over iterations below); the others come from the frontier.
        return ev.nested(
            body_an,
            consts + zero_carries + list(x),
            values=dict(zip(plan.frontier, frontier)),
            given_log_probs={**outer, **(given or {})},
            provided_surrogates=accumulating,
            eqns=plan.after_eqns,
            costs=given is not None,
            running_sums=running_sums,
        )

    local = list(info.cum_atoms)  # atoms whose sums over iterations are needed
    iterations = jnp.arange(p["length"])  # a batched operand even with no frontier or xs
    per_iteration = []
    if local:
        lps = lambda frontier, x, _: [after(frontier, x).lp_elems[a] for a in local]  # noqa: E731
        per_iteration = jax.vmap(lps)(stacked, xs, iterations)
    # Sums over the earlier iterations (in the loop's order) of each atom, and of the groups
    # of atoms whose sums through or before this iteration the boxes use together.
    stacked_lps = dict(zip(local, per_iteration))
    earlier = [cumulative_sum(lp, p["reverse"]) - lp for lp in per_iteration]
    groups = _running_sum_groups(body_an, local, stacked_lps)
    group_sums = [_group_running_sum(g, stacked_lps, p["reverse"]) for g in groups]

    def costs(frontier, x, lps, cums, sums):
        given = {a: lp for a, lp in zip(local, lps)}
        given.update({("cum", a): c for a, c in zip(local, cums)})
        given.update({g.name: total for g, total in zip(groups, sums)})
        aev = after(frontier, x, given, [(g.entries, g.entry) for g in groups])
        ys = [aev.read(r) for r in body.outputs[nk:]]
        s_ys = [aev.surrogate(body.outputs[nk + j]) for j in info.tree_ys]
        increments = [aev.read(body.outputs[j]) for j in plan.accumulators]
        s_increments = [aev.surrogate(body.outputs[j]) for j in plan.accumulators]
        return ys, s_ys, increments, s_increments, aev.baseline_total()

    ys, s_ys, increments, s_increments, baselines = jax.vmap(costs, axis_size=p["length"])(
        stacked, xs, per_iteration, earlier, group_sums
    )
    carries = list(init)
    for j, c in zip(looped, final):
        carries[j] = c
    for j, increment, s_increment in zip(plan.accumulators, increments, s_increments):
        carries[j] = init[j] + jnp.sum(increment, axis=0)
        s_init = ev.surrogate(eqn.inputs[nc + j])
        ev.surrogates[eqn.outputs[j]] = s_init + jnp.sum(s_increment, axis=0)
    ev.set_outputs(eqn, carries + list(ys))
    ev.surrogates.update((eqn.outputs[nk + j], s) for j, s in zip(info.tree_ys, s_ys))
    for a, lp in zip(local, per_iteration):
        ev.lp_elems[("sub", eqn.uid, a)] = jnp.sum(lp, axis=0)
    if body.has_baselines():
        ev.baseline_terms.append(jnp.sum(baselines))


@dataclasses.dataclass(frozen=True)
class _Group:
    """Atoms whose running sum boxes use together, with one alignment layout (or plain)."""

    atoms: tuple
    axes: tuple | None  # the layout of aligned entries; None: plain atoms (totals)
    through: bool  # through this iteration (the atoms and their earlier sums) or before it

    @property
    def name(self):
        return ("sum", self.atoms, self.axes, self.through)

    def _entry(self, atom):
        return atom if self.axes is None else (alignment.ELEM, atom, self.axes)

    @property
    def entries(self) -> frozenset:
        own = [self._entry(a) for a in self.atoms] if self.through else []
        return frozenset(own + [self._entry(("cum", a)) for a in self.atoms])

    @property
    def entry(self):
        return self._entry(self.name)


def _running_sum_groups(body_an: Analysis, local, stacked_lps) -> list:
    """The groups of local atoms whose sums the body's boxes use together (two or more atoms,
    or one atom through its iteration)."""
    body = body_an.scope
    boxes = [body_an.of(leaf) for leaf in body_an.leaves()]
    boxes += [body_an.subs[e.uid] for e in body.eqns if e.is_site and e.uid in body_an.subs]
    groups = set()
    for box in boxes:
        by_layout: dict = {}
        for entry in box:
            axes = entry[2] if entry[0] == alignment.ELEM else None
            atom = alignment.base(entry)
            if atom[0] == "cum" and atom[1] in stacked_lps:
                by_layout.setdefault(axes, set()).add(atom[1])
        for axes, atoms in by_layout.items():
            shapes = {stacked_lps[a].shape for a in atoms}
            if axes is not None and len(shapes) > 1:
                continue  # elementwise sums need one shape
            entry = lambda a, axes=axes: a if axes is None else (alignment.ELEM, a, axes)  # noqa: E731
            through = all(entry(a) in box for a in atoms)
            if len(atoms) > 1 or through:
                groups.add(_Group(tuple(sorted(atoms, key=repr)), axes, through))
    return sorted(groups, key=lambda g: (-len(g.atoms), repr(g.name)))


def _group_running_sum(group: _Group, stacked_lps, reverse: bool):
    """The group's per-iteration sum through (or before) each iteration, in the loop's order."""
    lps = [stacked_lps[a] for a in group.atoms]
    if group.axes is None:  # plain atoms: totals over their elements
        lps = [jnp.sum(lp, axis=tuple(range(1, lp.ndim))) for lp in lps]
    total = sum(lps[1:], lps[0])
    through = cumulative_sum(total, reverse)
    return through if group.through else through - total


def cumulative_sum(x, reverse: bool = False):
    """``lax.cumsum`` along axis 0, in blocks of about ``sqrt(n)``: sums within blocks, then
    over block totals. The same linear map with ``O(n^1.5)`` additions and no loop; XLA's CPU
    backend lowers ``cumsum`` to an ``O(n^2)`` windowed sum (3-7 times slower here)."""
    n = x.shape[0]
    block = max(4, int(round(n**0.5)))
    if n <= block:
        return lax.cumsum(x, axis=0, reverse=reverse)
    if reverse:
        return jnp.flip(cumulative_sum(jnp.flip(x, 0)), 0)
    blocks = -(-n // block)
    padded = jnp.pad(x, [(0, blocks * block - n)] + [(0, 0)] * (x.ndim - 1))
    within = lax.cumsum(padded.reshape((blocks, block) + x.shape[1:]), axis=1)
    totals = within[:, -1]
    before = lax.cumsum(totals, axis=0) - totals
    return (within + before[:, None]).reshape((blocks * block,) + x.shape[1:])[:n]


RULES.update({"scan": ScanRule(), "while": WhileRule()})
