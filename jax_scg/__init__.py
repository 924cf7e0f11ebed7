"""jax_scg: gradient estimation with stochastic computation graphs, as a JAX transformation.

Schulman, Heess, Weber & Abbeel (2015), "Gradient Estimation Using Stochastic Computation
Graphs", in the any-order DiCE form (Foerster et al. 2018).
"""

from jax_scg import baselines as baselines
from jax_scg import distributions as distributions
from jax_scg import estimators as estimators
from jax_scg._src.condition import condition as condition
from jax_scg._src.errors import FallbackWarning as FallbackWarning
from jax_scg._src.errors import SiteError as SiteError
from jax_scg._src.errors import UnscoredDrawWarning as UnscoredDrawWarning
from jax_scg._src.graph import Graph as Graph
from jax_scg._src.graph import graph as graph
from jax_scg._src.interpreter import magic_box as magic_box
from jax_scg._src.monte_carlo import MonteCarloResult as MonteCarloResult
from jax_scg._src.monte_carlo import monte_carlo as monte_carlo
from jax_scg._src.primitive import causal as causal
from jax_scg._src.primitive import sample as sample
from jax_scg._src.primitive import sample_and_log_prob as sample_and_log_prob
from jax_scg._src.surrogate import downstream_costs as downstream_costs
from jax_scg._src.surrogate import grad as grad
from jax_scg._src.surrogate import grad_and_downstream_costs as grad_and_downstream_costs
from jax_scg._src.surrogate import surrogate as surrogate
from jax_scg._src.surrogate import value_and_grad as value_and_grad

__version__ = "0.1.0"

__all__ = [
    "FallbackWarning",
    "SiteError",
    "baselines",
    "causal",
    "condition",
    "distributions",
    "downstream_costs",
    "grad_and_downstream_costs",
    "estimators",
    "Graph",
    "grad",
    "graph",
    "magic_box",
    "monte_carlo",
    "MonteCarloResult",
    "sample",
    "sample_and_log_prob",
    "surrogate",
    "UnscoredDrawWarning",
    "value_and_grad",
]
