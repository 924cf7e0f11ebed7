"""Estimators beyond score function and pathwise: continuous relaxations of discrete sites.

Each estimator is a small immutable value with the guarantee it gives. The relaxations here
are *biased*: they trade bias for low variance, as many users want (Jang et al. 2017;
Maddison et al. 2017; Bengio et al. 2013).

| estimator          | sites                        | guarantee                        |
|--------------------|------------------------------|----------------------------------|
| ``score_function`` | any                          | unbiased, every order            |
| ``pathwise``       | reparameterised, continuous  | unbiased, every order            |
| ``gumbel_softmax`` | Bernoulli, OneHotCategorical | biased: the costs see relaxed    |
|                    |                              | values, not samples              |
| ``straight_through`` | Bernoulli, OneHotCategorical | biased: exact samples forward, |
|                    |                              | the relaxation's gradient back   |
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jax_scg._src import distributions as dists


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """A relaxed (Gumbel-softmax / Concrete) estimator for a Bernoulli or one-hot site.

    Attributes:
      kind: ``"gumbel_softmax"`` (the costs see the relaxed value) or ``"straight_through"``
        (the costs see the exact sample; gradients flow through the relaxation).
      temperature: the relaxation's temperature τ > 0; lower is less biased, noisier.
    """

    kind: str
    temperature: float = 1.0
    guarantee = "biased"

    def __post_init__(self):
        if self.kind not in ("gumbel_softmax", "straight_through"):
            raise ValueError(f"unknown relaxation {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"the temperature must be > 0, got {self.temperature}")

    def supports(self, dist) -> bool:
        return isinstance(dist, (dists.Bernoulli, dists.OneHotCategorical))

    def draw(self, dist, key):
        """Relaxed draw sharing its random bits with ``dist.sample(key)``."""
        if isinstance(dist, dists.Bernoulli):
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
            u = jax.random.uniform(key, dist.batch_shape, logits.dtype)
            shifted = logits - (jnp.log(u) - jnp.log1p(-u))  # logits minus logistic noise
            hard = (shifted > 0).astype(logits.dtype)
            relaxed = jax.nn.sigmoid(shifted / self.temperature)
        else:
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape + dist.event_shape)
            shifted = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
            hard = jax.nn.one_hot(jnp.argmax(shifted, -1), logits.shape[-1], dtype=logits.dtype)
            relaxed = jax.nn.softmax(shifted / self.temperature, axis=-1)
        if self.kind == "gumbel_softmax":
            return relaxed
        return hard + relaxed - jax.lax.stop_gradient(relaxed)


def gumbel_softmax(temperature: float = 1.0) -> Relaxation:
    """Gumbel-softmax / Concrete relaxation (biased): the costs see relaxed values.

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.gumbel_softmax(0.5).guarantee
      'biased'
    """
    return Relaxation("gumbel_softmax", temperature)


def straight_through(temperature: float = 1.0) -> Relaxation:
    """Straight-through Gumbel estimator (biased): exact samples forward, relaxed backward.

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.straight_through().kind
      'straight_through'
    """
    return Relaxation("straight_through", temperature)


NAMED = {"gumbel_softmax": gumbel_softmax(), "straight_through": straight_through()}
