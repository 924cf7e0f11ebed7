"""Probability distributions for stochastic computation graphs (public API).

See :mod:`jax_scg._src.distributions` for the distribution protocol, and
:mod:`jax_scg._src.kl` for the closed-form KL divergences (``kl_divergence``, ``register_kl``).
"""

from jax_scg._src.distributions import Autoregressive as Autoregressive
from jax_scg._src.distributions import Bernoulli as Bernoulli
from jax_scg._src.distributions import Beta as Beta
from jax_scg._src.distributions import Categorical as Categorical
from jax_scg._src.distributions import Dirichlet as Dirichlet
from jax_scg._src.distributions import Distribution as Distribution
from jax_scg._src.distributions import Exponential as Exponential
from jax_scg._src.distributions import Gamma as Gamma
from jax_scg._src.distributions import Normal as Normal
from jax_scg._src.distributions import OneHotCategorical as OneHotCategorical
from jax_scg._src.distributions import Poisson as Poisson
from jax_scg._src.distributions import Uniform as Uniform
from jax_scg._src.kl import kl_divergence as kl_divergence
from jax_scg._src.kl import register_kl as register_kl

__all__ = [
    "Autoregressive",
    "Bernoulli",
    "Beta",
    "Categorical",
    "Dirichlet",
    "Distribution",
    "Exponential",
    "Gamma",
    "Normal",
    "OneHotCategorical",
    "Poisson",
    "Uniform",
    "kl_divergence",
    "register_kl",
]
