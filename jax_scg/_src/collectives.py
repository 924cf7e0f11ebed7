"""Collectives inside ``jax.shard_map``: one estimate spanning devices.

Inside ``shard_map`` each device runs the traced program on its shard; a ``psum`` makes a value
on one device depend on the sites of every device along the collective's mesh axes. Two rules
keep the surrogate unbiased at every order:

- **Linear collectives** (``psum``, ``pmean``'s ``psum``, ``ppermute``, ``all_gather``,
  ``all_to_all``, ``psum_scatter``) continue the cost tree: the surrogate of ``psum(c_d)`` is
  ``psum(⊡(τ_d) c_d)``, each device's costs boxed with its own sites only (the usual
  data-parallel ``pmean`` of per-device losses).
- **A value computed after a collective** depends on the sites of every device it gathered
  from: its influence holds ``("mesh", atom, axes)``, whose log-probability is the site's,
  summed with ``psum`` over those of ``axes`` that it varies over (a site replicated along an
  axis is one site there, counted once). A cost such as ``psum(x_d)**2`` then gets the box of
  every device's site, which gives its Hessian the cross terms between devices.

JAX's default ``check_vma=True`` types each value with the mesh axes it varies over, which is
what tells a site replicated along an axis from one drawn per device. Under ``check_vma=False``
(and for ``vmap``'s named axes) that type is missing, so a site whose influence reaches a
collective there is refused, as is a collective inside a loop or branch body (not supported
yet).
"""

from __future__ import annotations

from jax_scg._src import alignment, estimators
from jax_scg._src.errors import SiteError, site_message
from jax_scg._src.interpreter import RULES, Rule, site_uid
from jax_scg._src.jaxpr import aval_of, collective_axes, varying_axes

# Element i of the output depends on element i of the operand on every device.
_ELEMENTWISE = frozenset({"psum", "psum_invariant", "pmax", "pmin", "ppermute", "pbroadcast"})
# The output moves or regroups elements across devices and axes.
_REGROUPING = frozenset({"all_gather", "all_gather_invariant", "all_to_all", "reduce_scatter"})
# Linear in their operands: the cost tree continues through them.
_LINEAR = frozenset(
    {"psum", "psum_invariant", "ppermute", "all_gather", "all_gather_invariant", "all_to_all"}
    | {"reduce_scatter", "pbroadcast"}
)


class CollectiveRule(Rule):
    """A collective over mesh axes: its outputs see each input's sites across those axes."""

    def influence(self, an, eqn, in_influence):
        axes = collective_axes(eqn)
        outs = []
        for ref, entries in zip(eqn.inputs, in_influence):
            if entries:
                _check_supported(an, eqn, ref, entries, axes)
            if eqn.name not in _ELEMENTWISE:
                entries = alignment.whole(entries)
            outs.append(alignment.relabel(entries, lambda a: alignment.across(a, axes)))
        if len(outs) != len(eqn.outputs):  # one operand, several outputs: each sees it all
            outs = [alignment.whole(alignment.union(outs))] * len(eqn.outputs)
        return outs

    def mark(self, an, eqn, tree_outputs):
        return tuple(range(len(eqn.inputs))) if eqn.name in _LINEAR else None


def _check_supported(an, eqn, ref, entries, axes):
    labels = sorted(
        {an.sites[site_uid(alignment.base(e))].params["site"].label for e in entries}, key=str
    )
    label = " and ".join(labels)
    where = f"`{eqn.name}` over {', '.join(map(repr, axes))}"
    if an.depth > 0:
        raise SiteError(
            site_message(
                label,
                f"the site's value reaches the collective {where} inside a loop, branch or "
                "checkpoint body; jax_scg supports collectives on sampled values only at the "
                "top level of the function it differentiates.",
                "move the collective after the loop (e.g. stack per-step values and psum "
                "them once), or compute one estimate per device and average the gradients "
                "(jax.lax.pmean of scg.grad's result).",
            )
        )
    missing = [a for a in axes if a not in varying_axes(aval_of(ref, an.scope))]
    if missing:
        raise SiteError(
            site_message(
                label,
                f"the site's value reaches the collective {where}, but JAX does not record "
                f"how values vary along {', '.join(map(repr, missing))} (shard_map with "
                "check_vma=False, or a vmap axis_name), so jax_scg cannot tell a site drawn "
                "once per device from one replicated across devices, nor count each once.",
                "use shard_map's default check_vma=True; or compute one estimate per device "
                "(scg.grad of the per-device loss) and average the gradients with "
                "jax.lax.pmean.",
            )
        )
    for uid in {site_uid(alignment.base(e)) for e in entries}:
        site_eqn = an.sites[uid]
        dtype = an.scope.avals[site_eqn.outputs[0]].dtype
        estimator = site_eqn.params["site"].resolved_estimator(dtype)
        if isinstance(estimator, estimators.Branching):
            raise SiteError(
                site_message(
                    site_eqn.params["site"].label,
                    f"estimator {estimator.kind!r} runs the program once per branch value, "
                    f"which jax_scg does not support across devices (the site's value "
                    f"reaches {where}).",
                    'use "score_function" with a baseline for this site, or compute one '
                    "estimate per device and average the gradients with jax.lax.pmean.",
                )
            )


RULES.update(dict.fromkeys(_ELEMENTWISE | _REGROUPING, CollectiveRule()))
