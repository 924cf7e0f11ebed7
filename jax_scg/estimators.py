"""Estimators to pass as ``scg.sample(..., estimator=...)`` besides the strings
``"auto"``, ``"score_function"`` and ``"pathwise"``; see the table in
``jax_scg._src.estimators``."""

from jax_scg._src.estimators import Relaxation as Relaxation
from jax_scg._src.estimators import gumbel_softmax as gumbel_softmax
from jax_scg._src.estimators import straight_through as straight_through

__all__ = ["Relaxation", "gumbel_softmax", "straight_through"]
