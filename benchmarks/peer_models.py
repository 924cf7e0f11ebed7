"""The four models of the peer benchmark suite (``benchmarks/peers.py``), each defined once.

Every model is a :class:`PeerModel`: one flat float32 parameter vector ``theta``, the jax_scg
loss (``scg.grad`` of it is one gradient estimate), the hand-written DiCE surrogate with the
same credit assignment (``jax.grad`` of it gives the same estimate from the same key), the
exact gradient where there is one, and NumPyro's ``TraceGraph_ELBO`` for the ELBO models.
Every gradient is the gradient of the expectation of the returned value: the expected cost
for "chain" and "rollout" (minimised), the ELBO itself (not its negative) for "elbo" and
"sbn".

1. ``chain``: the two-site chain of Figure 1 (``jax_scg.examples.graph5``).
2. ``elbo``: N Bernoulli latents with a data plate (``variance_peers`` model A, any N).
3. ``rollout``: a T-step ``lax.scan`` random-walk policy with Bernoulli actions and one cost
   per step; its exact gradient comes from dynamic programming over the 8 states.
4. ``sbn``: the two-layer sigmoid belief net on binarised digits (``variance_peers`` model B).

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
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import variance_peers
from jax import lax
from jax.flatten_util import ravel_pytree

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg import examples
from jax_scg._src.distributions import _softplus  # the softplus of D.Bernoulli.log_prob

MODELS = ("chain", "elbo", "rollout", "sbn")
LOG_HALF = math.log(0.5)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: The flat order of model 4's θ: ``ravel_pytree`` of a dict flattens its sorted keys.
SBN_NAMES = ("V1", "V2", "W1", "W2", "b1", "b2", "c1", "c2")


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


# ------------------------------------------------------------------------------------------
# Model 2: N Bernoulli latents with a data plate


def elbo_data(points: int) -> jax.Array:
    """x_i = (2 b_i − 1) + ε_i with fixed keys; for 256 points ``variance_peers.model_a_data``."""
    signs = 2.0 * jax.random.bernoulli(jax.random.key(2024), 0.5, (points,)) - 1.0
    return signs + jax.random.normal(jax.random.key(2025), (points,))


def elbo_reached(data, z, phi):
    """The summands of log p(x_i, z_i) − log q(z_i) that z_i influences, per point.

    log p(x_i | z_i) = −½ (x_i − (2 z_i − 1))² − ½ log 2π and, with the parameters
    detached, log q(z_i) = z_i φ_i − softplus(φ_i); z_i reaches the first term of each.
    """
    return -0.5 * (data - (2.0 * z - 1.0)) ** 2 - z * lax.stop_gradient(phi)


def elbo_unreached(phi):
    """The summands that no latent influences, per point: log p(z_i) = log ½, −½ log 2π,
    softplus(φ_i) (the latter with no direct derivative, as ``detach_log_prob`` does)."""
    return LOG_HALF - HALF_LOG_2PI + jax.nn.softplus(lax.stop_gradient(phi))


def elbo_handwritten(phi, key, data):
    """Per-point DiCE: Σ_i ⊡(log q_i)·(reached_i) + Σ_i unreached_i (see the module text)."""
    q = D.Bernoulli(logits=phi)
    z = lax.stop_gradient(q.sample(key))
    boxed = scg.magic_box(q.log_prob(z)) * elbo_reached(data, z, phi)
    return jnp.sum(boxed + elbo_unreached(phi))


def numpyro_elbo_factory(data) -> Callable[[], Callable]:
    """Factory of NumPyro ``TraceGraph_ELBO`` gradients of model 2 (plate over points)."""
    points = data.shape[0]

    def make():
        import numpyro
        import numpyro.distributions as dist
        from numpyro.infer import TraceGraph_ELBO

        def model(x):
            with numpyro.plate("points", points):
                z = numpyro.sample("z", dist.Bernoulli(probs=0.5))
                numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)

        def guide(x):
            phi = numpyro.param("phi", jnp.zeros(points))
            with numpyro.plate("points", points):
                # probs=, not logits=: NumPyro 0.22's Bernoulli(logits=) log-prob gradient
                # is wrong at logits exactly 0, and φ = 0 here.
                numpyro.sample("z", dist.Bernoulli(probs=jax.nn.sigmoid(phi)))

        elbo = TraceGraph_ELBO()

        def grad(phi, key):
            negative = lambda p: elbo.loss(key, {"phi": p}, model, guide, data)
            return -jax.grad(negative)(phi)

        return grad

    return make


def elbo(points: int = 256) -> PeerModel:
    """Model 2 with ``points`` data points, guide parameters φ = 0."""
    data = elbo_data(points)
    return PeerModel(
        name="elbo",
        title=f"2. elbo ({points} Bernoulli latents)",
        size=points,
        theta=jnp.zeros(points, jnp.float32),
        scg_loss=functools.partial(variance_peers.scg_elbo_a, data=data),
        handwritten=functools.partial(elbo_handwritten, data=data),
        objective=functools.partial(variance_peers.elbo_exact_a, data=data),
        numpyro_factory=numpyro_elbo_factory(data),
    )


# ------------------------------------------------------------------------------------------
# Model 3: a T-step random-walk policy rollout in lax.scan

ROLLOUT_THETA = (0.3, -1.0)
TOP_STATE = 7.0  # states 0, 1, ..., 7


def policy_logits(theta, state):
    """Logit of action 1 in ``state`` (a float in 0..7)."""
    return theta[0] + theta[1] * (state / TOP_STATE - 0.5)


def rollout_step(state, action):
    """s' = clip(s + 2a − 1, 0, 7) and its cost r = (s'/7 − 0.6)²."""
    new_state = jnp.clip(state + 2.0 * action - 1.0, 0.0, TOP_STATE)
    return new_state, (new_state / TOP_STATE - 0.6) ** 2


def rollout_loss(theta, key, steps):
    """The jax_scg program: per-step costs stacked by the scan and summed (reward-to-go)."""

    def body(state, k):
        action = scg.sample(k, D.Bernoulli(logits=policy_logits(theta, state)))
        return rollout_step(state, action)

    _, costs = lax.scan(body, jnp.zeros((), theta.dtype), jax.random.split(key, steps))
    return costs.sum()


def rollout_handwritten(theta, key, steps):
    """Reward-to-go DiCE by hand: Σ_t ⊡(Σ_{u ≤ t} log π(a_u | s_u)) r_t."""

    def body(state, k):
        policy = D.Bernoulli(logits=policy_logits(theta, state))
        action = lax.stop_gradient(policy.sample(k))
        state, cost = rollout_step(state, action)
        return state, (policy.log_prob(action), cost)

    init = jnp.zeros((), theta.dtype)
    _, (log_probs, costs) = lax.scan(body, init, jax.random.split(key, steps))
    return jnp.sum(scg.magic_box(jnp.cumsum(log_probs)) * costs)


def rollout_exact(theta, steps):
    """E[Σ_t r_t] by forward dynamic programming over the distribution p_t(s) of the state."""
    states = jnp.arange(8, dtype=jnp.float32)
    up, up_cost = rollout_step(states, 1.0)
    down, down_cost = rollout_step(states, 0.0)
    p_up = jax.nn.sigmoid(policy_logits(theta, states))
    expected_cost = p_up * up_cost + (1.0 - p_up) * down_cost  # per state
    transition = p_up[:, None] * jax.nn.one_hot(up.astype(jnp.int32), 8) + (1.0 - p_up)[
        :, None
    ] * jax.nn.one_hot(down.astype(jnp.int32), 8)

    def body(p, _):
        return p @ transition, p @ expected_cost

    _, costs = lax.scan(body, jax.nn.one_hot(0, 8), None, length=steps)
    return costs.sum()


def rollout(steps: int = 64) -> PeerModel:
    """Model 3 with ``steps`` steps."""
    return PeerModel(
        name="rollout",
        title=f"3. rollout (T = {steps})",
        size=steps,
        theta=jnp.asarray(ROLLOUT_THETA, jnp.float32),
        scg_loss=functools.partial(rollout_loss, steps=steps),
        handwritten=functools.partial(rollout_handwritten, steps=steps),
        objective=functools.partial(rollout_exact, steps=steps),
    )


# ------------------------------------------------------------------------------------------
# Model 4: a sigmoid belief net on binarised digits

Z1, Z2 = variance_peers.Z1, variance_peers.Z2


def sbn_handwritten(flat, key, x, unravel):
    """DiCE by hand with jax_scg's credit: per image, and within an image per element.

    In image i, with logits a = x V1ᵀ + c1 of q(z1), b = z1 V2ᵀ + c2 of q(z2),
    l2 = z2 W2ᵀ + b2 of p(z1 | z2), l1 = z1 W1ᵀ + b1 of p(x | z1):

    - log p(z1 | z2) is reached by all of z1 and z2: box ⊡(τ1 + τ2), τ the row's log q sums;
    - log p(x | z1) = Σ_p x_p (Σ_j z1_j W1_pj + b1_p) − softplus(l1_p): the product
      x_p z1_j W1_pj is reached by z1_j alone (jax_scg follows the linear matmul per
      element), x_p b1_p by nothing, softplus(l1) by all of z1 (box ⊡(τ1));
    - −log q(z1) = −z1_j a_j + softplus(a_j), parameters detached: z1_j a_j is reached by z1_j
      (box ⊡(log q(z1_j))), softplus(a) by nothing;
    - −log q(z2) = −z2_k b_k + softplus(b_k): z2_k b_k by z1 and z2_k (box ⊡(τ1 + log q(z2_k))),
      softplus(b) by z1 (box ⊡(τ1));
    - log p(z2) = z2·0 − log 2 under the Bernoulli(½) prior: a constant.
    """
    p = unravel(flat)
    k1, k2 = jax.random.split(key)
    a = x @ p["V1"].T + p["c1"]
    q1 = D.Bernoulli(logits=a)
    z1 = lax.stop_gradient(q1.sample(k1))
    b = z1 @ p["V2"].T + p["c2"]
    q2 = D.Bernoulli(logits=b)
    z2 = lax.stop_gradient(q2.sample(k2))
    lq1, lq2 = q1.log_prob(z1), q2.log_prob(z2)  # (images, Z1), (images, Z2)
    box1 = scg.magic_box(lq1)
    tau1 = jnp.sum(lq1, -1, keepdims=True)
    tau2 = jnp.sum(lq2, -1, keepdims=True)
    a, b = lax.stop_gradient(a), lax.stop_gradient(b)
    log_p_z1 = D.Bernoulli(logits=z2 @ p["W2"].T + p["b2"]).log_prob(z1)
    x_dot_l1 = x * ((box1 * z1) @ p["W1"].T)  # each z1_j's own products only
    softplus_l1 = jnp.sum(_softplus(z1 @ p["W1"].T + p["b1"]), -1, keepdims=True)
    boxed = (
        scg.magic_box(tau1 + tau2) * jnp.sum(log_p_z1, -1, keepdims=True)
        - scg.magic_box(tau1) * (softplus_l1 - jnp.sum(_softplus(b), -1, keepdims=True))
        - jnp.sum(box1 * z1 * a, -1, keepdims=True)
        - jnp.sum(scg.magic_box(tau1 + lq2) * z2 * b, -1, keepdims=True)
    )
    unreached = jnp.sum(x * p["b1"]) + jnp.sum(_softplus(a)) + x.shape[0] * Z2 * LOG_HALF
    return jnp.sum(boxed) + jnp.sum(x_dot_l1) + unreached


def sbn_inputs(images: int = 64):
    """(binarised digits, flat θ, unravel) of model 4."""
    flat, unravel = ravel_pytree(variance_peers.sbn_params())
    return variance_peers.digits(images), jnp.asarray(flat, jnp.float32), unravel


def sbn(images: int = 64) -> PeerModel:
    """Model 4 on the first ``images`` digits; θ is the flat vector of ``sbn_params()``."""
    x, flat, unravel = sbn_inputs(images)
    return PeerModel(
        name="sbn",
        title=f"4. sbn ({images} digits, {flat.size} parameters)",
        size=images,
        theta=flat,
        scg_loss=functools.partial(variance_peers.scg_elbo_b, x=x, unravel=unravel),
        handwritten=functools.partial(sbn_handwritten, x=x, unravel=unravel),
        numpyro_factory=lambda: variance_peers.numpyro_grad_b(x, unravel),
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
    x, flat, unravel = sbn_inputs(images)
    arrays = {
        "chain_theta": np.asarray(CHAIN_THETA, np.float32),
        "chain_x0": np.asarray(examples.X0, np.float32),
        "rollout_theta": np.asarray(ROLLOUT_THETA, np.float32),
        "sbn_x": np.asarray(x, np.float32),
        "sbn_theta": np.asarray(flat, np.float32),
    }
    for n in sorted(set(elbo_sizes)):
        arrays[f"elbo_x_{n}"] = np.asarray(elbo_data(n), np.float32)
        arrays[f"elbo_phi_{n}"] = np.zeros(n, np.float32)
    shapes = unravel(flat)
    for name in SBN_NAMES:
        arrays[f"sbn_shape_{name}"] = np.asarray(shapes[name].shape, np.int64)
    return arrays
