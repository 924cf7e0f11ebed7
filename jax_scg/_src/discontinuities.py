"""Where a reparameterised site's value meets a discontinuity on its way to the cost.

The pathwise derivative of E[f(x)] with x = g(θ, ε) is unbiased only where f is continuous in
x: ``round(x)``, a step ``where(x > 0, 1., 0.)``, a comparison used as a number, an integer
index computed from x jump, and their jumps carry derivative mass that the pathwise
derivative cannot see. This module follows each pathwise site's value through the program
with three kinds of marks (the three sets of site ids of a ``Marks``):

- ``pw``: a floating-point value that depends on the site differentiably;
- ``ints``: an integer or boolean value computed from it (a comparison, ``argmax``,
  a float-to-int conversion);
- ``jump``: a value that jumps as the site's value varies: an integer turned back
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
from typing import NamedTuple

import jax.numpy as jnp

from jax_scg._src import primitive
from jax_scg._src.errors import FallbackWarning, site_message, user_stacklevel
from jax_scg._src.jaxpr import Const, Eqn, Scope, aval_of, scan_counts

# Piecewise constant: zero derivative, jumps between the pieces.
STEPS = frozenset({"round", "floor", "ceil", "sign"})
# Piecewise continuous with jumps and a nonzero derivative inside the pieces.
JUMPY = frozenset({"rem"})
# The user's own derivative rules (and stop_gradient): not looked into.
OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr", "custom_lin"})
# Sub-programs called once, as a function is: a jump inside one is a jump of the call.
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "remat", "checkpoint"})


def inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


class Marks(NamedTuple):
    """The pathwise sites a value depends on, by kind (see the module's docstring).

    Three sets of site ids, so that following a value through an operation is a few set
    unions, whatever the number of sites behind it (a deep program with a site per layer).
    """

    pw: frozenset = frozenset()
    ints: frozenset = frozenset()
    jump: frozenset = frozenset()

    def __or__(self, other: Marks) -> Marks:
        return Marks(self.pw | other.pw, self.ints | other.ints, self.jump | other.jump)

    def __bool__(self) -> bool:
        return bool(self.pw or self.ints or self.jump)

    def sites(self) -> frozenset:
        return self.pw | self.ints | self.jump

    def as_integer(self) -> Marks:
        """The marks of an integer or boolean computed from this value."""
        return Marks(ints=self.pw | self.ints, jump=self.jump) if self.pw else self


EMPTY = Marks()


def _union(marks) -> Marks:
    nonempty = [m for m in marks if m]
    if len(nonempty) <= 1:
        return nonempty[0] if nonempty else EMPTY
    return Marks(
        frozenset().union(*(m.pw for m in nonempty)),
        frozenset().union(*(m.ints for m in nonempty)),
        frozenset().union(*(m.jump for m in nonempty)),
    )


@dataclasses.dataclass
class Jump:
    """The first operation found that makes the cost jump in a site's value."""

    operation: str
    source: str

    def describe(self) -> str:
        return f"`{self.operation}` ({self.source})" if self.source else f"`{self.operation}`"


def grow_to_fixpoint(carry: list, step, join) -> tuple:
    """Walks a loop body until the marks of its carries stop growing.

    Repeats ``carry = [join(c, o) for c, o in zip(carry, step(carry))]``; returns the final
    carries and the last ``step`` outputs (computed from them).
    """
    while True:
        outs = step(carry)
        grown = [join(c, o) for c, o in zip(carry, outs)]
        if grown == carry:
            return grown, outs
        carry = grown


class _Walker:
    """Walks a program forward with each value's ``Marks``.

    With ``collapsed=True`` every site is one token and a set difference keeps its left
    operand, so the marks over-approximate (by induction, every set holds the token where
    the exact walk's holds any site) and each set has at most one element: a walk linear in
    the program that finds every jump the exact walk can find, and more. A deep chain of
    pathwise sites makes the exact walk quadratic (each value is marked by all sites before
    it), so it runs only where the collapsed walk finds a jump.
    """

    def __init__(self, root: Scope, collapsed: bool = False):
        self.root = root
        self.collapsed = collapsed
        self.origins: dict = {}  # site uid -> Jump (the first operation that made it jump)
        self.sites: dict = {}  # site uid -> site Eqn
        self.top: Eqn | None = None  # the top-level equation being walked
        self.points: dict = {}  # site uid -> uids of the top-level equations where it jumps
        self.whole_site: set = set()  # site uids the per-cost split cannot serve
        self.site_parents: list = []  # the marks of every site's inputs

    def minus(self, a: frozenset, b: frozenset) -> frozenset:
        return a if self.collapsed else a - b

    def feeds_a_site(self, uid) -> bool:
        """Whether site ``uid``'s value reaches another site's inputs."""
        return any(uid in m.pw or uid in m.ints or uid in m.jump for m in self.site_parents)

    def jump(self, uids, eqn: Eqn) -> frozenset:
        """Records that ``eqn`` makes the cost jump in these sites' values; returns them."""
        top = self.top
        for uid in uids:
            self.origins.setdefault(uid, Jump(eqn.name, eqn.source))
            self.points.setdefault(uid, set()).add(top.uid)
        if top.subs and top.name not in _CALLS:  # a jump inside a loop or branch
            self.whole_site.update(uids)
        return frozenset(uids)

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
        if eqn.name in OPAQUE:
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
        self.whole_site.update(marks.sites() if with_sites else marks.jump)

    def site(self, scope: Scope, eqn: Eqn, ins) -> Marks:
        site = eqn.params["site"]
        _, leaves, _ = site.split(list(ins))
        parents = _union(leaves)
        # A site whose parameters depend on a pathwise site's value: that site's costs
        # through this one would need its value stopped in this site's score too. (Kept as
        # the marks, looked up for the few jumping sites only: in a deep chain every site
        # depends on all before it, and collecting them here would be quadratic.)
        self.site_parents.extend(m for m in ins if m)
        if scope is not self.root or site.has_baseline:
            self.whole_site.add(eqn.uid)
        estimator = site.resolved_estimator(scope.avals[eqn.outputs[0]].dtype)
        if estimator == primitive.SCORE_FUNCTION or not inexact(scope.avals[eqn.outputs[0]]):
            # The value is drawn (not differentiated); its parameters' influence goes
            # through its score, which is differentiable. Jumps upstream stay jumps.
            return Marks(jump=parents.jump)
        kept = Marks(pw=parents.pw, jump=parents.jump)
        if estimator == primitive.PATHWISE and not site.has_value:
            self.sites[eqn.uid] = eqn
            kept = kept._replace(pw=kept.pw | {0 if self.collapsed else eqn.uid})
        return kept

    def opaque(self, scope: Scope, eqn: Eqn, marks: Marks, out) -> Marks:
        if inexact(scope.avals[out]):
            return Marks(pw=marks.pw | marks.ints, jump=marks.jump)
        return marks.as_integer()

    def default(self, scope: Scope, eqn: Eqn, ins) -> list:
        marks = _union(ins)
        if not marks:
            return [EMPTY] * len(eqn.outputs)
        step, jumpy = eqn.name in STEPS, eqn.name in JUMPY
        if not (marks.ints or step or jumpy):  # the common case: a differentiable operation
            return [marks if inexact(scope.avals[o]) else marks.as_integer() for o in eqn.outputs]
        # Sites some floating-point input depends on differentiably: an integer computed
        # from the same site that picks among such values is assumed continuous.
        continuous = frozenset().union(
            *(m.pw for ref, m in zip(eqn.inputs, ins) if inexact(aval_of(ref, scope)))
        )
        outs = []
        for out in eqn.outputs:
            if not inexact(scope.avals[out]):
                outs.append(marks.as_integer())
                continue
            pw, jump = marks.pw, marks.jump
            if step or jumpy:
                jump = jump | self.jump(marks.pw, eqn)
            if step:
                pw = frozenset()
            # an integer or boolean turned into a number: continuous where it picks among
            # values that depend on the same site differentiably, else a jump
            pw = pw | (marks.ints & continuous)
            jump = jump | self.jump(self.minus(marks.ints, continuous), eqn)
            outs.append(Marks(pw=pw, jump=jump))
        return outs

    def scan(self, eqn: Eqn, ins) -> list:
        nc, nk = scan_counts(eqn.params)
        (body,) = eqn.subs
        consts, xs = list(ins[:nc]), list(ins[nc + nk :])
        step = lambda carry: self.walk(body, consts + carry + xs)
        carry, outs = grow_to_fixpoint(list(ins[nc : nc + nk]), step, Marks.__or__)
        return carry + outs[nk:]

    def while_loop(self, scope: Scope, eqn: Eqn, ins) -> list:
        p = eqn.params
        n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
        cond, body = eqn.subs
        cond_consts, body_consts = list(ins[:n_cond]), list(ins[n_cond : n_cond + n_body])
        step = lambda carry: self.walk(body, body_consts + carry)
        carry, _ = grow_to_fixpoint(list(ins[n_cond + n_body :]), step, Marks.__or__)
        (predicate,) = self.walk(cond, cond_consts + carry)
        # A trip count that depends on a site's value: the carries jump with it.
        jumps = Marks(jump=self.jump(predicate.sites(), eqn))
        return [
            c | (jumps if inexact(scope.avals[o]) else EMPTY) for c, o in zip(carry, eqn.outputs)
        ]

    def cond(self, scope: Scope, eqn: Eqn, ins) -> list:
        index, operands = ins[0], list(ins[1:])
        branch_outs = [self.walk(sub, operands) for sub in eqn.subs]
        outs = []
        for j, out in enumerate(eqn.outputs):
            merged = _union(b[j] for b in branch_outs)
            if not inexact(scope.avals[out]):
                outs.append(merged | index.as_integer())
                continue
            # the index picks among branches: continuous where their values depend on the
            # same site differentiably, else a jump
            picked = index.pw | index.ints
            jump = self.jump(index.jump | self.minus(picked, merged.pw), eqn)
            outs.append(merged | Marks(pw=picked & merged.pw, jump=jump))
        return outs


def find_jumps(scope: Scope) -> dict:
    """Pathwise sites whose value reaches output 0 through a discontinuity: uid -> (site
    equation, ``Jump``, uids of the top-level equations where it jumps, or an empty set
    where the per-cost split does not apply)."""
    inputs = [EMPTY] * len(scope.inputs)
    (may_jump, *_) = _Walker(scope, collapsed=True).walk(scope, inputs)
    if not may_jump.jump:
        return {}
    walker = _Walker(scope)
    (cost, *_) = walker.walk(scope, inputs)
    found = {}
    for uid in cost.jump:
        if uid in walker.sites:
            split = uid not in walker.whole_site and not walker.feeds_a_site(uid)
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
                stacklevel=user_stacklevel(),
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
