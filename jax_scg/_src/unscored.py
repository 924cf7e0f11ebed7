"""Random choices that no ``sample`` site scores: plain ``jax.random`` draws of parameters.

``jax.random.bernoulli(key, p)`` is ``uniform(key) < p``, ``jax.random.categorical(key,
logits)`` is ``argmax(logits + gumbel(key))``: a discrete value whose *distribution* depends
on ``p``, but whose derivative is zero. When ``p`` carries the derivative being taken and the
objective depends on the draw, the estimate lacks the draw's score term and is biased, with
no error anywhere: the commonest slip when a program is moved to jax_scg (one draw left as
it was). This module finds such draws and warns, naming the operation and the user's line.

A forward walk marks every value with four facts (``Marks``):

- ``bits``: raw random bits (``random_bits`` and the like, through bit operations only);
- ``noise``: a floating-point value computed from raw bits (a uniform, a Gumbel, a Normal);
- ``diff``: it may carry a derivative with respect to the differentiated inputs, other than
  through a ``sample`` site (a jump in a reparameterised site's value is
  ``discontinuities.py``'s: that site takes the score function there);
- ``draw``: it depends on an unscored draw (the first operation that made one).

An unscored draw is made where an integer or boolean (a comparison, ``argmax``, a float to
int conversion) or a step (``round``, ``floor``, ``sign``, ...) is computed from values with
both noise and a derivative: where the jump falls depends on the parameters. As in
``discontinuities.py``, a discrete value that picks among values which themselves carry the
same noise and derivative (``where(x > 0, x, 0.1 * x)``, ``x[argmax(x)]``) is continuous;
draws with parameters inside ``stop_gradient`` or a user's ``custom_jvp``/``custom_vjp`` (a
straight-through estimator written on purpose) are not flagged. The walk runs only where the
program holds a raw random operation outside ``sample`` sites.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

from jax_scg._src.discontinuities import JUMPY, OPAQUE, STEPS, grow_to_fixpoint
from jax_scg._src.discontinuities import inexact as _inexact
from jax_scg._src.errors import UnscoredDrawWarning, user_stacklevel
from jax_scg._src.jaxpr import Const, Eqn, Scope, aval_of, scan_counts

# Primitives that make raw random bits, and random floats with parameters of their own.
_BITS = frozenset({"random_bits", "threefry2x32", "rng_bit_generator", "rng_uniform"})
_NOISE = frozenset({"random_gamma"})
# Integer operations that keep raw bits raw (``uniform`` shifts and ors them into a float).
_BIT_OPS = frozenset(
    {
        "shift_right_logical",
        "shift_left",
        "shift_right_arithmetic",
        "or",
        "and",
        "xor",
        "not",
        "convert_element_type",
        "bitcast_convert_type",
        "reshape",
        "broadcast_in_dim",
        "squeeze",
        "expand_dims",
        "slice",
        "dynamic_slice",
        "concatenate",
        "transpose",
        "copy",
        "copy_p",
    }
)
_STEPS = STEPS | JUMPY


class Draw(NamedTuple):
    """The operation that made an unscored draw, and the user's line that called it."""

    operation: str
    source: str

    def describe(self) -> str:
        return f"`{self.operation}` at {self.source}" if self.source else f"`{self.operation}`"


class Marks(NamedTuple):
    bits: bool = False
    noise: bool = False
    diff: bool = False
    draw: Draw | None = None


EMPTY = Marks()


def _union(marks) -> Marks:
    draw = next((m.draw for m in marks if m.draw is not None), None)
    return Marks(
        any(m.bits for m in marks), any(m.noise for m in marks), any(m.diff for m in marks), draw
    )


def _join(a: Marks, b: Marks) -> Marks:
    return _union([a, b])


def has_raw_randomness(scope: Scope) -> bool:
    """Whether ``scope`` or a sub-program makes random bits outside ``sample`` sites."""
    return any(
        eqn.name in _BITS or eqn.name in _NOISE or any(map(has_raw_randomness, eqn.subs))
        for eqn in scope.eqns
    )


class _Walker:
    def __init__(self):
        self.enclosing: list = []  # the equations whose sub-programs are being walked

    def draw(self, eqn: Eqn) -> Draw:
        """A ``Draw`` at ``eqn``, with the user's line of the nearest enclosing call that has
        one (an operation inside ``searchsorted``'s loop has none of its own)."""
        sources = (e.source for e in reversed(self.enclosing))
        return Draw(eqn.name, next((s for s in sources if s), ""))

    def walk(self, scope: Scope, in_marks) -> list:
        env = dict(zip(scope.inputs, in_marks))

        def of(ref):
            return EMPTY if isinstance(ref, Const) else env.get(ref, EMPTY)

        for eqn in scope.eqns:
            self.enclosing.append(eqn)
            try:
                outs = self.equation(scope, eqn, [of(r) for r in eqn.inputs])
            finally:
                self.enclosing.pop()
            env.update(zip(eqn.outputs, outs))
        return [of(r) for r in scope.outputs]

    def equation(self, scope: Scope, eqn: Eqn, ins) -> list:
        marks = _union(ins)
        if eqn.is_site:
            return [self.site(marks)]
        if eqn.name in _BITS:
            return [Marks(bits=True, draw=marks.draw)] * len(eqn.outputs)
        if eqn.name in _NOISE:
            return [Marks(noise=True, diff=marks.diff, draw=marks.draw)] * len(eqn.outputs)
        if eqn.name == "stop_gradient":
            return [m._replace(diff=False) for m in ins]
        if eqn.name in OPAQUE:
            noisy = Marks(noise=marks.noise or marks.bits, diff=marks.diff, draw=marks.draw)
            return [noisy if _inexact(scope.avals[o]) else EMPTY._replace(draw=marks.draw)
                    for o in eqn.outputs]  # fmt: skip
        if eqn.name == "scan":
            return self.scan(eqn, ins)
        if eqn.name == "while":
            return self.while_loop(eqn, ins)
        if eqn.name == "cond":
            return self.cond(scope, eqn, ins)
        if len(eqn.subs) == 1:
            (sub,) = eqn.subs
            if len(sub.inputs) == len(ins) and len(sub.outputs) == len(eqn.outputs):
                return self.walk(sub, ins)
        return self.default(scope, eqn, ins, marks)

    @staticmethod
    def site(marks: Marks) -> Marks:
        # The site's own randomness is scored, or reparameterised, and a jump in a
        # reparameterised value is ``discontinuities.py``'s (the site takes the score there),
        # so its value carries no derivative here; an unscored draw in its parameters is
        # carried on to what its value reaches.
        return Marks(draw=marks.draw)

    def default(self, scope: Scope, eqn: Eqn, ins, marks: Marks) -> list:
        if not (marks.bits or marks.noise or marks.draw):
            return [Marks(diff=marks.diff and _inexact(scope.avals[o])) for o in eqn.outputs]
        noisy = marks.noise or marks.bits
        jumps = marks.noise and marks.diff
        outs = []
        for out in eqn.outputs:
            if not _inexact(scope.avals[out]):
                draw = marks.draw or (self.draw(eqn) if jumps else None)
                outs.append(Marks(bits=marks.bits and eqn.name in _BIT_OPS, draw=draw))
                continue
            draw = marks.draw
            if draw is not None and self.picks_continuously(scope, eqn, ins):
                draw = _union([m for r, m in zip(eqn.inputs, ins) if _is_float(r, scope)]).draw
            if draw is None and jumps and eqn.name in _STEPS:
                draw = self.draw(eqn)
            outs.append(Marks(noise=noisy, diff=marks.diff, draw=draw))
        return outs

    @staticmethod
    def picks_continuously(scope: Scope, eqn: Eqn, ins) -> bool:
        """Whether an integer input picks among floating-point inputs that carry noise and a
        derivative themselves (``where(x > 0, x, 0.1 * x)``): assumed continuous."""
        return any(
            m.noise and m.diff for r, m in zip(eqn.inputs, ins) if _is_float(r, scope)
        ) and any(m.draw for r, m in zip(eqn.inputs, ins) if not _is_float(r, scope))

    def scan(self, eqn: Eqn, ins) -> list:
        nc, nk = scan_counts(eqn.params)
        (body,) = eqn.subs
        consts, xs = list(ins[:nc]), list(ins[nc + nk :])
        step = lambda carry: self.walk(body, consts + carry + xs)
        carry, outs = grow_to_fixpoint(list(ins[nc : nc + nk]), step, _join)
        return carry + outs[nk:]

    def while_loop(self, eqn: Eqn, ins) -> list:
        p = eqn.params
        n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
        cond, body = eqn.subs
        cond_consts, body_consts = list(ins[:n_cond]), list(ins[n_cond : n_cond + n_body])
        step = lambda carry: self.walk(body, body_consts + carry)
        carry, _ = grow_to_fixpoint(list(ins[n_cond + n_body :]), step, _join)
        (predicate,) = self.walk(cond, cond_consts + carry)
        # A trip count decided by noise and the parameters is an unscored draw too.
        draw = predicate.draw
        if draw is None and predicate.noise and predicate.diff:
            draw = self.draw(eqn)
        return [c._replace(draw=c.draw or draw) for c in carry]

    def cond(self, scope: Scope, eqn: Eqn, ins) -> list:
        index, operands = ins[0], list(ins[1:])
        branch_outs = [self.walk(sub, operands) for sub in eqn.subs]
        outs = []
        for j, out in enumerate(eqn.outputs):
            merged = _union([b[j] for b in branch_outs])
            continuous = _inexact(scope.avals[out]) and merged.noise and merged.diff
            draw = merged.draw or (None if continuous else index.draw)
            outs.append(merged._replace(draw=draw))
        return outs


def _is_float(ref, scope: Scope) -> bool:
    return _inexact(aval_of(ref, scope))


def find_unscored_draw(scope: Scope, differentiated) -> Draw | None:
    """The first unscored draw the objective (output 0) depends on, or None.

    Args:
      scope: the traced program.
      differentiated: per input of ``scope``, whether the derivative being taken is with
        respect to it.
    """
    if not any(differentiated) or not has_raw_randomness(scope):
        return None
    inputs = [
        Marks(diff=bool(d) and _inexact(scope.avals[v]))
        for v, d in zip(scope.inputs, differentiated)
    ]
    (objective, *_) = _Walker().walk(scope, inputs)
    return objective.draw


def warn_unscored_draws(scope: Scope, differentiated, fn_name: str) -> None:
    """Warns (``UnscoredDrawWarning``) if the objective depends on an unscored draw."""
    draw = find_unscored_draw(scope, differentiated)
    if draw is None:
        return
    warnings.warn(
        f"jax_scg: {fn_name}: {draw.describe()} makes a random discrete choice whose "
        "distribution depends on the parameters being differentiated (a plain jax.random "
        "draw, such as jax.random.bernoulli or categorical, of values that carry the "
        "derivative), and the objective depends on it. It is not a sample site, so its "
        "score term is missing and the gradient is biased (its derivative is zero).\n"
        "  What to do: draw it with scg.sample (e.g. scg.sample(key, "
        "D.Bernoulli(probs=p))); if a straight-through or other estimator of your own is "
        "meant, pass lax.stop_gradient of the parameters to the draw.",
        UnscoredDrawWarning,
        stacklevel=user_stacklevel(),
    )
