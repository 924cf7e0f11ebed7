"""Estimators to pass as ``scg.sample(..., estimator=...)`` besides the strings
``"auto"``, ``"score_function"`` and ``"pathwise"``; see the table in
``jax_scg._src.estimators`` (and the README). Each is also available by its name as a string:
``"gumbel_softmax"``, ``"straight_through"``, ``"enumerate"``, ``"disarm"``, ``"arm"``,
``"measure_valued"``, ``"rebar"``, ``"indecater"``."""

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
from jax_scg._src.sets import IndeCateR as IndeCateR
from jax_scg._src.sets import UnorderedSet as UnorderedSet
from jax_scg._src.sets import indecater as indecater
from jax_scg._src.sets import unordered_set as unordered_set

__all__ = [
    "ARM",
    "Branching",
    "DisARM",
    "Enumerate",
    "IndeCateR",
    "MeasureValued",
    "REBAR",
    "RELAX",
    "Relaxation",
    "UnorderedSet",
    "arm",
    "disarm",
    "enumerate_support",
    "gumbel_softmax",
    "indecater",
    "measure_valued",
    "rebar",
    "relax",
    "straight_through",
    "unordered_set",
]
