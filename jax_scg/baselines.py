"""Baselines beyond ``sample(..., baseline=b)``: leave-one-out and moving averages."""

from jax_scg._src.baselines import MovingAverage as MovingAverage
from jax_scg._src.baselines import MovingAverageState as MovingAverageState
from jax_scg._src.baselines import leave_one_out as leave_one_out
from jax_scg._src.baselines import leave_one_out_surrogate as leave_one_out_surrogate
from jax_scg._src.baselines import moving_average as moving_average

__all__ = [
    "MovingAverage",
    "MovingAverageState",
    "leave_one_out",
    "leave_one_out_surrogate",
    "moving_average",
]
