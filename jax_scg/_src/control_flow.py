"""Rules for sub-programs that run once per call: ``cond``/``switch``, ``checkpoint`` and
``custom_jvp``/``custom_vjp`` functions (loops are in ``loops.py``).

A branch's sites are atoms ``("sub", uid, (branch, atom))`` of the enclosing scope; their
log-probabilities are the taken branch's (zero for the others), elementwise, so alignment
survives a ``cond`` inside a loop body.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from jax_scg._src import alignment
from jax_scg._src.interpreter import (
    RULES,
    Evaluation,
    Rule,
    SubInfo,
    enter,
    tau_dtype,
    to_parent,
)
from jax_scg._src.jaxpr import vary_over, varying_axes_of


@dataclasses.dataclass
class BodyInfo(SubInfo):
    exported: list = dataclasses.field(default_factory=list)  # (branch index, inner atom)
    outer_atoms: list = dataclasses.field(default_factory=list)


def outer_log_probs(ev: Evaluation, outer_atoms) -> dict:
    """The parent's log-probabilities that a body needs, under the body's names for them."""
    return {("outer", a): ev.lp_elems[a] for a in outer_atoms if a in ev.lp_elems}


class _SubprogramRule(Rule):
    """Shared logic for control flow whose sub-programs run once per call (cond, checkpoint)."""

    def operands(self, eqn, seq):
        return seq

    def influence(self, an, eqn, in_influence):
        ops = [enter(s) for s in self.operands(eqn, in_influence)]
        diff = [an.is_diff(r) for r in self.operands(eqn, eqn.inputs)]
        analyses = [an.nested(sub, ops, input_diff=diff) for sub in eqn.subs]
        an.subs[eqn.uid] = BodyInfo(analyses)
        control = alignment.union(in_influence[: len(in_influence) - len(ops)])
        for b, body_an in enumerate(analyses):
            for a in body_an.local_atoms:
                an.local_atoms.append(("sub", eqn.uid, (b, a)))
                an.lp_shapes[("sub", eqn.uid, (b, a))] = body_an.lp_shapes[a]
        return [
            alignment.whole(control)
            | alignment.union(
                to_parent(a.of(a.scope.outputs[i]), eqn.uid, b) for b, a in enumerate(analyses)
            )
            for i in range(len(eqn.outputs))
        ]

    def differentiable(self, an, eqn):
        analyses = an.subs[eqn.uid].analyses
        return [
            any(a.is_diff(a.scope.outputs[i]) for a in analyses) for i in range(len(eqn.outputs))
        ]

    def mark(self, an, eqn, tree_outputs):
        return None

    def demand(self, an, eqn, need):
        info = an.subs[eqn.uid]
        info.exported = []
        outer = set()
        for b, body_an in enumerate(info.analyses):
            wanted = [a for a in body_an.local_atoms if ("sub", eqn.uid, (b, a)) in need]
            info.exported += [(b, a) for a in wanted]
            outer |= {a[1] for a in body_an.demand(wanted) if a[0] == "outer"}
        info.outer_atoms = sorted(outer, key=repr)
        need |= outer

    def needs_rewrite(self, eqn):
        return any(sub.first_site_label() is not None for sub in eqn.subs)

    def run_branch(self, ev, eqn, b, operands):
        """Evaluates branch ``b``; returns its outputs and its exported log-probabilities."""
        info = ev.analysis.subs[eqn.uid]
        given = outer_log_probs(ev, info.outer_atoms)
        bev = ev.nested(info.analyses[b], operands, given_log_probs=given)
        lps = [
            bev.lp_elems[a] if bb == b else jnp.zeros(info.analyses[bb].lp_shapes[a], tau_dtype())
            for bb, a in info.exported
        ]
        return bev.outputs(), lps, bev.baseline_total()

    def record_lps(self, ev, eqn, lps, baseline_total):
        for (b, a), lp in zip(ev.analysis.subs[eqn.uid].exported, lps):
            ev.lp_elems[("sub", eqn.uid, (b, a))] = lp
        if any(sub.has_baselines() for sub in eqn.subs):
            ev.baseline_terms.append(baseline_total)


class CondRule(_SubprogramRule):
    def operands(self, eqn, seq):
        return seq[1:]

    def emit(self, ev, eqn):
        if not self.needs_rewrite(eqn):
            return super().emit(ev, eqn)
        index, *ops = [ev.read(r) for r in eqn.inputs]
        axes = varying_axes_of((index, ops))
        branches = [
            functools.partial(
                lambda b, *xs: vary_over(self.run_branch(ev, eqn, b, list(xs)), axes), b
            )
            for b in range(len(eqn.subs))
        ]
        outs, lps, baseline_total = lax.switch(index, branches, *ops)
        ev.set_outputs(eqn, outs)
        self.record_lps(ev, eqn, lps, baseline_total)


class CheckpointRule(_SubprogramRule):
    def emit(self, ev, eqn):
        if not self.needs_rewrite(eqn):
            return super().emit(ev, eqn)
        ops = [ev.read(r) for r in eqn.inputs]
        fn = jax.checkpoint(
            lambda *xs: self.run_branch(ev, eqn, 0, list(xs)),
            prevent_cse=eqn.params.get("prevent_cse", True),
            policy=eqn.params.get("policy"),
        )
        outs, lps, baseline_total = fn(*ops)
        ev.set_outputs(eqn, outs)
        self.record_lps(ev, eqn, lps, baseline_total)


class CustomDerivativeRule(_SubprogramRule):
    """custom_jvp / custom_vjp functions: no sites inside; re-bound unchanged."""

    def influence(self, an, eqn, in_influence):
        Rule.influence(self, an, eqn, in_influence)  # raises if a site is inside
        (sub,) = eqn.subs
        if len(sub.inputs) != len(eqn.inputs):
            an.subs[eqn.uid] = BodyInfo([])
            return Rule.influence(self, an, eqn, in_influence)
        # No sites inside: the call's own dataflow says which outputs depend on which inputs,
        # alignment included (e.g. jax.nn.relu keeps per-element credit).
        inner = an.nested(sub, in_influence)
        an.subs[eqn.uid] = BodyInfo([inner])
        return [inner.of(r) for r in sub.outputs]

    def differentiable(self, an, eqn):
        return Rule.differentiable(self, an, eqn)

    def demand(self, an, eqn, need):
        pass

    def emit(self, ev, eqn):
        Rule.emit(self, ev, eqn)


_CHECKPOINT, _CUSTOM = CheckpointRule(), CustomDerivativeRule()
RULES.update(
    {
        "cond": CondRule(),
        "checkpoint": _CHECKPOINT,
        "remat2": _CHECKPOINT,
        "remat": _CHECKPOINT,
        "custom_jvp_call": _CUSTOM,
        "custom_vjp_call": _CUSTOM,
        "custom_vjp_call_jaxpr": _CUSTOM,
    }
)
