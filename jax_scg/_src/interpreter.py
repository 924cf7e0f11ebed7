"""The rewrite: find the stochastic computation graph in a program and evaluate its surrogate.

Three passes over a ``Scope`` (see ``jaxpr.py``), then one evaluation:

1. **Influence** (forward): for every variable, the set of *atoms* that influence it. An atom
   is a log-probability term available in the scope: a score-function site of the scope
   (``("site", uid)``), the total over a sub-program's site (``("sub", uid, inner_atom)``), or,
   inside a loop body, a term from outside (``("outer", atom)``) or the sum of a body atom over
   the earlier iterations (``("cum", atom)``). Pathwise and relaxed sites add no atom: their
   value is a differentiable function of their inputs. A vectorised site's atom can be
   *aligned* with a value's axes (``alignment.py``), so that element ``i`` of a cost only
   gets the score of element ``i`` of the site (per-element credit without plates), through
   loops too. The same pass records which variables may carry a derivative (for loop fission,
   ``loops.py``) and where an operation without a per-element rule coarsened a site's credit.
2. **Cost structure** (backward from the objective): the variables the objective depends on
   only through linear operations with coefficients no atom influences. These form the *cost
   tree*; its leaves are the cost nodes. Loops take part: stacked ``scan`` outputs and
   accumulating carries give one cost node per iteration.
3. **Demand** (backward): which atoms' log-probabilities are needed, so that nothing else is
   computed or carried through loops.

Summands that no atom influences are cost nodes with no score term. Baselines add the
zero-valued terms of Mao et al. (2019) beside the sites that have them.

The evaluation runs the program on the caller's values (tracers of any enclosing ``jit``,
``vmap`` or ``grad``), draws each site, and computes beside every cost-tree variable ``v`` its
surrogate ``s(v)``: at a leaf ``c``, ``magic_box(sum of the log-probabilities of the atoms that
influence c) * c``; through the tree, the same linear operations on the surrogates. The
surrogate of the objective is the DiCE objective (Foerster et al. 2018) with per-cost causality
(Schulman et al. 2015, Corollary 1); its value equals the objective's value.

Everything that steers the rewrite from outside (validation, baselines by name, fitting a
critic, ...) arrives as one ``Options`` value; rules for control flow live in
``control_flow.py`` and ``loops.py`` and register themselves in ``RULES``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jax_scg._src import alignment, estimators, keys, primitive
from jax_scg._src.errors import FallbackWarning, SiteError, site_message, user_stacklevel
from jax_scg._src.jaxpr import (
    Const,
    Eqn,
    Scope,
    aval_of,
    bind,
    collective_axes,
    sum_over_varying,
)

EMPTY: frozenset = frozenset()
_NO_NAMES: Mapping = types.MappingProxyType({})


@dataclasses.dataclass(frozen=True)
class Options:
    """What the caller asks of one rewrite; made by the public transformations.

    Attributes:
      validate: add ``checkify`` checks of every site's parameters and log-probability.
      baselines: ``{site name: baseline}`` applied as if passed to ``sample(baseline=...)``.
      fit_baselines: enter every site's baseline ``b`` into its own log-probability as
        ``b - stop_gradient(b)``, so that ``d surrogate / d b`` is the downstream cost minus
        ``b``: the negated gradient of a critic's squared error (``critic_argnums``).
      log_prob_offsets: ``{site name: zeros}`` added to named sites' log-probabilities, so
        that ``d surrogate / d offset`` is the downstream cost (``downstream_costs``).
      reverse_over_reverse: the estimate is itself being reverse-differentiated (grad of
        grad), which JAX's implicit Gamma/Beta/Dirichlet gradients do not support.
      fission: split loops so that scores, boxes and costs are computed after them,
        vectorised over iterations, where that removes the backward pass through time
        (``loops.py``); off gives the straightforward rewrite (same values). ``"auto"``
        plans the split like ``True``; ``surrogate._evaluate`` then picks, per derivative,
        which of the two rewrites it differentiates.
    """

    validate: bool = False
    baselines: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _NO_NAMES)
    fit_baselines: bool = False
    log_prob_offsets: Mapping[str, Any] = dataclasses.field(default_factory=lambda: _NO_NAMES)
    reverse_over_reverse: bool = False
    fission: bool | str = True


def magic_box(tau):
    """The DiCE operator: ``exp(tau - stop_gradient(tau))``; its value is 1 and d/dθ ⊡ = ⊡ dτ/dθ.

    Examples:
      >>> import jax, jax_scg as scg
      >>> float(scg.magic_box(0.7)), float(jax.grad(lambda t: scg.magic_box(3.0 * t))(0.7))
      (1.0, 3.0)
    """
    return jnp.exp(tau - lax.stop_gradient(tau))


def tau_dtype():
    return jnp.result_type(float)


# --------------------------------------------------------------------------------------------
# Atoms across scopes.


def is_local(atom) -> bool:
    return atom[0] not in ("outer", "cum")


def enter(entries: frozenset, stacked: bool = False) -> frozenset:
    """A parent's influence as seen inside a body: each atom becomes ``("outer", atom)``.

    Alignment is kept; a scanned operand (``stacked``) loses its leading axis in the body.
    """
    return alignment.relabel(entries, lambda a: ("outer", a), -1 if stacked else 0)


def to_parent(entries: frozenset, uid: int, tag=None, stacked: bool = False) -> frozenset:
    """Maps body entries to the enclosing scope: outer ones back, the rest to totals of ``uid``.

    Alignment is kept (a loop's total of a site is summed over iterations, elementwise); a
    stacked loop output gains a leading axis.
    """

    def parent_atom(a):
        if a[0] == "outer":
            return a[1]
        inner = a[1] if a[0] == "cum" else a
        return ("sub", uid, inner if tag is None else (tag, inner))

    return alignment.relabel(entries, parent_atom, 1 if stacked else 0)


def site_uid(atom):
    """The uid of the site behind an atom, however deeply it is wrapped by loops and branches."""
    while atom[0] != "site":
        if atom[0] in ("outer", "cum", alignment.MESH):
            atom = atom[1]
        else:  # ("sub", uid, inner) or ("sub", uid, (branch, inner))
            inner = atom[2]
            atom = inner[1] if isinstance(inner[0], int) else inner
    return atom[1]


@dataclasses.dataclass
class SubInfo:
    """What a rule records about an equation's sub-programs (its bodies' analyses)."""

    analyses: list = dataclasses.field(default_factory=list)

    def cost_bodies(self) -> list:
        """The bodies whose cost trees were marked (loop bodies with per-iteration costs)."""
        return []


def _is_inexact(aval) -> bool:
    return jnp.issubdtype(aval.dtype, jnp.inexact)


class Analysis:
    """Influence, cost structure and demand for one scope, given its inputs' influence.

    Args:
      scope: the program or body.
      input_influence: one influence set per input.
      options: the rewrite's ``Options``.
      depth: 0 for the program, +1 inside each loop, branch or checkpoint.
      input_fallbacks: per input, the ``(site uid, operation)`` pairs that coarsened credit
        on the way to it.
      input_diff: per input, whether it may carry a derivative (default: floating point).
      sites: ``{uid: site equation}`` of the whole program (default: this scope's), so that
        messages from a body can name a site outside it.
    """

    def __init__(
        self,
        scope: Scope,
        input_influence,
        options: Options = Options(),
        depth: int = 0,
        input_fallbacks=None,
        input_diff=None,
        sites=None,
    ):
        self.scope = scope
        self.options = options
        self.depth = depth
        self.sites = {e.uid: e for e in scope.sites()} if sites is None else sites
        self.has_causal_sites = any(e.params["site"].causal for e in self.sites.values())
        self.influence: dict = dict(zip(scope.inputs, input_influence))
        # variable -> {(site uid, operation)}: where a site's per-element credit was lost on
        # the way to the variable because an operation has no alignment rule (a warning).
        self.fallbacks: dict = dict(zip(scope.inputs, input_fallbacks or ()))
        if input_diff is None:
            input_diff = [_is_inexact(scope.avals[v]) for v in scope.inputs]
        # variable -> whether it may carry a derivative with respect to any float input (no
        # path through stop_gradient, a score-function draw or an integer)
        self.diff: dict = dict(zip(scope.inputs, input_diff))
        self.local_atoms: list = []
        self.lp_shapes: dict = {}  # local atom -> shape of its elementwise log-probability
        self.subs: dict = {}
        self.tree: set = set()
        self.passthrough: dict = {}
        self.provided: frozenset = frozenset()
        self.needed: set = set()
        # The per-cost split of discontinuous sites (discontinuities.py): the top-level
        # equations where a pathwise site's value jumps -> that site's atom, which their
        # outputs carry (so the costs after them take its score), and the variables
        # computed from such a site's value (recomputed with it stopped for those costs).
        self.jump_atoms: dict = _jump_atoms(scope) if depth == 0 else {}
        self.split_atoms: frozenset = frozenset().union(*self.jump_atoms.values())
        self.split_values: set = set()
        for eqn in scope.eqns:
            rule = rule_for(eqn)
            in_influence = [self.of(r) for r in eqn.inputs]
            outs = rule.influence(self, eqn, in_influence)
            if eqn.uid in self.jump_atoms:
                outs = [o | self.jump_atoms[eqn.uid] for o in outs]
            if self.split_atoms and (
                ("site", eqn.uid) in self.split_atoms
                or any(r in self.split_values for r in eqn.inputs if type(r) is int)
            ):
                self.split_values.update(eqn.outputs)
            self.influence.update(zip(eqn.outputs, outs))
            self.diff.update(zip(eqn.outputs, rule.differentiable(self, eqn)))
            self._track_fallbacks(eqn, rule, in_influence, outs)

    def is_causal(self, atom) -> bool:
        """Whether the site behind ``atom`` is causal along its last axis (``Autoregressive``)."""
        if not self.has_causal_sites:
            return False
        if atom[0] not in ("site", "outer", alignment.MESH):
            return False  # an atom of a loop or branch: causal sites are refused there
        eqn = self.sites.get(site_uid(atom))
        return eqn is not None and eqn.params["site"].causal

    def nested(self, scope: Scope, input_influence, input_fallbacks=None, input_diff=None):
        """The analysis of a body of one of this scope's equations."""
        return Analysis(
            scope,
            input_influence,
            self.options,
            self.depth + 1,
            input_fallbacks,
            input_diff,
            self.sites,
        )

    @functools.cached_property
    def producers(self) -> dict:
        """``{variable: the equation that computes it}`` in this scope."""
        return {o: e for e in self.scope.eqns for o in e.outputs}

    def of(self, ref) -> frozenset:
        return EMPTY if isinstance(ref, Const) else self.influence[ref]

    def is_diff(self, ref) -> bool:
        return False if isinstance(ref, Const) else self.diff[ref]

    def fallbacks_of(self, ref) -> frozenset:
        return EMPTY if isinstance(ref, Const) else self.fallbacks.get(ref, EMPTY)

    def _track_fallbacks(self, eqn: Eqn, rule, in_influence, outs):
        inherited = frozenset().union(*(self.fallbacks_of(r) for r in eqn.inputs))
        info = self.subs.get(eqn.uid)
        for body in info.analyses if isinstance(info, SubInfo) else ():
            for ref in body.scope.outputs:
                inherited |= body.fallbacks_of(ref)
        for var, out in zip(eqn.outputs, outs):
            new = EMPTY
            if type(rule) is Rule:
                lost = alignment.lost_alignment(eqn.name, in_influence, out)
                new = frozenset((site_uid(a), eqn.name) for a in lost)
            if inherited or new:
                self.fallbacks[var] = inherited | new

    def cost_scopes(self):
        """This analysis and, recursively, the loop bodies with costs of their own."""
        yield self
        for info in self.subs.values():
            for body in info.cost_bodies() if isinstance(info, SubInfo) else ():
                yield from body.cost_scopes()

    def credit_fallbacks(self) -> dict:
        """``{site uid: operation}`` for sites credited as a whole at some cost node (here or
        in a loop body's per-iteration costs) because of an operation with no rule."""
        found: dict = {}
        for an in self.cost_scopes():
            for leaf in an.leaves():
                plain = {site_uid(a) for a in an.of(leaf) if a[0] != alignment.ELEM}
                for uid, op in sorted(an.fallbacks_of(leaf), key=repr):
                    if uid in plain:
                        found.setdefault(uid, op)
        return found

    def mark_costs(self, root_positions, provided=frozenset(), collapse=True):
        """Marks the cost tree below the outputs at ``root_positions``.

        ``provided`` are input variables whose surrogate the caller supplies (loop carries).
        ``collapse=False`` keeps every summand a cost node (for ``scg.graph``).
        """
        self.provided = frozenset(provided)
        self.passthrough = {}
        outputs = [self.scope.outputs[i] for i in root_positions]
        tree = {r for r in outputs if not isinstance(r, Const)}
        self.tree = tree
        for eqn in reversed(self.scope.eqns):
            tree_outputs = [i for i, o in enumerate(eqn.outputs) if o in tree]
            if not tree_outputs or eqn.uid in self.jump_atoms:
                continue  # (a jump is a cost node: its site's score multiplies all of it)
            linear_inputs = rule_for(eqn).mark(self, eqn, tree_outputs)
            if linear_inputs is None or self._splits_coefficient(eqn, linear_inputs):
                continue
            self.passthrough[eqn.uid] = linear_inputs
            tree.update(
                r for i, r in enumerate(eqn.inputs) if i in linear_inputs and type(r) is int
            )
        if collapse:
            self._collapse_uniform_subtrees()

    def _splits_coefficient(self, eqn: Eqn, linear_inputs) -> bool:
        """Whether a coefficient depends on a split site's value while a linear input takes
        its score: the product is then one cost node, with the value stopped in all of it."""
        if not self.split_atoms:
            return False
        scored = any(
            self.of(r) & self.split_atoms for i, r in enumerate(eqn.inputs) if i in linear_inputs
        )
        return scored and any(
            r in self.split_values
            for i, r in enumerate(eqn.inputs)
            if i not in linear_inputs and type(r) is int
        )

    def _collapse_uniform_subtrees(self):
        """Makes a cost node of every tree variable whose cost nodes all share its atoms.

        When every leaf below ``v`` has the same atoms as ``v``, ``s(v) = ⊡(atoms) * v``
        exactly (the box is a scalar and the tree is linear), so one box at ``v`` replaces a
        box per element: what a hand-written surrogate does, at the same cost.
        """
        uniform: dict = {}
        collapsible = []
        computed = {o for e in self.scope.eqns if e.uid in self.passthrough for o in e.outputs}
        for eqn in self.scope.eqns:
            linear = self.passthrough.get(eqn.uid)
            if linear is None or len(eqn.outputs) != 1 or eqn.name == "scan":
                continue
            out = eqn.outputs[0]
            atoms = self.of(out)
            if atoms and any(isinstance(eqn.inputs[i], Const) for i in linear):
                continue  # a constant summand is a cost node of its own, with no score
            children = [r for i, r in enumerate(eqn.inputs) if i in linear and type(r) is int]
            uniform[out] = all(
                uniform.get(c, c not in computed and c not in self.provided) and self.of(c) == atoms
                for c in children
            )
            if uniform[out]:
                collapsible.append(eqn)
        # Keep passthrough only where needed: a uniform output becomes a leaf.
        for eqn in collapsible:
            del self.passthrough[eqn.uid]

    def defining_eqn(self, var) -> Eqn:
        if not hasattr(self, "_defining"):
            self._defining = {o: e for e in self.scope.eqns for o in e.outputs}
        return self._defining[var]

    def leaves(self):
        computed = {o for e in self.scope.eqns if e.uid in self.passthrough for o in e.outputs}
        return [v for v in self.tree if v not in computed and v not in self.provided]

    def demand(self, wanted_local=()) -> set:
        """Records which atoms are needed; returns the ``outer``/``cum`` atoms to be supplied."""
        need = set(wanted_local)
        for leaf in self.leaves():
            need |= alignment.whole(self.of(leaf))
        while True:
            before = len(need)
            need |= {a[1] for a in need if a[0] in ("cum", alignment.MESH)}
            for eqn in reversed(self.scope.eqns):
                rule_for(eqn).demand(self, eqn, need)
            if len(need) == before:
                break
        self.needed = need
        return {a for a in need if not is_local(a)}


class Evaluation:
    """Runs one scope on values, computing the surrogates of its cost tree on the way.

    Args:
      analysis: the scope's analysis.
      invals: one value per input of the scope.
      branches: the current branches of the branching sites (``_Branches``), or None.
      provided_surrogates: ``{input variable: surrogate}`` (loop carries in the cost tree).
      given_log_probs: ``{atom: elementwise log-probabilities}`` known from outside (the
        parent's, the earlier iterations', or computed by an earlier pass).
      values: ``{variable: value}`` computed elsewhere (a fissioned loop's stacked values); a
        site whose value is given is not drawn again.
      eqns: the uids of the equations to run (None: all).
      costs: compute surrogates and baseline terms (else values and log-probabilities only).
      log_probs: compute the sites' log-probabilities (else only draw).
      running_sums: ``(entries, entry)`` pairs: wherever a box has all of ``entries``, it
        uses ``entry`` (a given log-probability, their sum) instead.
    """

    def __init__(
        self,
        analysis: Analysis,
        invals,
        *,
        branches=None,
        provided_surrogates=None,
        given_log_probs=None,
        values=None,
        eqns=None,
        costs: bool = True,
        log_probs: bool = True,
        running_sums=(),
    ):
        self.analysis = analysis
        self.options = analysis.options
        self.branches = branches
        self.costs = costs
        self.log_probs = log_probs
        self.running_sums = tuple(running_sums)
        self.env = dict(zip(analysis.scope.inputs, invals))
        self.given_values = frozenset(values or ())
        self.env.update(values or {})
        self.surrogates = dict(provided_surrogates or {})
        # atom -> elementwise log-probabilities (the site's shape; totals of loops elementwise)
        self.lp_elems: dict = dict(given_log_probs or {})
        self._totals: dict = {}
        self._boxes: dict = {}
        self._taus: dict = {}
        self._recent: list = []
        self._stopped: dict = {}
        self.baseline_terms: list = []
        for eqn in analysis.scope.eqns:
            if eqns is None or eqn.uid in eqns:
                rule_for(eqn).emit(self, eqn)

    def nested(self, analysis: Analysis, invals, **kwargs):
        """An evaluation of a body, in the same branches."""
        return Evaluation(analysis, invals, branches=self.branches, **kwargs)

    def read(self, ref):
        return ref.value if isinstance(ref, Const) else self.env[ref]

    def elems(self, atom):
        """The atom's elementwise log-probabilities (an atom across devices: summed over the
        mesh axes where they vary; ``collectives.py``)."""
        if atom[0] == alignment.MESH and atom not in self.lp_elems:
            self.lp_elems[atom] = sum_over_varying(self.elems(atom[1]), atom[2])
        return self.lp_elems[atom]

    def aligned_elems(self, atom, axes):
        """The log-probabilities that credit a cost aligned with the atom's site on ``axes``.

        For a causal site (``Autoregressive``) whose positions (the last axis) the cost
        keeps apart, position ``t`` stands for ``x_t`` and everything it was drawn given:
        the cumulative sum ``Σ_{s<=t} log p(x_s | x_<s)``. Otherwise the site's own.
        """
        elems = self.elems(atom)
        if not axes or axes[-1] is None or not self.analysis.is_causal(atom):
            return elems
        key = ("prefix", atom)
        if key not in self.lp_elems:
            self.lp_elems[key] = jnp.cumsum(elems, axis=-1)
        return self.lp_elems[key]

    def total(self, atom):
        """The atom's log-probability summed over its elements."""
        if atom not in self._totals:
            elems = self.elems(atom)
            self._totals[atom] = elems if jnp.ndim(elems) == 0 else jnp.sum(elems)
        return self._totals[atom]

    def outputs(self):
        return [self.read(r) for r in self.analysis.scope.outputs]

    def surrogate(self, ref):
        """``s(ref)``: the value with every cost node below it multiplied by its magic box."""
        branches = self.branches
        if isinstance(ref, Const):
            if branches is None:
                return ref.value
            return branches.factor((), jnp.shape(ref.value)) * ref.value
        if ref not in self.surrogates:
            atoms = self.analysis.of(ref)
            split = atoms & self.analysis.split_atoms
            value = self.stopped(ref, split) if split else self.env[ref]
            if atoms or branches is not None:
                value = self.box(atoms, jnp.shape(value)).astype(jnp.result_type(value)) * value
            if branches is not None:
                value = branches.centre(atoms, value)
            self.surrogates[ref] = value
        return self.surrogates[ref]

    def stopped(self, ref, atoms: frozenset):
        """``ref``'s value recomputed with the values of the sites of ``atoms`` (split
        discontinuous sites) stopped: a cost that takes their score has no pathwise path
        from them. Equal in value; under ``jit`` XLA shares the forward computation."""
        an = self.analysis
        if isinstance(ref, Const):
            return ref.value
        if ref not in an.split_values:
            return self.env[ref]
        cache = self._stopped.setdefault(atoms, {})
        if ref not in cache:
            eqn = an.defining_eqn(ref)
            if ("site", eqn.uid) in an.split_atoms:
                values = [self.env[ref]]
                if ("site", eqn.uid) in atoms:
                    values = [lax.stop_gradient(values[0])]
            else:
                values = bind(eqn, [self.stopped(r, atoms) for r in eqn.inputs])
            cache.update(zip(eqn.outputs, values))
        return cache[ref]

    def box(self, atoms: frozenset, shape=()):
        """⊡ of the atoms' log-probabilities, laid out on a cost of ``shape``.

        Inside a branched evaluation (``_Branches``), times the branch weights.
        """
        branches = self.branches
        branch_entries = () if branches is None else branches.entries(atoms)
        atoms = self._running_sums(atoms.difference(branch_entries))
        plain = frozenset(a for a in atoms if a[0] != alignment.ELEM)
        aligned = sorted((a for a in atoms if a[0] == alignment.ELEM), key=repr)
        cache_key = (atoms, frozenset(branch_entries), tuple(shape))
        if cache_key not in self._boxes:
            tau = self.tau(plain) if plain else 0.0
            for _, atom, axes in aligned:
                tau = tau + alignment.log_prob_for_cost(self.aligned_elems(atom, axes), axes, shape)
            box = magic_box(tau)
            if branches is not None:
                box = box * branches.factor(branch_entries, shape)
            self._boxes[cache_key] = box
        return self._boxes[cache_key]

    def _running_sums(self, atoms: frozenset) -> frozenset:
        """Replaces groups of entries by the one entry standing for their sum, where given.

        After a fissioned loop (``loops.py``) the sums over iterations of several sites'
        log-probabilities that costs use together come as one cumulative sum each: one
        ``cumsum`` per group, as a hand-written surrogate sums the sites first.
        """
        for entries, replacement in self.running_sums:
            if entries <= atoms:
                atoms = (atoms - entries) | {replacement}
        return atoms

    def tau(self, atoms: frozenset):
        """Sum of the atoms' log-probabilities, reusing the largest recent sum of a subset.

        Costs down a chain of sites need nested sets; building each sum on the previous one
        keeps the surrogate's size linear in the number of sites (like a cumulative sum).
        """
        if atoms in self._taus:
            return self._taus[atoms]
        base, rest = None, atoms
        for known in reversed(self._recent):
            if known <= atoms and len(atoms - known) < len(rest):
                base, rest = known, atoms - known
        terms = [self.total(a) for a in sorted(rest, key=repr)]
        tau = sum(terms[1:], terms[0]) if base is None else sum(terms, self._taus[base])
        self._taus[atoms] = tau
        self._recent = [*self._recent[-7:], atoms]
        return tau

    def baseline_total(self):
        """Sum of this scope's baseline terms (each zero in value)."""
        return sum(self.baseline_terms, jnp.zeros((), tau_dtype()))

    def set_outputs(self, eqn: Eqn, values):
        self.env.update(zip(eqn.outputs, values))


# --------------------------------------------------------------------------------------------
# Per-primitive rules. Each rule says how influence flows, whether its outputs may carry a
# derivative, whether the equation is linear in some inputs (so the cost tree continues
# through it), what it demands from sub-programs, and how it is evaluated.

_UNARY_LINEAR = frozenset(
    {
        "neg",
        "reduce_sum",
        "reshape",
        "squeeze",
        "expand_dims",
        "broadcast_in_dim",
        "transpose",
        "copy",
        "copy_p",
        "rev",
        "cumsum",
        "slice",
        "reduce_precision",
    }
)


class Rule:
    """Default rule: every output depends on every input; re-bound unchanged."""

    def influence(self, an: Analysis, eqn: Eqn, in_influence):
        for sub in eqn.subs:
            label = sub.first_site_label()
            if label is not None:
                raise SiteError(
                    site_message(
                        label,
                        f"the site is inside `{eqn.name}`, which jax_scg cannot rewrite.",
                        "move the sample call outside that function (for custom_jvp/"
                        "custom_vjp functions: sample first and pass the value in).",
                    )
                )
        influenced = [a for a in in_influence if a]
        is_cast = "vary" in eqn.name or "cast" in eqn.name  # pvary/pcast: a type change only
        if influenced and collective_axes(eqn) and not is_cast:
            label = an.sites[site_uid(alignment.base(next(iter(influenced[0]))))]
            raise SiteError(
                site_message(
                    label.params["site"].label,
                    f"the site's value reaches `{eqn.name}`, a collective over mesh axes "
                    f"{collective_axes(eqn)} that jax_scg has no rule for (a JAX version "
                    "newer than it knows?), so it cannot tell whose sites the result "
                    "depends on.",
                    "compute one estimate per device (scg.grad of the per-device loss) and "
                    "average the gradients with jax.lax.pmean; and please report it.",
                )
            )
        if len(eqn.outputs) == 1 and not eqn.subs:
            shapes = [aval_of(r, an.scope).shape for r in eqn.inputs]
            out_shape = an.scope.avals[eqn.outputs[0]].shape
            return [alignment.transfer(eqn.name, eqn.params, shapes, out_shape, in_influence)]
        if not eqn.subs:
            outs = alignment.transfer_multi(eqn.name, eqn.params, len(eqn.outputs), in_influence)
            if outs is not None:
                return outs
        return [alignment.whole(alignment.union(in_influence))] * len(eqn.outputs)

    def differentiable(self, an: Analysis, eqn: Eqn) -> list:
        """Per output: whether it may carry a derivative (given the inputs' flags)."""
        if eqn.name == "stop_gradient":
            return [False] * len(eqn.outputs)
        any_in = any(an.is_diff(r) for r in eqn.inputs)
        return [any_in and _is_inexact(an.scope.avals[o]) for o in eqn.outputs]

    def mark(self, an: Analysis, eqn: Eqn, tree_outputs):
        return _linear_inputs(an, eqn)

    def demand(self, an: Analysis, eqn: Eqn, need: set):
        pass

    def emit(self, ev: Evaluation, eqn: Eqn):
        invals = [ev.read(r) for r in eqn.inputs]
        ev.set_outputs(eqn, bind(eqn, invals))
        linear = ev.analysis.passthrough.get(eqn.uid) if ev.costs else None
        if linear is not None:
            s_in = [
                ev.surrogate(r) if i in linear else _coefficient(ev, eqn, r, v)
                for i, (r, v) in enumerate(zip(eqn.inputs, invals))
            ]
            ev.surrogates.update(zip(eqn.outputs, bind(eqn, s_in)))


def _coefficient(ev: Evaluation, eqn: Eqn, ref, value):
    """The value of a linear operation's coefficient ``ref`` for its surrogate's copy.

    A matrix product's transposed coefficient (``z @ w.T``) is transposed again for the
    surrogate's product instead of shared: with one transpose feeding both products,
    ``jax.grad`` adds the two cotangents in the transposed layout and transposes the sum,
    which XLA's CPU backend compiles into a product on a transposed operand (1.6x slower on
    the sigmoid belief net of ``benchmarks/``); with one transpose per product, as a
    hand-written surrogate has, each cotangent's transpose pair cancels.
    """
    if eqn.name != "dot_general" or isinstance(ref, Const):
        return value
    producer = ev.analysis.producers.get(ref)
    if producer is None or producer.name != "transpose":
        return value
    return bind(producer, [ev.read(producer.inputs[0])])[0]


def _linear_inputs(an: Analysis, eqn: Eqn):
    """Positions of the inputs the output is linear in, with atom-free coefficients; or None."""
    name, n = eqn.name, len(eqn.inputs)

    def free(*positions):
        return all(not an.of(eqn.inputs[i]) for i in positions)

    if name in ("add", "sub", "add_any", "concatenate", "pad", "stack"):
        return tuple(range(n))
    if name in _UNARY_LINEAR:
        return (0,)
    if name == "convert_element_type":
        src, dst = aval_of(eqn.inputs[0], an.scope).dtype, eqn.params["new_dtype"]
        floating = jnp.issubdtype(src, jnp.inexact) and jnp.issubdtype(dst, jnp.inexact)
        return (0,) if floating else None
    if name in ("mul", "dot_general"):
        return (0,) if free(1) else (1,) if free(0) else None
    if name == "div":
        return (0,) if free(1) else None
    if name == "select_n":
        return tuple(range(1, n)) if free(0) else None
    if name in ("dynamic_slice", "gather"):
        return (0,) if free(*range(1, n)) else None
    if name == "dynamic_update_slice":
        return (0, 1) if free(*range(2, n)) else None
    return None


class SampleRule(Rule):
    """``scg.sample``: a stochastic node; its log-probability is an atom (score function)."""

    def influence(self, an, eqn, in_influence):
        site = eqn.params["site"]
        value_dtype = an.scope.avals[eqn.outputs[0]].dtype
        key_influence, leaf_influence, _ = site.split(in_influence)
        log_prob_shape = _log_prob_shape(an, eqn)
        _, leaf_refs, _ = site.split(eqn.inputs)
        kept = [
            _parameter_alignment(site, i, aval_of(r, an.scope).shape, log_prob_shape, infl)
            for i, (r, infl) in enumerate(zip(leaf_refs, leaf_influence))
        ]
        # the baseline is no parent
        ancestors = alignment.union([alignment.whole(key_influence), *kept])
        an.subs[eqn.uid] = ancestors  # aligned with the log-probability's axes where they are
        estimator = site.resolved_estimator(value_dtype)
        branching = isinstance(estimator, estimators.Branching)
        if isinstance(site.estimator, estimators.RELAX) and an.depth > 0:
            raise SiteError(
                site_message(
                    site.label,
                    "estimator 'relax' adds its control variate's terms once per site, which "
                    "jax_scg supports only for sites outside loops, branches and checkpoints.",
                    "move the site out of the loop or branch, or use another estimator there "
                    '(e.g. "score_function" with a baseline).',
                )
            )
        if site.causal and an.depth > 0:
            raise SiteError(
                site_message(
                    site.label,
                    "a causal sequence site (Autoregressive) runs its own generation loop and "
                    "is supported outside loops, branches and checkpoints only.",
                    "sample the sequence outside lax.scan/lax.cond/jax.checkpoint (its "
                    "sample_fn may hold the loop), and pass the tokens in.",
                )
            )
        if branching and an.depth > 0:
            raise SiteError(
                site_message(
                    site.label,
                    f"estimator {estimator.kind!r} runs the rest of the program once per branch "
                    "value, which jax_scg supports only for sites outside loops, branches and "
                    "checkpoints (a site inside lax.scan would need a branch per iteration).",
                    "move the site out of the loop or branch, or use another estimator there "
                    '(e.g. "score_function" with a baseline).',
                )
            )
        if estimator != primitive.SCORE_FUNCTION and not branching:
            if site.has_baseline:
                raise SiteError(
                    site_message(
                        site.label,
                        "baseline= was given to a pathwise or relaxed site, which has no "
                        "score term for a baseline to act on.",
                        'drop the baseline, or use estimator="score_function".',
                    )
                )
            if an.options.reverse_over_reverse and _uses_implicit_gradients(an, eqn):
                raise SiteError(
                    site_message(
                        site.label,
                        "reverse-mode differentiation of scg.grad (grad of grad) reached JAX's "
                        "implicit reparameterisation gradient (Gamma/Beta/Dirichlet), which JAX "
                        "cannot differentiate in reverse mode again (it contains a while_loop).",
                        "take second derivatives forward over reverse: jax.hessian("
                        "scg.surrogate(fn)) or jax.jacfwd(scg.grad(fn)); or use "
                        'estimator="score_function" for this site.',
                    )
                )
            if site.score_through and an.depth == 0:  # split: the jumps' costs score it
                an.local_atoms.append(("site", eqn.uid))
                an.lp_shapes[("site", eqn.uid)] = log_prob_shape
            return [ancestors]
        atom = ("site", eqn.uid)
        an.local_atoms.append(atom)
        an.lp_shapes[atom] = log_prob_shape
        return [alignment.union([ancestors, alignment.site_value(atom, len(log_prob_shape))])]

    def differentiable(self, an, eqn):
        site = eqn.params["site"]
        out = an.scope.avals[eqn.outputs[0]]
        if site.resolved_estimator(out.dtype) == primitive.SCORE_FUNCTION:
            return [False]  # the value is stopped; its score carries the derivative
        return [_is_inexact(out) and any(an.is_diff(r) for r in eqn.inputs[1:])]

    def mark(self, an, eqn, tree_outputs):
        return None

    def demand(self, an, eqn, need):
        site = eqn.params["site"]
        if site.has_baseline or site.name in an.options.baselines:
            need |= alignment.whole(an.subs.get(eqn.uid, EMPTY))

    def emit(self, ev, eqn):
        site = eqn.params["site"]
        _, leaf_refs, baseline_ref = site.split(list(eqn.inputs))
        leaves = [jnp.asarray(ev.read(r)) for r in leaf_refs]  # the jaxpr's literals are scalars
        # A fissioned loop draws without computing baselines (they are used after it).
        wants_baseline = baseline_ref is not None and (ev.log_probs or ev.costs)
        baseline = ev.read(baseline_ref) if wants_baseline else None
        out = eqn.outputs[0]
        branches = ev.branches
        if out in ev.given_values:  # drawn in a fissioned loop (loops.py): not drawn again
            key, value = None, ev.env[out]
        else:
            key = ev.read(eqn.inputs[0])
            if branches is not None:
                for uid in branches.uids_in(ev.analysis.subs[eqn.uid]):
                    key = primitive.fold_branch(site, key, branches.index[uid])
            skipped = 1 + site.treedef.num_leaves if baseline_ref is not None else -1
            operands = [
                None if i == skipped and not wants_baseline else jnp.asarray(ev.read(r))
                for i, r in enumerate(eqn.inputs)
                if i > 0
            ]
            value = primitive.draw_or_planted(site, [key, *operands])
        if ev.options.validate and ev.log_probs:
            _check_site_at_runtime(site, value, leaves)
        atom = ("site", eqn.uid)
        estimator = site.resolved_estimator(value.dtype)
        if isinstance(estimator, estimators.Branching):
            index = branches.index[eqn.uid]
            estimator = site.estimator_from([ev.read(r) for r in eqn.inputs])
            value, weight = primitive.branch_draw(site, estimator, key, leaves, index)
            branches.weights[eqn.uid] = weight.astype(tau_dtype())
            if estimator.centred_branches:
                centred = jnp.asarray(estimator.centred_branches, tau_dtype())[index]
                branches.centred[eqn.uid] = centred
        elif isinstance(estimator, estimators.Relaxation):
            value = primitive.relaxed_draw(site, estimator, key, leaves)
        elif site.score_through and atom in ev.analysis.split_atoms:
            # Pathwise, and the score for the costs through its jumps (value stopped there).
            if ev.log_probs and atom in ev.analysis.needed and atom not in ev.lp_elems:
                stopped = lax.stop_gradient(value)
                ev.lp_elems[atom] = _site_log_probs(ev.options, site, stopped, leaves, None)
        elif estimator == primitive.SCORE_FUNCTION:
            value = lax.stop_gradient(value)
            baseline = _baseline_for(site, baseline, ev.options)
            wanted = atom in ev.analysis.needed or baseline is not None
            if ev.log_probs and wanted and atom not in ev.lp_elems:
                ev.lp_elems[atom] = _site_log_probs(ev.options, site, value, leaves, baseline)
            if ev.costs and baseline is not None:
                log_probs = ev.lp_elems[atom]
                ev.baseline_terms.append(_baseline_term(ev, eqn, site, log_probs, baseline))
            if ev.costs and key is not None and isinstance(site.estimator, estimators.RELAX):
                ev.baseline_terms.append(_control_term(ev, eqn, site, key))
        ev.set_outputs(eqn, [value])


def _jump_atoms(scope: Scope) -> dict:
    """``{top-level equation uid: atoms}``: where split discontinuous sites jump."""
    out: dict = {}
    for eqn in scope.eqns:
        site = eqn.params.get("site") if eqn.is_site else None
        for uid in site.score_through if site is not None else ():
            out[uid] = out.get(uid, EMPTY) | {("site", eqn.uid)}
    return out


def _site_log_probs(options: Options, site, value, leaves, baseline):
    """The site's elementwise log-probabilities, with what the options add to them."""
    log_probs = primitive.log_prob(site, value, leaves).astype(tau_dtype())
    offset = options.log_prob_offsets.get(site.name)
    if offset is not None:
        log_probs = log_probs + offset
    if options.fit_baselines and site.has_baseline:
        b = primitive.broadcast_baseline(site, baseline, log_probs)
        log_probs = log_probs + (b - lax.stop_gradient(b))
    return log_probs


def _parameter_alignment(site, leaf_index: int, shape, log_prob_shape, influence):
    """What of a parameter's alignment reaches the site's value.

    Element ``i`` of the value (batch axes first, then the event axes) is drawn from the
    parameters' element ``i``: a parameter shaped like the log-probability, or with the
    log-probability's shape as its leading axes (Categorical logits ``batch + (K,)``, batched
    at every ``vmap`` level), keeps its alignment on those axes; its other axes mix.
    """
    ndim = len(log_prob_shape)
    shape = tuple(shape)
    if shape == log_prob_shape:
        return influence
    leading = shape[:ndim] == log_prob_shape and len(shape) > ndim
    batched = all(level[1 + leaf_index] == 0 for level in site.batch_axes)
    if leading and batched:
        return alignment.keep_axes_below(influence, ndim)
    return alignment.whole(influence)


def _site_operand_structs(an: Analysis, eqn: Eqn):
    """``(key, leaves)`` of a site as shape/dtype structs, for abstract evaluation."""
    key, leaves, _ = eqn.params["site"].split(_operand_structs(an, eqn))
    return key, leaves


def _operand_structs(an: Analysis, eqn: Eqn):
    return [
        jax.ShapeDtypeStruct(aval_of(r, an.scope).shape, aval_of(r, an.scope).dtype)
        for r in eqn.inputs
    ]


def _uses_implicit_gradients(an: Analysis, eqn: Eqn) -> bool:
    """Whether the site's draw goes through jax.random.gamma (implicit gradients)."""
    site = eqn.params["site"]
    key, leaves = _site_operand_structs(an, eqn)
    text = str(jax.make_jaxpr(lambda k, ls: primitive.draw(site, k, ls))(key, leaves))
    return "random_gamma" in text


def _log_prob_shape(an: Analysis, eqn: Eqn) -> tuple:
    """Shape of the site's elementwise log-probability (batch levels, then batch shape)."""
    site = eqn.params["site"]
    key, leaves = _site_operand_structs(an, eqn)
    return tuple(primitive.abstract_log_prob(site, key, leaves).shape)


def _baseline_term(ev, eqn, site, log_probs, baseline):
    """Mao et al. (2019): Σ_i ⊡(ancestors of i) (1 − ⊡(log p(x_i))) b_i; zero in value.

    Its derivatives subtract b_i from the cost that multiplies element i's score, at every
    order, with the ancestors' box keeping higher-order terms low-variance.
    """
    if site.has_baseline:
        b = primitive.broadcast_baseline(site, baseline, log_probs)
    else:
        b = jnp.asarray(baseline, log_probs.dtype)
        try:
            b = jnp.broadcast_to(b, log_probs.shape)
        except ValueError:
            raise SiteError(
                site_message(
                    site.label,
                    f"the baseline given by name has shape {b.shape}, which does not broadcast "
                    f"to the site's log-probability shape {log_probs.shape}.",
                    "give one baseline per element of the site (see scg.downstream_costs for "
                    "the shapes), or a scalar.",
                )
            ) from None
    offset = ev.options.log_prob_offsets.get(site.name)
    if offset is not None:  # d/d offset is the downstream cost itself, not it minus b
        log_probs = log_probs - offset + lax.stop_gradient(offset)
    own = 1.0 - magic_box(log_probs)
    ancestors = ev.analysis.subs[eqn.uid]
    if ancestors or ev.branches is not None:  # element i gets its own ancestors' box
        own = own * ev.box(ancestors, jnp.shape(log_probs)).astype(own.dtype)
    return jnp.sum(own * b).astype(tau_dtype())


def _control_term(ev, eqn, site, key):
    """RELAX's control-variate term (zero in value; see ``estimators.RELAX``)."""
    operands = [jnp.asarray(ev.read(r)) for r in eqn.inputs[1:]]
    term = primitive.control_term(site, key, operands).astype(tau_dtype())
    ancestors = alignment.whole(ev.analysis.subs[eqn.uid])
    if ancestors or ev.branches is not None:  # counted once over other sites' branches
        term = term * ev.box(ancestors).astype(term.dtype)
    return term


def _baseline_for(site, given, options: Options):
    injected = options.baselines.get(site.name) if site.name is not None else None
    if injected is not None and site.has_baseline:
        raise SiteError(
            site_message(
                site.label,
                "a baseline was given both to sample(baseline=...) and by name from outside.",
                "give it in one place only.",
            )
        )
    return given if site.has_baseline else injected


def _check_site_at_runtime(site, value, leaves):
    """checkify checks: valid parameters, and a finite log-probability for the drawn value."""
    from jax.experimental import checkify

    label = site.label.replace("{", "{{").replace("}", "}}")
    dist = jax.tree_util.tree_unflatten(site.treedef, leaves)
    checks = getattr(dist, "parameter_checks", None)
    for ok, what in checks() if checks is not None else []:
        fix = "check the parameters you pass (e.g. scale > 0, probs in [0, 1], no NaN)."
        checkify.check(jnp.all(ok), site_message(label, f"invalid parameter: {what}.", fix))
    lp = primitive.log_prob(site, lax.stop_gradient(value), leaves)
    checkify.check(
        jnp.all(jnp.isfinite(lp)),
        site_message(
            label,
            "the drawn value has a non-finite log-probability.",
            "check for NaN or infinite parameters (a masked category must have logits -inf "
            "and never be drawn).",
        ),
    )


_DEFAULT = Rule()


class CausalRule(Rule):
    """``scg.causal(values, sequence)``: each element of ``values`` takes, for the causal sites
    whose value ``sequence`` is, the sequence's alignment (position ``t``: the score of
    positions ``<= t``) instead of the whole sites it reached ``values`` with."""

    def influence(self, an, eqn, in_influence):
        values, sequence = in_influence
        aligned = {e for e in sequence if e[0] == alignment.ELEM}
        for entry in sorted(aligned, key=repr):
            if not an.is_causal(entry[1]):
                site = an.sites[site_uid(entry[1])].params["site"]
                raise SiteError(
                    site_message(
                        site.label,
                        "scg.causal(values, sequence) was given this site's value as the "
                        "sequence, but the site is not causal: its elements are not "
                        "conditionals p(x_t | x_<t) along the last axis.",
                        "sample the sequence from jax_scg.distributions.Autoregressive, or "
                        "drop scg.causal (elementwise costs keep per-element credit without it).",
                    )
                )
        if not aligned:
            raise SiteError(
                site_message(
                    ", ".join(
                        sorted(
                            an.sites[site_uid(alignment.base(e))].params["site"].label
                            for e in sequence
                        )
                    )
                    or "scg.causal",
                    "scg.causal(values, sequence) needs the sampled tokens as the sequence "
                    "(or a value computed from them elementwise); this sequence mixes "
                    "positions or comes from no sample site, so the declaration cannot apply.",
                    "pass the value scg.sample returned for the Autoregressive site.",
                )
            )
        declared = {e[1] for e in aligned}
        kept = {e for e in values if alignment.base(e) not in declared}
        return [alignment.normalize(kept | aligned)]

    def mark(self, an, eqn, tree_outputs):
        return None  # a cost node: its box comes from the declared influence


RULES: dict = {
    primitive.sample_p.name: SampleRule(),
    primitive.causal_p.name: CausalRule(),
}  # control_flow.py and loops.py add theirs


def rule_for(eqn: Eqn) -> Rule:
    return RULES.get(eqn.name, _DEFAULT)


def check_site_names(scope: Scope):
    """Explicit site names must be unique within a program."""
    seen: dict = {}
    for eqn in scope.sites():
        name = eqn.params["site"].name
        if name is None:
            continue
        if name in seen:
            raise SiteError(
                site_message(
                    repr(name),
                    "two sample calls in one program have this name (a function with a named "
                    "site called twice counts as two sites).",
                    "give each sample call its own name, e.g. by adding an index.",
                )
            )
        seen[name] = eqn


def site_credit(analysis: Analysis) -> dict:
    """``{site uid: (credit, fallback operation or None)}`` for the vectorised score-function
    sites that reach a cost: ``"per element"`` where every cost node gets the score of the
    elements it depends on, ``"whole site"`` where some cost node gets the whole site's."""
    shapes = {site_uid(a): shape for a, shape in analysis.lp_shapes.items()}
    plain_somewhere: dict = {}
    for an in analysis.cost_scopes():
        for leaf in an.leaves():
            for entry in an.of(leaf):
                uid = site_uid(alignment.base(entry))
                plain = entry[0] != alignment.ELEM
                plain_somewhere[uid] = plain_somewhere.get(uid, False) or plain
    fallbacks = analysis.credit_fallbacks()
    finest = {
        uid: "per position (causal)" if eqn.params["site"].causal else "per element"
        for uid, eqn in analysis.sites.items()
    }
    return {
        uid: ("whole site" if plain else finest[uid], fallbacks.get(uid))
        for uid, plain in plain_somewhere.items()
        if shapes.get(uid, ())
    }


def warn_credit_fallbacks(scope: Scope, analysis: Analysis):
    """One ``FallbackWarning`` per vectorised site whose credit an unknown operation coarsened."""
    sites = {eqn.uid: eqn.params["site"] for eqn in scope.sites()}
    for uid, op in sorted(analysis.credit_fallbacks().items()):
        causal = (
            "for per-position costs of this causal sequence (a KL penalty from another pass "
            "of a model over the tokens), declare them with scg.causal(costs, tokens); "
            if sites[uid].causal
            else ""
        )
        warnings.warn(
            site_message(
                sites[uid].label,
                f"per-element credit falls back to the whole site at `{op}`.\n  Why: jax_scg "
                f"has no rule saying which elements of `{op}`'s output depend on which "
                "elements of its inputs, so every cost downstream of it gets the score of "
                "every element of this site. The estimate stays unbiased, with more variance.",
                f"{causal}write that step with elementwise operations, indexing or jax.vmap "
                "(which keep per-element credit), or split the site into several sample calls. "
                "To silence: warnings.filterwarnings('ignore', category=scg.FallbackWarning).",
            ),
            FallbackWarning,
            stacklevel=user_stacklevel(),
        )


def named_score_sites(scope: Scope) -> dict:
    """Name -> log-probability shape of the named score-function sites at the top level."""
    analysis = Analysis(scope, [EMPTY] * len(scope.inputs))
    out = {}
    for eqn in scope.eqns:
        site = eqn.params.get("site") if eqn.is_site else None
        if site is None or site.name is None:
            continue
        if site.resolved_estimator(scope.avals[eqn.outputs[0]].dtype) == primitive.SCORE_FUNCTION:
            out[site.name] = _log_prob_shape(analysis, eqn)
    return out


def evaluate_surrogate(scope: Scope, flat_args, options: Options, with_baselines: bool = True):
    """Runs ``scope`` with a surrogate for output 0; returns (surrogate, all outputs).

    With branching sites (``estimators.Branching``), the program runs once per combination of
    their branches, vectorised with ``vmap`` (values no branching site influences stay
    unbatched, so they are computed once); the surrogate is the sum over combinations and the
    other outputs are those of the first combination.
    """
    check_site_names(scope)
    keys.check_keys(scope)
    analysis = Analysis(scope, [EMPTY] * len(scope.inputs), options)
    analysis.mark_costs([0])
    analysis.demand()
    warn_credit_fallbacks(scope, analysis)

    def run(branches=None):
        ev = Evaluation(analysis, flat_args, branches=branches)
        objective = ev.surrogate(scope.outputs[0])
        if ev.baseline_terms and with_baselines:
            objective = objective + ev.baseline_total().astype(jnp.result_type(objective))
        return objective, ev.outputs()

    branching = _branching_sites(analysis)
    if not branching:
        return run()
    counts = [
        primitive.num_branches(eqn.params["site"], _operand_structs(analysis, eqn))
        for eqn, _ in branching
    ]
    rows = jnp.asarray(list(itertools.product(*(range(k) for k in counts))), jnp.int32)
    labels = {eqn.uid: eqn.params["site"].label for eqn, _ in branching}

    def run_row(row):
        return run(_Branches({eqn.uid: row[i] for i, (eqn, _) in enumerate(branching)}, labels))

    objectives, outputs = jax.vmap(run_row)(rows)
    return jnp.sum(objectives, axis=0), [out[0] for out in outputs]


def _branching_sites(analysis: Analysis) -> list:
    """``(equation, estimator)`` of the program's sites whose estimator branches."""
    out = []
    for eqn in analysis.scope.eqns:
        if eqn.is_site:
            site = eqn.params["site"]
            estimator = site.resolved_estimator(analysis.scope.avals[eqn.outputs[0]].dtype)
            if isinstance(estimator, estimators.Branching):
                out.append((eqn, estimator))
    return out


@dataclasses.dataclass
class _Branches:
    """The current branch of every branching site, during one (vmapped) evaluation.

    A cost's surrogate is multiplied by the weight of the current branch of each branching
    site that influences it (elementwise where credit is per element), and by ``1[branch ==
    0]`` for the others, so that a cost is counted once over the branches it does not vary in.
    """

    index: dict  # site uid -> branch index (a tracer of the branch vmap)
    labels: dict  # site uid -> label, for messages
    weights: dict = dataclasses.field(default_factory=dict)  # site uid -> elementwise weight
    centred: dict = dataclasses.field(default_factory=dict)  # site uid -> 1. if centred branch

    def centre(self, atoms, term):
        """``term`` with its value removed when a site's current branch is centred (REBAR)."""
        flags = [self.centred[u] for u in self.uids_in(atoms) if u in self.centred]
        if not flags:
            return term
        kept = functools.reduce(lambda a, b: a * b, [1.0 - f for f in flags])
        return term - (1.0 - kept).astype(jnp.result_type(term)) * lax.stop_gradient(term)

    def uid_of(self, entry):
        atom = entry
        while atom[0] in ("outer", alignment.ELEM):
            atom = atom[1]
        return atom[1] if atom[0] == "site" and atom[1] in self.index else None

    def entries(self, atoms) -> tuple:
        """The influence entries that stand for branching sites."""
        return tuple(a for a in atoms if self.uid_of(a) is not None)

    def uids_in(self, atoms) -> list:
        return sorted({self.uid_of(a) for a in atoms} - {None})

    def factor(self, entries, shape):
        """The product of the weights (and indicators) for a cost of ``shape``."""
        factor = jnp.ones((), tau_dtype())
        present = set()
        for entry in sorted(entries, key=repr):
            uid = self.uid_of(entry)
            present.add(uid)
            weight = self.weights[uid]
            if entry[0] == alignment.ELEM:
                mixed = [k for k, a in enumerate(entry[2]) if a is None and weight.shape[k] != 1]
                if not mixed:
                    weight = alignment.log_prob_for_cost(weight, entry[2], shape)
            else:
                mixed = weight.size != 1
                weight = jnp.reshape(weight, ()) if not mixed else weight
            if mixed:
                raise SiteError(
                    site_message(
                        self.labels[uid],
                        "a branching estimator needs each cost element to depend on one "
                        "element of this vectorised site only (per-element credit), but a cost "
                        "combines several of its elements (e.g. a sum or a matrix product over "
                        "them, or a loop that receives the whole array).",
                        "keep the per-element structure up to the per-element costs, sample "
                        "the elements as separate sites, or use another estimator.",
                    )
                )
            factor = factor * weight
        for uid, index in self.index.items():
            if uid not in present:
                factor = factor * (index == 0).astype(factor.dtype)
        return factor


# The rules of control flow and collectives register themselves in RULES.
from jax_scg._src import collectives as _collectives  # noqa: E402, F401
from jax_scg._src import control_flow as _control_flow  # noqa: E402, F401
from jax_scg._src import loops as _loops  # noqa: E402, F401
