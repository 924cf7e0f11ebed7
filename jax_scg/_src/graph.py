"""``scg.graph``: the stochastic computation graph that ``scg.surrogate`` finds, as a value.

Nodes are the differentiated inputs, the sites (stochastic nodes) and the cost nodes;
deterministic computation is collapsed into edges: an edge ``a -> b`` means ``b`` depends on
``a`` through deterministic operations only. It renders as Graphviz DOT text and as a
matplotlib figure in the paper's convention (circles for stochastic nodes, squares for
inputs and costs), without the Graphviz binaries.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import warnings

import jax
import jax.numpy as jnp

from jax_scg._src import discontinuities, interpreter, primitive
from jax_scg._src.errors import FallbackWarning
from jax_scg._src.jaxpr import Const, scan_counts, scope_from_jaxpr


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of the graph.

    Attributes:
      id: a short unique id (``"theta"``, ``"s0"``, ``"c1"``).
      kind: ``"input"``, ``"site"`` or ``"cost"``.
      label: what to print: the argument's name, the site's name or distribution and source
        line, the cost's operation.
      shape: the value's shape.
      estimator: for sites, the estimator used (``"score_function"``, ``"pathwise"``, ...).
      distribution: for sites, the distribution's class name.
      baseline: for sites, the ids of the nodes the baseline depends on (None: no baseline).
      in_loop: for sites and costs inside ``scan``/``while_loop``/``cond``, that primitive's
        name (the node then stands for one per iteration or branch); else None.
      credit: for vectorised score-function sites that reach a cost, how costs are credited:
        ``"per element"`` (each cost gets the score of the elements it depends on),
        ``"per position (causal)"`` (the same for a causal sequence site, ``Autoregressive``:
        a cost at position ``t`` gets the score of positions ``<= t``),
        ``"whole site"`` (some cost gets every element's score, because it mixes them), or
        ``"whole site (no rule for OP)"`` where an operation without a per-element rule
        forced it (a ``FallbackWarning``); else None.
      note: for sites, why the estimator is not the default one, e.g. ``"auto: the cost jumps
        at `round` (model.py:12): ..."`` where a reparameterised site's value meets a
        discontinuity: ``estimator="auto"`` then takes the score function for the costs
        through the jumps and stays pathwise for the others (the site's ``estimator`` is
        then ``"pathwise"``), or, where that split does not apply (a jump inside a loop or
        branch, the value feeding another site), for every cost; else None.
      loop: for sites and costs inside a top-level ``lax.scan`` that the rewrite changes, how
        it runs that loop: ``"fissioned"`` (scores, boxes and costs after the loop,
        vectorised: no backward pass through time, for the derivatives that the ``fission``
        setting gives to the split loop) or ``"not fissioned: REASON"`` (README, "Loops");
        else None.
    """

    id: str
    kind: str
    label: str
    shape: tuple
    estimator: str | None = None
    distribution: str | None = None
    baseline: tuple | None = None
    in_loop: str | None = None
    credit: str | None = None
    note: str | None = None
    loop: str | None = None


@dataclasses.dataclass(frozen=True)
class Graph:
    """A stochastic computation graph: nodes, and edges ``(from id, to id)``.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import examples
      >>> m = examples.FIGURE1[4]
      >>> g = scg.graph(m.fn)(m.theta, jax.random.key(0))
      >>> [n.id for n in g.sites], sorted(g.parents("s1"))
      (['s0', 's1'], ['s0', 'theta'])
    """

    nodes: tuple
    edges: tuple
    surrogate_text: str

    @property
    def inputs(self):
        return [n for n in self.nodes if n.kind == "input"]

    @property
    def sites(self):
        return [n for n in self.nodes if n.kind == "site"]

    @property
    def costs(self):
        return [n for n in self.nodes if n.kind == "cost"]

    @property
    def fallbacks(self) -> dict:
        """``{node id: [reasons]}`` where the rewrite chose something coarser or different
        than the user may expect (drawn dashed by ``draw()``, with the reasons below)."""
        return {n.id: fallbacks(n) for n in self.nodes if fallbacks(n)}

    def parents(self, node_id: str) -> set:
        """Ids of the nodes with an edge into ``node_id``."""
        return {a for a, b in self.edges if b == node_id}

    def to_dot(self) -> str:
        """Graphviz DOT text: circles for sites, boxes for inputs and costs."""
        lines = ["digraph scg {", "  rankdir=LR;"]
        for n in self.nodes:
            shape = {"site": "circle", "cost": "box", "input": "box"}[n.kind]
            style = ', style="rounded"' if n.kind == "input" else ""
            label = _node_text(n).replace('"', r"\"")
            lines.append(f'  {n.id} [shape={shape}{style}, label="{label}"];')
        lines += [f"  {a} -> {b};" for a, b in self.edges]
        lines.append("}")
        return "\n".join(lines)

    def draw(self, ax=None):
        """Draws the graph with matplotlib (layered by depth); returns the axes."""
        import matplotlib.pyplot as plt
        from matplotlib.patches import Circle, FancyBboxPatch

        if ax is None:
            _, ax = plt.subplots(figsize=(2.2 * (1 + max(self._depths().values())), 3))
        positions = self._layout()
        for a, b in self.edges:
            (x0, y0), (x1, y1) = positions[a], positions[b]
            skips = abs(x1 - x0) > 1.5 and abs(y1 - y0) < 0.5  # would cross a node between
            ax.annotate(
                "",
                xy=(x1, y1),
                xytext=(x0, y0),
                arrowprops=dict(
                    arrowstyle="->",
                    shrinkA=18,
                    shrinkB=18,
                    color="0.3",
                    connectionstyle=f"arc3,rad={-0.35 if skips else 0.0}",
                ),
            )
        for n in self.nodes:
            x, y = positions[n.id]
            line = "--" if fallbacks(n) else "-"
            if n.kind == "site":
                ax.add_patch(Circle((x, y), 0.28, fill=False, lw=1.5, ls=line))
            else:
                ax.add_patch(
                    FancyBboxPatch(
                        (x - 0.3, y - 0.22),
                        0.6,
                        0.44,
                        boxstyle="round,pad=0.02" if n.kind == "input" else "square,pad=0.02",
                        fill=False,
                        lw=1.5,
                        ls=line,
                    )
                )
            ax.text(x, y, _short_text(n), ha="center", va="center", fontsize=8)
        xs = [p[0] for p in positions.values()]
        ys = [p[1] for p in positions.values()]
        caption = [f"{n.id}: {reason}" for n in self.nodes for reason in fallbacks(n)]
        if caption:  # dashed nodes: where the rewrite chose something coarser (README)
            ax.text(min(xs) - 0.5, min(ys) - 0.6, "\n".join(caption), fontsize=6, va="top")
        ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
        ax.set_ylim(min(ys) - 0.6 - 0.25 * len(caption), max(ys) + 0.6)
        ax.set_aspect("equal")
        ax.axis("off")
        return ax

    def _depths(self) -> dict:
        depth = {n.id: 0 for n in self.nodes}
        for _ in self.nodes:  # longest path from the inputs (the graph is acyclic)
            for a, b in self.edges:
                if a != b:  # a loop's carry gives a site an edge to itself
                    depth[b] = max(depth[b], depth[a] + 1)
        for n in self.nodes:
            if n.kind == "cost":
                depth[n.id] = max(depth.values())
        return depth

    def _layout(self) -> dict:
        depth = self._depths()
        columns: dict = {}
        for n in self.nodes:
            columns.setdefault(depth[n.id], []).append(n.id)
        positions = {}
        for d, ids in columns.items():
            for i, node_id in enumerate(ids):
                positions[node_id] = (1.3 * d, (len(ids) - 1) / 2 - i)
        return positions

    def __str__(self) -> str:
        lines = ["Stochastic computation graph:"]
        for n in self.nodes:
            parents = sorted(self.parents(n.id))
            lines.append(f"  {n.id:>6}  {_node_text(n)}  <- {', '.join(parents) or '-'}")
        return "\n".join(lines)


def _node_text(n: Node) -> str:
    if n.kind == "site":
        extra = f", baseline of {list(n.baseline)}" if n.baseline is not None else ""
        loop = f", per {n.in_loop} iteration" if n.in_loop else ""
        credit = f", credit {n.credit}" if n.credit else ""
        note = f", {n.note}" if n.note else ""
        fission = f", loop {n.loop}" if n.loop else ""
        tags = f"{n.estimator}{note}{extra}{loop}{fission}{credit}"
        return f"{n.label}: {n.distribution}{list(n.shape)} [{tags}]"
    if n.kind == "cost":
        loop = f" (per {n.in_loop} iteration)" if n.in_loop else ""
        fission = f" [loop {n.loop}]" if n.loop else ""
        return f"cost {n.label}{list(n.shape)}{loop}{fission}"
    return f"{n.label}{list(n.shape)}"


def fallbacks(n: Node) -> list:
    """Where the rewrite chose something coarser or different for this node than the user
    may expect (README, "Fallbacks"): whole-site credit forced by an operation without a
    rule, a discontinuity's score function, a loop that is not fissioned."""
    found = []
    if n.credit and "no rule" in n.credit:
        found.append(f"credit {n.credit}")
    if n.note:
        found.append(n.note)
    if n.loop and n.loop.startswith("not fissioned"):
        found.append(f"loop {n.loop}")
    return found


def _short_text(n: Node) -> str:
    if n.kind == "site":
        return n.label if len(n.label) <= 8 else n.id
    return n.label if n.kind == "input" else n.id


class _Builder:
    """One forward pass: which nodes reach each variable through deterministic operations."""

    def __init__(self):
        self.nodes: dict = {}
        self.edges: set = set()
        self._site_ids: dict = {}
        self._cost_count = 0

    def run(self, scope, input_nodes, in_loop=None) -> dict:
        reach = dict(zip(scope.inputs, input_nodes))

        def of(ref):
            return frozenset() if isinstance(ref, Const) else reach.get(ref, frozenset())

        for eqn in scope.eqns:
            ins = [of(r) for r in eqn.inputs]
            if eqn.is_site:
                outs = [frozenset({self._site(eqn, scope, of, in_loop)})] * len(eqn.outputs)
            elif eqn.subs:
                outs = self._subprogram(eqn, ins, in_loop or eqn.name)
            else:
                outs = [frozenset().union(*ins)] * len(eqn.outputs)
            reach.update(zip(eqn.outputs, outs))
        return reach

    def _outputs(self, sub, ins, loop) -> list:
        reach = self.run(sub, ins, loop)
        return [reach.get(o, frozenset()) for o in sub.outputs]

    def _subprogram(self, eqn, ins, loop) -> list:
        """Reach through loops and branches: per operand where the structure is known."""
        everything = frozenset().union(*ins)
        if eqn.name == "scan":
            nc, nk = scan_counts(eqn.params)
            carry = ins[nc : nc + nk]
            while True:  # the carry's reach grows to a fixed point
                outs = self._outputs(eqn.subs[0], ins[:nc] + carry + ins[nc + nk :], loop)
                grown = [c | o for c, o in zip(carry, outs[:nk])]
                if grown == carry:
                    return carry + outs[nk:]
                carry = grown
        if eqn.name == "cond":
            index, operands = ins[0], ins[1:]
            branch_outs = [self._outputs(sub, operands, loop) for sub in eqn.subs]
            return [index | frozenset().union(*outs) for outs in zip(*branch_outs)]
        if len(eqn.subs) == 1 and len(eqn.subs[0].inputs) == len(ins):
            return self._outputs(eqn.subs[0], ins, loop)
        inner = frozenset()
        for sub in eqn.subs:  # anything else (while loops): every output reaches everything
            inner |= frozenset().union(*self._outputs(sub, [everything] * len(sub.inputs), loop))
        return [everything | inner] * len(eqn.outputs)

    def _site(self, eqn, scope, of, in_loop) -> str:
        site = eqn.params["site"]
        key, leaves, baseline = site.split(list(eqn.inputs))
        node_id = self._site_ids.setdefault(eqn.uid, f"s{len(self._site_ids)}")
        value = scope.avals[eqn.outputs[0]]
        estimator = site.resolved_estimator(value.dtype)
        if getattr(site.estimator, "kind", None) == "relax":  # a score function site, named
            estimator = site.estimator
        parents = frozenset().union(of(key), *(of(r) for r in leaves))
        self.nodes[node_id] = Node(
            node_id,
            "site",
            site.name if site.name is not None else site.label,
            tuple(value.shape),
            estimator=getattr(estimator, "name", estimator),
            distribution=site.distribution,
            baseline=None if baseline is None else tuple(sorted(of(baseline))),
            in_loop=in_loop,
            note=_discontinuity_note(site),
        )
        self.edges |= {(p, node_id) for p in parents}
        return node_id

    def cost(self, label, shape, parents, in_loop=None, loop=None):
        node_id = f"c{self._cost_count}"
        self._cost_count += 1
        self.nodes[node_id] = Node(node_id, "cost", label, tuple(shape), in_loop=in_loop, loop=loop)
        self.edges |= {(p, node_id) for p in parents}


def _discontinuity_note(site) -> str | None:
    if not site.discontinuity:
        return None
    if site.score_through:
        return (
            f"auto: the cost jumps at {site.discontinuity}: score function for the costs "
            "through the jumps, pathwise for the others"
        )
    return f"auto: the cost jumps at {site.discontinuity}: score function for every cost"


def graph(fn, argnums=0):
    """The stochastic computation graph of ``fn``, as ``scg.surrogate`` would use it.

    Args:
      fn: a function as for ``scg.surrogate``.
      argnums: the differentiated argument(s), shown as input nodes.

    Returns:
      A function with ``fn``'s signature returning a ``Graph``: its ``nodes`` (inputs, sites
      with distribution, estimator, shape and baseline, cost nodes), ``edges`` (deterministic
      computation collapsed), ``to_dot()``, ``draw()`` (matplotlib) and ``surrogate_text``
      (the rewritten surrogate's jaxpr).

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=theta), name="x")
      ...     return (x - 0.5) ** 2 + theta
      >>> g = scg.graph(f)(0.3, jax.random.key(0))
      >>> sorted(g.edges)
      [('s0', 'c1'), ('theta', 'c0'), ('theta', 's0')]
      >>> [(n.id, n.label) for n in g.costs]
      [('c0', 'theta'), ('c1', 'integer_pow')]
    """
    argnum_list = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def graph_fn(*args, **kwargs):
        traced, flat_args = _over_array_leaves(functools.partial(fn, **kwargs), args)
        closed = primitive.tracing_for_sites(  # as surrogate does
            getattr(fn, "__name__", repr(fn)),
            lambda: jax.make_jaxpr(traced)(*flat_args),
        )
        scope = scope_from_jaxpr(closed.jaxpr, closed.consts)
        discontinuities.mark_discontinuous_sites(scope, warn=False)
        builder = _Builder()
        names = _argument_names(fn, len(args))
        input_nodes = []
        for i, arg in enumerate(args):
            leaves = _over_array_leaves(None, arg)[1]
            if i in argnum_list:
                node_id = names[i]
                shape = jnp.shape(leaves[0]) if len(leaves) == 1 else (len(leaves),)
                builder.nodes[node_id] = Node(node_id, "input", names[i], tuple(shape))
                input_nodes += [frozenset({node_id})] * len(leaves)
            else:
                input_nodes += [frozenset()] * len(leaves)
        input_nodes += [frozenset()] * (len(scope.inputs) - len(input_nodes))
        reach = builder.run(scope, input_nodes)
        _add_costs(builder, scope, reach)
        with warnings.catch_warnings():  # the graph shows each site's credit itself
            warnings.simplefilter("ignore", FallbackWarning)
            traced, _ = _over_array_leaves(functools.partial(_surrogate(fn), **kwargs), args)
            surrogate_text = str(jax.make_jaxpr(traced)(*flat_args))
        nodes = sorted(builder.nodes.values(), key=_node_order)
        return Graph(tuple(nodes), tuple(sorted(builder.edges)), surrogate_text)

    return graph_fn


def _over_array_leaves(fn, args):
    from jax_scg._src.surrogate import over_array_leaves  # surrogate imports this module

    return over_array_leaves(fn, args)


def _node_order(node: Node):
    return {"input": 0, "site": 1, "cost": 2}[node.kind]  # stable: discovery order within


def _surrogate(fn):
    from jax_scg._src.surrogate import surrogate

    return surrogate(fn)


def _add_costs(builder: _Builder, scope, reach):
    """Cost nodes: the leaves of the objective's cost tree (loops: one per loop)."""
    analysis = interpreter.Analysis(scope, [frozenset()] * len(scope.inputs))
    analysis.mark_costs([0], collapse=False)
    for uid, (credit, fallback) in interpreter.site_credit(analysis).items():
        node_id = builder._site_ids[uid]
        text = credit if fallback is None else f"{credit} (no rule for {fallback})"
        builder.nodes[node_id] = dataclasses.replace(builder.nodes[node_id], credit=text)
    leaves = _reached_leaves(analysis, scope)
    loops = _loop_fission(scope)
    for ref in scope.inputs:
        if ref in leaves:
            builder.cost(_input_label(reach[ref]), scope.avals[ref].shape, reach[ref])
    for eqn in scope.eqns:
        if eqn.uid in loops:
            for site in (s for sub in eqn.subs for s in sub.sites()):
                node_id = builder._site_ids[site.uid]
                builder.nodes[node_id] = dataclasses.replace(
                    builder.nodes[node_id], loop=loops[eqn.uid]
                )
        if eqn.name == "scan" and any(o in leaves for o in eqn.outputs):
            reached = frozenset().union(*(reach[o] for o in eqn.outputs))
            shape = scope.avals[eqn.outputs[-1]].shape
            builder.cost("scan", shape, reached, in_loop="scan", loop=loops.get(eqn.uid))
            continue
        for o in eqn.outputs:
            if o in leaves:
                label = "sample value" if eqn.is_site else eqn.name
                builder.cost(label, scope.avals[o].shape, reach[o])


def _loop_fission(scope) -> dict:
    """``{top-level scan uid: "fissioned" or "not fissioned: REASON"}`` for the loops the
    rewrite changes, planned as ``scg.surrogate`` plans them."""
    analysis = interpreter.Analysis(scope, [frozenset()] * len(scope.inputs))
    analysis.mark_costs([0])
    analysis.demand()
    out = {}
    for eqn in scope.eqns:
        info = analysis.subs.get(eqn.uid)
        if eqn.name != "scan" or info is None:
            continue
        if info.fission is not None:
            out[eqn.uid] = "fissioned"
        elif info.fission_note != "nothing to move after it":
            out[eqn.uid] = f"not fissioned: {info.fission_note}"
    return out


def _reached_leaves(analysis, scope) -> set:
    """The cost tree's leaves reached from the objective through its linear equations."""
    producer = {o: eqn for eqn in scope.eqns for o in eqn.outputs}
    leaves, stack, seen = set(), [scope.outputs[0]], set()
    while stack:
        ref = stack.pop()
        if isinstance(ref, Const) or ref in seen:
            continue
        seen.add(ref)
        eqn = producer.get(ref)
        linear = None if eqn is None else analysis.passthrough.get(eqn.uid)
        if linear is None or eqn.name == "scan":
            leaves.add(ref)
        else:
            stack += [eqn.inputs[i] for i in linear]
    return leaves


def _input_label(reached) -> str:
    return next(iter(sorted(reached)), "input")


def _argument_names(fn, count) -> list:
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(count):
        name = params[i] if i < len(params) else f"arg{i}"
        names.append(name if name.isidentifier() else f"arg{i}")
    return names
