"""The four models of the peer suite in PyTorch, for Storchastic and for Pyro, and their inputs.

Runs in the peers' virtual environment (torch, Pyro, Storchastic; no JAX), imported by
``torch_peers.py`` (whose docstring says how each system is batched and timed) and by
``storchastic_models.py`` (the sigmoid belief net). Top to bottom:

- Storchastic: the plate helpers (:func:`copies_of`, :func:`plate`, :func:`bernoulli`,
  :func:`storch_backward`) and the four models, each returning the per-copy one-sample
  estimates of ``copies`` copies of θ from one ``storch.backward`` (:func:`storch_chain`,
  :func:`storch_elbo`, :func:`storch_rollout`, :func:`storch_sbn`);
- Pyro: the models and guides of models 2 and 4 (:class:`PyroProblem`) and
  :func:`pyro_grad_fn`, one ELBO gradient per call;
- :class:`Inputs`: the npz that ``peers.py`` writes, as tensors and problems.

Importing it sets the recursion limit, silences warnings, makes float32 torch's default
dtype and switches Pyro's argument validation off.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import storch
import torch
from storchastic_models import reset_storch  # same environment, same directory
from torch.distributions import Bernoulli

sys.setrecursionlimit(100_000)  # Storchastic walks its graph recursively
warnings.filterwarnings("ignore")  # torch.jit tracer warnings from JitTraceGraph_ELBO
torch.set_default_dtype(torch.float32)
pyro.enable_validation(False)

SBN_NAMES = ("V1", "V2", "W1", "W2", "b1", "b2", "c1", "c2")  # flat order of model 4's θ
TOP_STATE = 7.0  # rollout states 0, ..., 7
LOG_HALF = math.log(0.5)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
HALF = torch.tensor(0.5)
ONE = torch.tensor(1.0)  # plate weight: the plate is summed, not averaged


# --------------------------------------------------------------------------- Storchastic


def copies_of(value: torch.Tensor, copies: int) -> torch.Tensor:
    """A leaf tensor (copies, *value.shape) of ``copies`` copies of ``value``."""
    return value.expand(copies, *value.shape).clone().requires_grad_(True)


def plate(tensor, dim: int, name: str):
    """Axis ``dim`` of ``tensor`` as an independent Storchastic plate, summed (weight 1)."""
    return storch.denote_independent(tensor, dim, name, weight=ONE)


def bernoulli(logits) -> Bernoulli:
    # validate_args=False: torch's checks cannot read Storchastic's wrapped tensors.
    return Bernoulli(logits=logits, validate_args=False)


def score_function(name: str, distribution):
    return storch.method.ScoreFunction(name)(distribution)


def storch_backward(leaves: list[torch.Tensor], sign: float) -> np.ndarray:
    """storch.backward; the per-copy gradients of ``leaves``, flattened and concatenated."""
    try:
        storch.backward(update_estimator_params=False)
    finally:
        reset_storch()
    copies = leaves[0].shape[0]
    grads = torch.cat([leaf.grad.reshape(copies, -1) for leaf in leaves], 1)
    return (sign * grads).double().numpy()


def storch_chain(theta: torch.Tensor, x0: float, copies: int) -> np.ndarray:
    """Model 1: x1 ~ B(σ(θ0 + x0)), x2 ~ B(σ(θ1 x1 + θ0)); costs f1 and f2 as two nodes."""
    leaf = copies_of(theta, copies)
    th = plate(leaf, 0, "batch")
    x1 = score_function("x1", bernoulli(th[..., 0] + x0))
    x2 = score_function("x2", bernoulli(th[..., 1] * x1 + th[..., 0]))
    storch.add_cost((x1 - 0.2) ** 2, "f1")
    storch.add_cost((x2 + x1 - 0.5) ** 2, "f2")
    return storch_backward([leaf], 1.0)


def storch_elbo(x: torch.Tensor, phi: torch.Tensor, copies: int) -> np.ndarray:
    """Model 2: one cost per point, log q(z_i) − log p(x_i, z_i), points a plate in copies."""
    leaf = copies_of(phi, copies)
    logits = plate(plate(leaf, 0, "batch"), 1, "points")
    data = plate(x, 0, "points")
    z = score_function("z", bernoulli(logits))
    log_q = bernoulli(logits.detach()).log_prob(z)
    log_joint = LOG_HALF - HALF_LOG_2PI - 0.5 * (data - (2 * z - 1)) ** 2
    storch.add_cost(log_q - log_joint, "neg_elbo")
    return storch_backward([leaf], -1.0)


def storch_rollout(theta: torch.Tensor, steps: int, copies: int) -> np.ndarray:
    """Model 3: a_t ~ B(σ(θ0 + θ1 (s_t/7 − ½))), s' = clip(s + 2a − 1, 0, 7); cost per step."""
    leaf = copies_of(theta, copies)
    th = plate(leaf, 0, "batch")
    state = torch.zeros(())
    for t in range(steps):
        logits = th[..., 0] + th[..., 1] * (state / TOP_STATE - 0.5)
        action = score_function(f"a{t}", bernoulli(logits))
        state = torch.clamp(state + 2 * action - 1, 0.0, TOP_STATE)
        storch.add_cost((state / TOP_STATE - 0.6) ** 2, f"r{t}")
    return storch_backward([leaf], 1.0)


def affine(z, w, b):
    """z @ w.T + b with negative axes only (Storchastic's plate axes sit in front)."""
    return (z.unsqueeze(-2) * w).sum(-1) + b


def storch_sbn(params: dict, x: torch.Tensor, copies: int) -> np.ndarray:
    """Model 4: a leaf of copies per parameter array, images a plate, and the five
    log-density terms of the ELBO as five cost nodes (each credited to its ancestors)."""
    leaves = {k: copies_of(params[k], copies) for k in SBN_NAMES}
    p = {k: plate(v, 0, "batch") for k, v in leaves.items()}
    images = plate(x, 0, "images")
    q1 = bernoulli(affine(images, p["V1"], p["c1"]))
    z1 = score_function("z1", q1)
    q2 = bernoulli(affine(z1, p["V2"], p["c2"]))
    z2 = score_function("z2", q2)
    neg_terms = {
        "neg_log_p_z2": -bernoulli(torch.zeros(p["c2"].event_shape)).log_prob(z2),
        "neg_log_p_z1": -bernoulli(affine(z2, p["W2"], p["b2"])).log_prob(z1),
        "neg_log_p_x": -bernoulli(affine(z1, p["W1"], p["b1"])).log_prob(images),
        "log_q_z1": bernoulli(q1.logits.detach()).log_prob(z1),
        "log_q_z2": bernoulli(q2.logits.detach()).log_prob(z2),
    }
    for name, term in neg_terms.items():
        storch.add_cost(term.sum(-1), name)
    return storch_backward([leaves[k] for k in SBN_NAMES], -1.0)


# --------------------------------------------------------------------------- Pyro


@dataclasses.dataclass
class PyroProblem:
    model: Callable
    guide: Callable
    data: torch.Tensor
    theta: torch.Tensor  # the flat parameter, Pyro param "theta"


def elbo_model(x):
    with pyro.plate("points", x.shape[-1]):
        z = pyro.sample("z", dist.Bernoulli(probs=HALF))
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)


def elbo_guide(x):
    phi = pyro.param("theta")
    with pyro.plate("points", x.shape[-1]):
        # probs=, as on the NumPyro side (NumPyro's logits= log-prob gradient is wrong at 0).
        pyro.sample("z", dist.Bernoulli(probs=torch.sigmoid(phi)))


def unflatten(flat: torch.Tensor, shapes: dict) -> dict:
    out, start = {}, 0
    for name in SBN_NAMES:
        size = math.prod(shapes[name])
        out[name] = flat[start : start + size].reshape(shapes[name])
        start += size
    return out


def sbn_model_guide(shapes: dict):
    """Pyro model and guide of the SBN, both reading the flat parameter "theta"."""

    def model(x):
        p = unflatten(pyro.param("theta"), shapes)
        with pyro.plate("images", x.shape[0]):
            prior = dist.Bernoulli(probs=HALF.expand(shapes["c2"]))
            z2 = pyro.sample("z2", prior.to_event(1))
            z1 = pyro.sample("z1", dist.Bernoulli(logits=z2 @ p["W2"].T + p["b2"]).to_event(1))
            pixels = dist.Bernoulli(logits=z1 @ p["W1"].T + p["b1"])
            pyro.sample("x", pixels.to_event(1), obs=x)

    def guide(x):
        p = unflatten(pyro.param("theta"), shapes)
        with pyro.plate("images", x.shape[0]):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=x @ p["V1"].T + p["c1"]).to_event(1))
            pyro.sample("z2", dist.Bernoulli(logits=z1 @ p["V2"].T + p["c2"]).to_event(1))

    return model, guide


def pyro_grad_fn(problem: PyroProblem, elbo_cls, particles: int) -> Callable[[], np.ndarray]:
    """A fresh param store and ELBO; the returned function gives one ELBO gradient (the
    average of ``particles`` estimates) as a (1, d) array."""
    pyro.clear_param_store()
    pyro.param("theta", problem.theta.clone())
    param = pyro.get_param_store()["theta"].unconstrained()
    elbo = elbo_cls(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)

    def grad():
        param.grad = None
        elbo.loss_and_grads(problem.model, problem.guide, problem.data)
        return -param.grad.detach().double().numpy()[None]  # the loss is −ELBO

    return grad


# --------------------------------------------------------------------------- inputs


@dataclasses.dataclass
class Inputs:
    arrays: dict

    def tensor(self, key: str) -> torch.Tensor:
        return torch.as_tensor(np.asarray(self.arrays[key], np.float32))

    def sbn_shapes(self) -> dict:
        return {k: tuple(int(s) for s in self.arrays[f"sbn_shape_{k}"]) for k in SBN_NAMES}

    def elbo_problem(self, points: int) -> PyroProblem:
        x, phi = self.tensor(f"elbo_x_{points}"), self.tensor(f"elbo_phi_{points}")
        return PyroProblem(elbo_model, elbo_guide, x, phi)

    def sbn_problem(self) -> PyroProblem:
        model, guide = sbn_model_guide(self.sbn_shapes())
        return PyroProblem(model, guide, self.tensor("sbn_x"), self.tensor("sbn_theta"))
