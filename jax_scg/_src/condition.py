"""``condition``: run a program with chosen values at its named sites (replay, exact checks)."""

from __future__ import annotations

import functools

from jax_scg._src import primitive


def condition(fn, values: dict):
    """``fn`` with the named sites taking the given values instead of drawing them.

    Like NumPyro's ``condition`` or oryx's ``plant``. The values replay chosen draws: under
    ``scg.surrogate``/``scg.grad`` a score-function site scores its planted value (so the
    estimate is the one those draws would give) and a pathwise site's planted value is fixed
    (no reparameterisation gradient). Summing a discrete program's estimates over all its
    sites' values, weighted by their probabilities, gives the estimator's exact expectation
    and variance, with no sampling noise.

    Args:
      fn: a function that calls ``scg.sample(..., name=...)``.
      values: ``{site name: value}``; each value shaped like one draw of that site. Sites
        inside loop bodies are not supported (a name there would plant one value in every
        iteration); branching and relaxed estimators refuse planted values.

    Returns:
      A function with ``fn``'s signature. It raises if a name in ``values`` names no site.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     return 1.0 + 2.0 * scg.sample(key, D.Bernoulli(logits=theta), name="x")
      >>> key = jax.random.key(0)
      >>> float(scg.condition(f, {"x": 1.0})(0.0, key))
      3.0
      >>> float(scg.grad(scg.condition(f, {"x": 1.0}))(0.0, key))  # 2 · d log σ(θ)/dθ
      1.0
    """
    values = dict(values)

    @functools.wraps(fn)
    def conditioned(*args, **kwargs):
        outer = primitive.PLANTED.get()
        planted = primitive.Planted({**(outer or {}), **values})
        token = primitive.PLANTED.set(planted)
        try:
            out = fn(*args, **kwargs)
        finally:
            primitive.PLANTED.reset(token)
        if outer is not None:
            outer.used.update(name for name in planted.used if name in outer)
        unused = sorted(set(values) - planted.used)
        if unused:
            raise ValueError(
                f"jax_scg: condition got values for {unused}, but "
                f"{getattr(fn, '__name__', 'the function')} has no sample call with "
                f"{'that name' if len(unused) == 1 else 'those names'}.\n  What to do: check the "
                "names passed to scg.sample(..., name=...)."
            )
        return out

    return conditioned
