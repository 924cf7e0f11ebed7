"""The four models of the peer suite (``benchmarks/peers.py``): a registry, no definitions.

The models are defined in ``jax_scg.examples`` ("chain"), ``models_elbo.py`` ("elbo" and
"sbn") and ``models.py`` ("rollout").

Every model is a :class:`PeerModel`: one flat float32 parameter vector ``theta``, the jax_scg
loss (``scg.grad`` of it is one gradient estimate), the hand-written DiCE surrogate with the
same credit assignment (``jax.grad`` of it gives the same estimate from the same key), the
exact gradient where there is one, and NumPyro's ``TraceGraph_ELBO`` for the ELBO models.
Every gradient is the gradient of the expectation of the returned value: the expected cost
for "chain" and "rollout" (minimised), the ELBO itself (not its negative) for "elbo" and
"sbn".

1. ``chain``: the two-site chain of Figure 1 (``jax_scg.examples.graph5``).
2. ``elbo``: N Bernoulli latents with a data plate (``models_elbo.elbo_*``, any N).
3. ``rollout``: a T-step ``lax.scan`` random-walk policy with Bernoulli actions and one cost
   per step (``models.walk_*``); its exact gradient comes from dynamic programming over the
   8 states.
4. ``sbn``: the two-layer sigmoid belief net on binarised digits (``models_elbo.sbn_*``).

The hand-written surrogates put inside each magic box exactly the costs that the box's sites
influence, as jax_scg's causality does: terms no site reaches (log p(z) under a Bernoulli(½)
prior, −½ log 2π, the softplus of logits that no sample influences) stay outside every box.
That is why an estimate equals jax_scg's key by key, and also why it differs, estimate by
estimate (not in mean), from a per-point surrogate ⊡(log q_i)·(log p(x_i, z_i) − log q_i)
that boxes those constants too, as Pyro's and NumPyro's ``TraceGraph_ELBO`` do.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import models
import models_elbo
import numpy as np

import jax_scg as scg
from jax_scg import examples

MODELS = ("chain", "elbo", "rollout", "sbn")


@dataclasses.dataclass(frozen=True)
class PeerModel:
    """One benchmark model: its parameters and every JAX system's gradient estimator.

    Attributes:
      name: "chain", "elbo", "rollout" or "sbn".
      title: a short description with its size, for tables.
      size: N for "elbo", T for "rollout", the number of images for "sbn", 2 for "chain".
      theta: the flat float32 parameter vector the gradient is taken with respect to.
      scg_loss: ``(theta, key) -> scalar``, the program jax_scg differentiates.
      handwritten: ``(theta, key) -> scalar``, the hand-written DiCE surrogate.
      objective: ``theta -> scalar``, the exact expectation (None where there is none).
      numpyro_factory: builds a fresh ``(theta, key) -> gradient`` of NumPyro's
        ``TraceGraph_ELBO`` (None for models NumPyro does not run).
    """

    name: str
    title: str
    size: int
    theta: jax.Array
    scg_loss: Callable
    handwritten: Callable
    objective: Callable | None = None
    numpyro_factory: Callable[[], Callable] | None = None

    def scg_grad(self) -> Callable:
        """A fresh ``scg.grad`` of the jax_scg loss: one estimate per ``(theta, key)``."""
        return scg.grad(lambda theta, key: self.scg_loss(theta, key))

    def hand_grad(self) -> Callable:
        """A fresh ``jax.grad`` of the hand-written surrogate."""
        return jax.grad(lambda theta, key: self.handwritten(theta, key))

    def exact_grad(self) -> np.ndarray | None:
        """The exact gradient of the objective in float64, or None."""
        if self.objective is None:
            return None
        return np.asarray(jax.grad(self.objective)(self.theta), np.float64)

    def systems(self) -> dict[str, Callable[[], Callable]]:
        """System name -> factory of a fresh, un-jitted ``(theta, key) -> gradient``."""
        out = {"hand-written JAX": self.hand_grad, "jax_scg": self.scg_grad}
        if self.numpyro_factory is not None:
            out["NumPyro TraceGraph_ELBO"] = self.numpyro_factory
        return out


# ------------------------------------------------------------------------------------------
# Model 1: the chain of Figure 1 (graph 5)

CHAIN_THETA = next(m.theta for m in examples.FIGURE1 if m.name == "graph5")


def chain() -> PeerModel:
    """Model 1: x1 ~ Bern(σ(θ0 + x0)), x2 ~ Bern(σ(θ1 x1 + θ0)), costs f1(x1), f2(x1, x2)."""
    return PeerModel(
        name="chain",
        title="1. chain (Figure 1, graph 5)",
        size=2,
        theta=jnp.asarray(CHAIN_THETA, jnp.float32),
        scg_loss=examples.graph5,
        handwritten=examples.graph5_handwritten,
        objective=examples.graph5_exact,
    )


def elbo(points: int = 256) -> PeerModel:
    """Model 2 with ``points`` data points, guide parameters φ = 0."""
    data = models_elbo.elbo_data(points)
    return PeerModel(
        name="elbo",
        title=f"2. elbo ({points} Bernoulli latents)",
        size=points,
        theta=jnp.zeros(points, jnp.float32),
        scg_loss=functools.partial(models_elbo.elbo_loss, data=data),
        handwritten=functools.partial(models_elbo.elbo_handwritten, data=data),
        objective=functools.partial(models_elbo.elbo_exact, data=data),
        numpyro_factory=functools.partial(models_elbo.numpyro_elbo_grad, data),
    )


def rollout(steps: int = 64) -> PeerModel:
    """Model 3 with ``steps`` steps."""
    return PeerModel(
        name="rollout",
        title=f"3. rollout (T = {steps})",
        size=steps,
        theta=jnp.asarray(models.WALK_THETA, jnp.float32),
        scg_loss=functools.partial(models.walk_loss, steps=steps),
        handwritten=functools.partial(models.walk_handwritten, steps=steps),
        objective=functools.partial(models.walk_exact, steps=steps),
    )


def sbn(images: int = 64) -> PeerModel:
    """Model 4 on the first ``images`` digits; θ is the flat vector of ``sbn_params()``."""
    x, flat, unravel = models_elbo.sbn_inputs(images)
    return PeerModel(
        name="sbn",
        title=f"4. sbn ({images} digits, {flat.size} parameters)",
        size=images,
        theta=flat,
        scg_loss=functools.partial(models_elbo.sbn_elbo, x=x, unravel=unravel),
        handwritten=functools.partial(models_elbo.sbn_handwritten, x=x, unravel=unravel),
        numpyro_factory=lambda: models_elbo.numpyro_sbn_grad(x, unravel),
    )


# ------------------------------------------------------------------------------------------
# All models; inputs for the torch side


def make(name: str, size: int | None = None) -> PeerModel:
    """The model called ``name``, at ``size`` (N, T or images; the main table's by default)."""
    if name == "chain":
        return chain()
    builder = {"elbo": elbo, "rollout": rollout, "sbn": sbn}[name]
    return builder() if size is None else builder(size)


def torch_inputs(elbo_sizes, images: int = 64) -> dict[str, np.ndarray]:
    """The arrays ``benchmarks/torch_peers.py`` reads (the npz keys of the specification)."""
    x, flat, unravel = models_elbo.sbn_inputs(images)
    arrays = {
        "chain_theta": np.asarray(CHAIN_THETA, np.float32),
        "chain_x0": np.asarray(examples.X0, np.float32),
        "rollout_theta": np.asarray(models.WALK_THETA, np.float32),
        "sbn_x": np.asarray(x, np.float32),
        "sbn_theta": np.asarray(flat, np.float32),
    }
    for n in sorted(set(elbo_sizes)):
        arrays[f"elbo_x_{n}"] = np.asarray(models_elbo.elbo_data(n), np.float32)
        arrays[f"elbo_phi_{n}"] = np.zeros(n, np.float32)
    shapes = unravel(flat)
    for name in models_elbo.SBN_NAMES:
        arrays[f"sbn_shape_{name}"] = np.asarray(shapes[name].shape, np.int64)
    return arrays
