"""Where a reparameterised site's value meets a discontinuity on its way to the cost.

The pathwise derivative of E[f(x)] with x = g(θ, ε) is unbiased only where f is continuous in
x: ``round(x)``, a step ``where(x > 0, 1., 0.)``, a comparison used as a number, an integer
index computed from x jump, and their jumps carry derivative mass that the pathwise
derivative cannot see. This module follows each pathwise site's value through the program
with three kinds of marks:

- ``("pw", site)``: a floating-point value that depends on the site differentiably;
- ``("int", site)``: an integer or boolean value computed from it (a comparison, ``argmax``,
  a float-to-int conversion);
- ``("jump", site)``: a value that jumps as the site's value varies: an integer turned back
  into a number (``convert_element_type``, indexing a table that does not depend on the site,
  a ``select``/``cond`` whose branches do not), or ``round``/``floor``/``ceil``/``sign``/``rem``.

An integer that picks among values which themselves depend on the site (``where(x > eps,
log(x), log(eps))``, ``x[argmax(x)]``, ``leaky_relu``, ``sort``) is assumed continuous, as is
everything inside ``stop_gradient`` and a user's ``custom_jvp``/``custom_vjp`` (a
straight-through estimator written by hand is the user's choice). Sites whose jump marks
reach the cost switch from pathwise to the score function under ``estimator="auto"``; an
explicit ``estimator="pathwise"`` there gets a warning naming the operation.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax.numpy as jnp

from jax_scg._src import primitive
from jax_scg._src.errors import FallbackWarning, site_message
from jax_scg._src.jaxpr import Const, Eqn, Scope, aval_of, scan_counts

EMPTY: frozenset = frozenset()
# Piecewise constant: zero derivative, jumps between the pieces.
_STEPS = frozenset({"round", "floor", "ceil", "sign"})
# Piecewise continuous with jumps and a nonzero derivative inside the pieces.
_JUMPY = frozenset({"rem"})
# The user's own derivative rules (and stop_gradient): not looked into.
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"})
# Sub-programs called once, as a function is: a jump inside one is a jump of the call.
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint"})


def _inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


def _union(marks) -> frozenset:
    return frozenset().union(*marks)


@dataclasses.dataclass
class Jump:
    """The first operation found that makes the cost jump in a site's value."""

    operation: str
    source: str

    def describe(self) -> str:
        return f"`{self.operation}` ({self.source})" if self.source else f"`{self.operation}`"


class _Walker:
    def __init__(self, root: Scope):
        self.root = root
        self.origins: dict = {}  # site uid -> Jump (the first operation that made it jump)
        self.sites: dict = {}  # site uid -> site Eqn
        self.top: Eqn | None = None  # the top-level equation being walked
        self.points: dict = {}  # site uid -> uids of the top-level equations where it jumps
        self.whole_site: set = set()  # site uids the per-cost split cannot serve

    def jump(self, uid, eqn: Eqn):
        self.origins.setdefault(uid, Jump(eqn.name, eqn.source))
        top = self.top
        self.points.setdefault(uid, set()).add(top.uid)
        if top.subs and top.name not in _CALLS:  # a jump inside a loop or branch
            self.whole_site.add(uid)
        return ("jump", uid)

    def walk(self, scope: Scope, in_marks) -> list:
        env = dict(zip(scope.inputs, in_marks))

        def of(ref):
            return EMPTY if isinstance(ref, Const) else env.get(ref, EMPTY)

        for eqn in scope.eqns:
            if scope is self.root:
                self.top = eqn
            outs = self.equation(scope, eqn, [of(r) for r in eqn.inputs])
            env.update(zip(eqn.outputs, outs))
        return [of(r) for r in scope.outputs]

    def equation(self, scope: Scope, eqn: Eqn, ins) -> list:
        if eqn.subs:
            self.check_split(eqn, ins)
        if eqn.is_site:
            return [self.site(scope, eqn, ins)]
        if eqn.name == "stop_gradient":
            return [EMPTY] * len(eqn.outputs)
        if eqn.name in _OPAQUE:
            return [self.opaque(scope, eqn, _union(ins), o) for o in eqn.outputs]
        if eqn.name == "scan":
            return self.scan(eqn, ins)
        if eqn.name == "while":
            return self.while_loop(scope, eqn, ins)
        if eqn.name == "cond":
            return self.cond(scope, eqn, ins)
        if eqn.subs and len(eqn.subs) == 1:
            (sub,) = eqn.subs
            if len(sub.inputs) == len(ins) and len(sub.outputs) == len(eqn.outputs):
                return self.walk(sub, ins)
        return self.default(scope, eqn, ins)

    def check_split(self, eqn: Eqn, ins) -> None:
        """The per-cost split stays at the top level: a site's value may not enter a
        sub-program with sites in it, nor a jumped value any sub-program."""
        marks = _union(ins)
        with_sites = any(sub.first_site_label() is not None for sub in eqn.subs)
        for kind, uid in marks:
            if with_sites or kind == "jump":
                self.whole_site.add(uid)

    def site(self, scope: Scope, eqn: Eqn, ins) -> frozenset:
        site = eqn.params["site"]
        _, leaves, _ = site.split(list(ins))
        parents = _union(leaves)
        # A site whose parameters depend on a pathwise site's value: that site's costs
        # through this one would need its value stopped in this site's score too.
        self.whole_site.update(uid for _, uid in _union(ins))
        if scope is not self.root or site.has_baseline:
            self.whole_site.add(eqn.uid)
        estimator = site.resolved_estimator(scope.avals[eqn.outputs[0]].dtype)
        if estimator == primitive.SCORE_FUNCTION or not _inexact(scope.avals[eqn.outputs[0]]):
            # The value is drawn (not differentiated); its parameters' influence goes
            # through its score, which is differentiable. Jumps upstream stay jumps.
            return frozenset(m for m in parents if m[0] == "jump")
        kept = frozenset(m for m in parents if m[0] in ("pw", "jump"))
        if estimator == primitive.PATHWISE and not site.has_value:
            self.sites[eqn.uid] = eqn
            kept |= {("pw", eqn.uid)}
        return kept

    def opaque(self, scope: Scope, eqn: Eqn, marks: frozenset, out) -> frozenset:
        if _inexact(scope.avals[out]):
            return frozenset((k if k == "jump" else "pw", u) for k, u in marks)
        return frozenset((k if k == "jump" else "int", u) for k, u in marks)

    def default(self, scope: Scope, eqn: Eqn, ins) -> list:
        marks = _union(ins)
        if not marks:
            return [EMPTY] * len(eqn.outputs)
        # Sites some floating-point input depends on differentiably: an integer computed
        # from the same site that picks among such values is assumed continuous.
        continuous = {
            u
            for ref, m in zip(eqn.inputs, ins)
            if _inexact(aval_of(ref, scope))
            for k, u in m
            if k == "pw"
        }
        outs = []
        for out in eqn.outputs:
            if not _inexact(scope.avals[out]):
                outs.append(frozenset((k if k == "jump" else "int", u) for k, u in marks))
                continue
            result = set()
            for kind, uid in marks:
                if kind == "jump":
                    result.add(("jump", uid))
                elif kind == "pw":
                    if eqn.name in _STEPS or eqn.name in _JUMPY:
                        result.add(self.jump(uid, eqn))
                    if eqn.name not in _STEPS:
                        result.add(("pw", uid))
                elif uid in continuous:
                    result.add(("pw", uid))
                else:  # an integer or boolean turned into a number
                    result.add(self.jump(uid, eqn))
            outs.append(frozenset(result))
        return outs

    def scan(self, eqn: Eqn, ins) -> list:
        nc, nk = scan_counts(eqn.params)
        (body,) = eqn.subs
        carry = list(ins[nc : nc + nk])
        while True:
            outs = self.walk(body, list(ins[:nc]) + carry + list(ins[nc + nk :]))
            grown = [c | o for c, o in zip(carry, outs[:nk])]
            if grown == carry:
                return grown + outs[nk:]
            carry = grown

    def while_loop(self, scope: Scope, eqn: Eqn, ins) -> list:
        p = eqn.params
        n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
        cond, body = eqn.subs
        cond_consts, body_consts = list(ins[:n_cond]), list(ins[n_cond : n_cond + n_body])
        carry = list(ins[n_cond + n_body :])
        while True:
            grown = [c | o for c, o in zip(carry, self.walk(body, body_consts + carry))]
            if grown == carry:
                break
            carry = grown
        (predicate,) = self.walk(cond, cond_consts + carry)
        # A trip count that depends on a site's value: the carries jump with it.
        jumps = {self.jump(u, eqn) for k, u in predicate}
        return [
            c | (frozenset(jumps) if _inexact(scope.avals[o]) else EMPTY)
            for c, o in zip(carry, eqn.outputs)
        ]

    def cond(self, scope: Scope, eqn: Eqn, ins) -> list:
        index, operands = ins[0], list(ins[1:])
        branch_outs = [self.walk(sub, operands) for sub in eqn.subs]
        outs = []
        for j, out in enumerate(eqn.outputs):
            merged = _union(b[j] for b in branch_outs)
            if not _inexact(scope.avals[out]):
                outs.append(merged | {(k if k == "jump" else "int", u) for k, u in index})
                continue
            continuous = {u for k, u in merged if k == "pw"}
            picked = {
                ("jump", u) if k == "jump" or u not in continuous else ("pw", u) for k, u in index
            }
            for k, u in picked:
                if k == "jump":
                    self.jump(u, eqn)
            outs.append(merged | picked)
        return outs


def find_jumps(scope: Scope) -> dict:
    """Pathwise sites whose value reaches output 0 through a discontinuity: uid -> (site
    equation, ``Jump``, uids of the top-level equations where it jumps, or an empty set
    where the per-cost split does not apply)."""
    walker = _Walker(scope)
    (cost, *_) = walker.walk(scope, [EMPTY] * len(scope.inputs))
    found = {}
    for kind, uid in cost:
        if kind == "jump" and uid in walker.sites:
            split = uid not in walker.whole_site
            points = frozenset(walker.points[uid]) if split else frozenset()
            found[uid] = (walker.sites[uid], walker.origins[uid], points)
    return found


def mark_discontinuous_sites(scope: Scope, warn: bool = True) -> dict:
    """Gives ``estimator="auto"`` sites whose cost jumps in their value the score function
    where the cost jumps (recorded in their ``SiteInfo``); warns for explicit pathwise ones.

    Where the split applies (the site, its jumps and the costs after them in the top-level
    program, its value feeding no other site), the site stays pathwise and only the costs
    computed from the jumping operations take its score (``SiteInfo.score_through``);
    elsewhere the whole site takes the score function.

    Returns:
      site uid -> the ``Jump`` found, for every flagged site.
    """
    found = find_jumps(scope)
    for eqn, jump, points in found.values():
        site = eqn.params["site"]
        if site.estimator == "auto":
            eqn.params["site"] = dataclasses.replace(
                site, discontinuity=jump.describe(), score_through=points
            )
        elif warn:
            warnings.warn(
                site_message(
                    site.label,
                    f'estimator="pathwise" differentiates through {jump.describe()}, which '
                    "jumps as the site's value varies; the pathwise derivative misses the "
                    "jumps, so the estimate is biased.",
                    'use estimator="auto" (it takes the score function for this site) or '
                    '"score_function"; if a straight-through estimate is meant, write it '
                    "with stop_gradient (x + stop_gradient(round(x) - x)).",
                ),
                FallbackWarning,
                stacklevel=4,
            )
    return {uid: jump for uid, (_, jump, _) in found.items()}


def unsplit_named_sites(scope: Scope, names) -> None:
    """Sites given a baseline or an offset by name take the score function for every cost,
    as an unnamed site with ``baseline=`` does (the per-cost split has no score term for
    the costs it keeps pathwise)."""
    for eqn in scope.sites():
        site = eqn.params["site"]
        if site.score_through and site.name in names:
            eqn.params["site"] = dataclasses.replace(site, score_through=frozenset())
