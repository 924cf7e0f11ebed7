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
import warnings

from jax_scg._src.errors import FallbackWarning, SiteError, site_message
from jax_scg._src.jaxpr import Const, Scope, scan_counts

# Operations whose output is the same key (or key data) as their input.
_SAME_KEY = frozenset(
    {"reshape", "squeeze", "expand_dims", "copy", "copy_p", "random_wrap", "random_unwrap"}
)
_STATIC_PICK = frozenset({"slice", "squeeze", "reshape", "broadcast_in_dim"})


def _freeze(value):
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


@dataclasses.dataclass
class _Use:
    label: str
    branch: tuple  # ((cond uid, branch index), ...): the branches the site is inside
    per_iteration: bool  # inside a loop, with a key that is the same every iteration


class _Keys:
    def __init__(self):
        self.uses: dict = {}  # key identity -> [_Use]
        self.plain: dict = {}  # key identity -> operation name (a jax.random call)
        self.fresh = 0

    def new_identity(self):
        self.fresh += 1
        return ("fresh", self.fresh)

    def walk(self, scope: Scope, identities, branch=(), invariant=frozenset()):
        """``identities``: per input of ``scope``, its key identity; ``invariant``: the
        identities that are the same at every iteration of an enclosing loop."""
        ident = dict(zip(scope.inputs, identities))

        def of(ref):
            if isinstance(ref, Const):
                return ("const", id(ref.value))
            return ident[ref]

        for eqn in scope.eqns:
            ins = [of(r) for r in eqn.inputs]
            if eqn.is_site:
                site = eqn.params["site"]
                if not site.has_value:  # a planted site draws nothing
                    key = ins[0]
                    use = _Use(site.label, branch, _derived_from(key, invariant))
                    self.uses.setdefault(key, []).append(use)
                outs = [self.new_identity() for _ in eqn.outputs]
            elif eqn.name in _SAME_KEY and len(eqn.inputs) == 1:
                outs = [ins[0]]
            elif eqn.name in _STATIC_PICK and len(eqn.inputs) == 1:
                outs = [(ins[0], eqn.name, _freeze(eqn.params))]
            elif eqn.subs:
                outs = self._sub_program(eqn, ins, branch, invariant)
            else:
                if eqn.name.startswith(("random_", "threefry")):
                    for key in ins:
                        self.plain.setdefault(key, eqn.name)
                outs = [self.new_identity() for _ in eqn.outputs]
            ident.update(zip(eqn.outputs, outs))

    def _sub_program(self, eqn, ins, branch, invariant):
        fresh = [self.new_identity() for _ in eqn.outputs]
        if eqn.name == "scan":
            nc, nk = scan_counts(eqn.params)
            (body,) = eqn.subs
            carried = [
                ins[nc + j] if _same(body.outputs[j], body.inputs[nc + j]) else self.new_identity()
                for j in range(nk)
            ]
            xs = [self.new_identity() for _ in ins[nc + nk :]]
            looped = invariant | set(ins[:nc]) | {c for c in carried if c in ins[nc : nc + nk]}
            if eqn.params.get("length", 2) > 1:
                self.walk(body, ins[:nc] + carried + xs, branch, frozenset(looped))
            else:
                self.walk(body, ins[:nc] + carried + xs, branch, invariant)
            return fresh
        if eqn.name == "while":
            p = eqn.params
            n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
            cond, body = eqn.subs
            consts = ins[n_cond : n_cond + n_body]
            init = ins[n_cond + n_body :]
            carried = [
                c if _same(body.outputs[j], body.inputs[n_body + j]) else self.new_identity()
                for j, c in enumerate(init)
            ]
            looped = invariant | set(consts) | {c for c in carried if c in init}
            self.walk(body, consts + carried, branch, frozenset(looped))
            return fresh
        if eqn.name == "cond":
            for b, sub in enumerate(eqn.subs):
                self.walk(sub, ins[1:], branch + ((eqn.uid, b),), invariant)
            return fresh
        for sub in eqn.subs:
            if len(sub.inputs) == len(ins):
                self.walk(sub, ins, branch, invariant)
        return fresh


def _same(ref, var) -> bool:
    return type(ref) is int and ref == var


def _derived_from(identity, roots) -> bool:
    """Whether a key identity is one of ``roots`` or picked from one by static indexing."""
    while identity not in roots:
        if not (isinstance(identity, tuple) and len(identity) == 3 and identity[0] != "fresh"):
            return False
        identity = identity[0]
    return True


def _exclusive(a: _Use, b: _Use) -> bool:
    """Whether two sites sit in different branches of one cond (never both run)."""
    branches_a = dict(a.branch)
    return any(uid in branches_a and branches_a[uid] != idx for uid, idx in b.branch)


def check_keys(scope: Scope):
    """Raises a ``SiteError`` where two sites draw from one key, or a loop's site draws from
    the same key every iteration; warns where a key feeds a site and a plain random call."""
    keys = _Keys()
    keys.walk(scope, [("input", i) for i in range(len(scope.inputs))])
    for key, uses in keys.uses.items():
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
        for i, first in enumerate(uses):
            for second in uses[i + 1 :]:
                if not _exclusive(first, second):
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
        if key in keys.plain:
            warnings.warn(
                site_message(
                    uses[0].label,
                    f"its key also feeds a plain jax.random call (`{keys.plain[key]}`), so that "
                    "call's values are correlated with the site's draw.",
                    "split the key first and give the site and the other call their own keys.",
                ),
                FallbackWarning,
                stacklevel=3,
            )
