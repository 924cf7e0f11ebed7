"""Baselines that need more than the current program, as small values in the style of optax.

- ``leave_one_out_surrogate(fn, num_samples)``: K copies of the single-sample program; each
  copy's named sites get the mean downstream cost of the other K - 1 copies as baseline
  (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free"), in the surrogate
  form of Mao et al. (2019), so that derivatives of every order are unbiased;
  ``leave_one_out(fn, num_samples)`` is its gradient.
- ``moving_average(decay)``: a bias-corrected exponential moving average of each named
  site's downstream cost, with its state passed in and out functionally.

Both act on *named* sites (``scg.sample(..., name=...)``) and keep every order unbiased:
the baseline of a copy or a step never depends on its own draws.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jax_scg._src.surrogate import _differentiate, downstream_costs, surrogate


def _with_key(args, key_argnum, key):
    args = list(args)
    args[key_argnum] = key
    return args


def leave_one_out_surrogate(
    fn, num_samples: int, *, key_argnum: int = 1, stop_gradient: bool = True
):
    """K copies of ``fn`` with leave-one-out baselines, as one surrogate objective.

    With keys ``k_1..k_K`` split from the key argument, the value is the mean over copies
    ``i`` of ``scg.surrogate(fn, baselines=B_i)`` at key ``k_i``, where ``B_i[w]`` is the mean
    over the other copies ``j != i`` of copy ``j``'s downstream cost of site ``w``
    (``scg.downstream_costs``). That is Mao et al. (2019)'s form
    ``S = (1/K) Σ_i [Σ_c ⊡(τ_i,c) c_i + Σ_w ⊡(anc_i,w) (1 − ⊡(log p_i,w)) B_i,w]``:
    ``B_i`` does not depend on copy ``i``'s draws, so every term factorises and derivatives
    of every order (``jax.grad``, ``jax.hessian``, a gradient inside an outer ``jax.grad``
    as in LOLA's look-ahead) are unbiased; the value is the mean of the copies' costs.

    Args:
      fn: the single-sample program ``fn(*args) -> scalar`` with named score sites.
      num_samples: K >= 2 copies, drawn from ``jax.random.split`` of the key argument.
      key_argnum: position of the PRNG key among ``fn``'s arguments.
      stop_gradient: the baselines ``B_i`` carry no derivative (the default). ``False``
        differentiates them too (as DiCE surrogates of the other copies' costs): the terms
        this adds from the second order on have mean zero, and measured on a two-site chain
        they raise the Hessian estimate's variance (README, "Baselines and validation").

    Returns:
      A function of ``fn``'s arguments returning the scalar surrogate.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda t, k: scg.sample(k, D.Bernoulli(logits=t), name="x") * 2.0
      >>> s = scg.baselines.leave_one_out_surrogate(f, 4)
      >>> jax.hessian(s)(0.3, jax.random.key(0)).shape
      ()
    """
    if num_samples < 2:
        raise ValueError("leave_one_out needs num_samples >= 2 (one copy has no others).")
    k = num_samples
    costs_fn = downstream_costs(fn, stop_gradient=stop_gradient)

    def surrogate_fn(*args):
        keys = jax.random.split(args[key_argnum], k)
        costs = jax.vmap(lambda key: costs_fn(*_with_key(args, key_argnum, key)))(keys)
        others = jax.tree_util.tree_map(lambda c: (c.sum(0, keepdims=True) - c) / (k - 1), costs)

        def one(key, baselines):
            return surrogate(fn, baselines=baselines)(*_with_key(args, key_argnum, key))

        return jnp.mean(jax.vmap(one)(keys, others))

    return surrogate_fn


def leave_one_out(fn, num_samples: int, *, argnums=0, key_argnum: int = 1):
    """A gradient estimator averaging ``num_samples`` copies with leave-one-out baselines:
    ``jax.grad`` of ``leave_one_out_surrogate``. The differentiated arguments may be models
    (an Equinox module), as for ``scg.grad``: ``None`` for their leaves that are not
    floating-point arrays.

    Args:
      fn: the single-sample program ``fn(*args) -> scalar`` with named score sites.
      num_samples: K >= 2 copies, drawn from ``jax.random.split`` of the key argument.
      argnums: as in ``jax.grad``.
      key_argnum: position of the PRNG key among ``fn``'s arguments.

    Returns:
      A function of ``fn``'s arguments returning the averaged gradient estimate.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda t, k: scg.sample(k, D.Bernoulli(logits=t), name="x") * 2.0
      >>> scg.baselines.leave_one_out(f, 4)(0.3, jax.random.key(0)).shape
      ()
    """
    loo = leave_one_out_surrogate(fn, num_samples, key_argnum=key_argnum)
    return _differentiate(loo, argnums, has_aux=False, with_value=False)


class MovingAverageState(NamedTuple):
    """The bias-corrected average of each named site's downstream cost, and the count.

    Examples:
      >>> import jax.numpy as jnp, jax_scg as scg
      >>> scg.baselines.moving_average(0.9).init({"x": jnp.zeros(3)}).count.tolist()
      0
    """

    mean: dict
    count: jax.Array


class MovingAverage(NamedTuple):
    """``init(costs_like) -> state``, ``update(state, costs) -> state``, ``value(state)``.

    Examples:
      >>> import jax_scg as scg
      >>> isinstance(scg.baselines.moving_average(), scg.baselines.MovingAverage)
      True
    """

    init: Callable
    update: Callable
    value: Callable


def moving_average(decay: float = 0.9) -> MovingAverage:
    """A bias-corrected exponential moving average of downstream costs, usable under jit.

    Examples:
      >>> import jax.numpy as jnp, jax_scg as scg
      >>> avg = scg.baselines.moving_average(0.9)
      >>> state = avg.init({"x": jnp.zeros(())})
      >>> state = avg.update(state, {"x": jnp.asarray(2.0)})
      >>> float(avg.value(state)["x"])  # bias-corrected: the first value itself
      2.0
    """

    if not 0.0 <= decay < 1.0:
        raise ValueError(f"moving_average needs 0 <= decay < 1, got {decay}.")

    def init(costs_like):
        mean = jax.tree_util.tree_map(jnp.zeros_like, costs_like)
        return MovingAverageState(mean, jnp.zeros((), jnp.int32))

    def update(state, costs):
        # The bias-corrected average m_t = EMA_t / (1 - d^t) obeys m_t = m_{t-1} + r (c_t -
        # m_{t-1}) with r = (1 - d) / (1 - d^t): r is exactly 1 at t = 1 (the first cost
        # itself, bit for bit) and numerator and denominator round alike afterwards.
        count = state.count + 1

        def step(m, c):
            d = jnp.asarray(decay, m.dtype)
            rate = (1 - d) / (1 - d ** count.astype(m.dtype))
            return m + rate * (c - m)

        return MovingAverageState(jax.tree_util.tree_map(step, state.mean, costs), count)

    def value(state):
        return state.mean

    return MovingAverage(init, update, value)
