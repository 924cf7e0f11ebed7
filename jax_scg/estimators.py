"""Estimators to pass as ``scg.sample(..., estimator=...)`` besides the strings
``"auto"``, ``"score_function"`` and ``"pathwise"``; see the table in
``jax_scg._src.estimators`` (and the README). Each is also available by its name as a string:
``"gumbel_softmax"``, ``"straight_through"``, ``"enumerate"``, ``"disarm"``, ``"arm"``,
``"measure_valued"``, ``"rebar"``."""

from jax_scg._src.estimators import ARM as ARM
from jax_scg._src.estimators import REBAR as REBAR
from jax_scg._src.estimators import RELAX as RELAX
from jax_scg._src.estimators import Branching as Branching
from jax_scg._src.estimators import DisARM as DisARM
from jax_scg._src.estimators import Enumerate as Enumerate
from jax_scg._src.estimators import MeasureValued as MeasureValued
from jax_scg._src.estimators import Relaxation as Relaxation
from jax_scg._src.estimators import arm as arm
from jax_scg._src.estimators import disarm as disarm
from jax_scg._src.estimators import enumerate_support as enumerate_support
from jax_scg._src.estimators import gumbel_softmax as gumbel_softmax
from jax_scg._src.estimators import measure_valued as measure_valued
from jax_scg._src.estimators import rebar as rebar
from jax_scg._src.estimators import relax as relax
from jax_scg._src.estimators import straight_through as straight_through

__all__ = [
    "ARM",
    "Branching",
    "DisARM",
    "Enumerate",
    "MeasureValued",
    "REBAR",
    "RELAX",
    "Relaxation",
    "arm",
    "disarm",
    "enumerate_support",
    "gumbel_softmax",
    "measure_valued",
    "rebar",
    "relax",
    "straight_through",
]
