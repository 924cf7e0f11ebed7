"""The models, Storchastic plumbing and row recording behind ``storchastic_rows.py``.

Runs in the peers' virtual environment (torch and Storchastic; no JAX), imported by
``storchastic_rows.py``, whose docstring says what is measured and how the one-sample
estimates are drawn. Top to bottom:

- the toys' constants (as ``models.py`` has them on the JAX side) and their exact gradients
  (:func:`toy_exact`, :func:`rollout_exact`, :func:`categorical_exact`);
- Storchastic plumbing: :func:`reset_storch` (also imported by ``torch_peers.py`` and
  ``torch_peers_models.py``)
  and :func:`patched`, the monkeypatches (``SUM_SHIM``, ``COND_FIX``) made and undone
  around the rows that need them;
- the models, each drawing n estimates in one batched ``storch.backward`` (``*_batched``)
  or in sequential calls (``*_sequential``, for stateful methods), the sigmoid belief net
  on the helpers of ``torch_peers_models.py``;
- rows: :func:`attempt` times one draw and records its row (:func:`make_row`) or its
  failure, and :func:`jax_scg_reference` reads jax_scg's score-function variances.

Importing it sets the recursion limit (Storchastic walks its graph recursively), silences
warnings and makes float32 torch's default dtype.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import time
import traceback
import warnings

import numpy as np
import storch
import storch.method.arm as storch_arm
import storch.method.relax as storch_relax
import storch.storch as storch_core
import torch
from storch.util import magic_box
from torch.distributions import Bernoulli, OneHotCategorical
from torch.distributions.utils import clamp_probs

sys.setrecursionlimit(100_000)
warnings.filterwarnings("ignore")  # create_graph=True reference-cycle warnings from REBAR/RELAX
torch.set_default_dtype(torch.float32)

# The toys' constants, as models.py has them for the JAX side (REBAR_TARGETS, POLICY_THETA,
# POLICY_STEPS): this environment has no JAX.
T_VALUES = (0.45, 0.499)
ROLLOUT_THETA = (0.2, -0.5)
STEPS = 16
ROLLOUT_MODEL = f"policy rollout, {STEPS} steps"
MA_DECAY = 0.95  # MovingAverageBaseline's default exponential_decay


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- exact values


def toy_exact(t, theta=0.0):
    """d/dθ of σ(θ)(1-t)² + (1-σ(θ))t²."""
    s = 1.0 / (1.0 + np.exp(-theta))
    return np.array([s * (1 - s) * ((1 - t) ** 2 - t**2)])


def rollout_exact(theta=ROLLOUT_THETA):
    """Exact policy gradient by enumerating all 2^16 action sequences (float64)."""
    paths = 2**STEPS
    bits = ((np.arange(paths)[:, None] >> np.arange(STEPS)) & 1).astype(np.float64)
    state = np.zeros(paths)
    logp = np.zeros(paths)
    score = np.zeros((paths, 2))
    cost = np.zeros(paths)
    for t in range(STEPS):
        a = bits[:, t]
        p = 1.0 / (1.0 + np.exp(-(theta[0] + theta[1] * state)))
        logp += a * np.log(p) + (1 - a) * np.log1p(-p)
        score[:, 0] += a - p
        score[:, 1] += (a - p) * state
        cost += (a - 0.5 * state) ** 2
        state = 0.7 * state + a
    w = np.exp(logp)
    assert abs(w.sum() - 1.0) < 1e-9
    return (w * cost) @ score


CATEGORIES = 10
CAT_MODEL = f"{CATEGORIES}-way Categorical toy"
CAT_TARGET = 0.45


def categorical_exact():
    """Gradient of Σ_i softmax(θ)_i (w_i − t)² at θ = linspace(−1, 1, 10), w_i = i/9."""
    theta = np.linspace(-1.0, 1.0, CATEGORIES)
    p = np.exp(theta - theta.max())
    p /= p.sum()
    f = (np.arange(CATEGORIES) / (CATEGORIES - 1.0) - CAT_TARGET) ** 2
    return p * (f - p @ f)


# --------------------------------------------------------------------------- storch plumbing


def reset_storch():
    """Clear Storchastic's global graph state (also after an exception mid-backward)."""
    try:
        storch.reset()
    except Exception:  # noqa: BLE001 - a broken graph must not stop the next row
        storch.inference._cost_tensors = []
        storch.inference._sampling_methods = []
    w = storch.wrappers
    w._context_stochastic = False
    w._context_deterministic = 0
    w._stochastic_parents = []
    w._context_name = None
    w._plate_links = []
    w._ignore_wrap = False


def _sum_event_dims(x):
    # torch 2.x: Tensor.sum(dim=[]) reduces over ALL dimensions, which drops Storchastic's plate
    # dimensions when a sample has no event dimensions (a scalar Bernoulli).
    dims = x.event_dim_indices
    return x.sum(dim=dims) if len(dims) else x


def _disarm_estimator(self, tensor, cost):
    # storch/method/arm.py DisARM.estimator, with only the event-dim sum guarded.
    plate = tensor.get_plate(tensor.name)
    index = tensor.get_plate_dim_index(plate.name)
    multiplicative, baseline = self.comp_estimator(
        tensor, cost, tensor.distribution.logits, index, plate.n // 2
    )
    return 0.5 * _sum_event_dims(multiplicative), baseline


def _relax_estimator(self, tensor, cost_node):
    # storch/method/relax.py RELAX.estimator (REBAR inherits it), with only the sum guarded.
    plate = tensor.get_plate(tensor.name)
    plate_index = -1
    if plate.n > 1:
        plate_index = tensor.get_plate_dim_index(plate.name)
    log_prob, c_phi_z, c_phi_tilde_z = self.compute_estimator(
        tensor,
        cost_node,
        plate_index,
        plate.n // 3 if self.rebar else plate.n,
        tensor.distribution,
    )
    c_phi_z = self.eta * c_phi_z
    c_phi_tilde_z = self.eta * c_phi_tilde_z
    log_prob = _sum_event_dims(log_prob)
    return (
        log_prob,
        c_phi_z
        - c_phi_z.detach()
        - c_phi_tilde_z
        + (2 - magic_box(log_prob)) * c_phi_tilde_z.detach(),
    )


def _conditional_gumbel_fixed(hard_sample, probs, bernoulli, temperature):
    # Bernoulli branch of storch.conditional_gumbel_rsample with the logistic noise written as
    # log p - log(1-p) + log v' - log(1-v'); 0.3.7 has `probs.log1p()` and `v_prime.log1p()`,
    # i.e. + log(1+p), + log(1+v'), so z̃ is not drawn from p(z | b).
    assert bernoulli
    probs = clamp_probs(probs.expand_as(hard_sample))
    v = clamp_probs(torch.rand(hard_sample.shape, dtype=probs.dtype, device=probs.device))
    v_prime = torch.where(hard_sample == 1, v * probs + (1 - probs), v * (1 - probs))
    logistic = probs.log() - (-probs).log1p() + v_prime.log() - (-v_prime).log1p()
    return (logistic / temperature).sigmoid()


SUM_SHIM = "torch-2 shim: Tensor.sum over an empty list of event dims made a no-op"
COND_FIX = "diagnostic fix: conditional Gumbel z̃|b for Bernoulli corrected (log1p → log(1-·))"


@contextlib.contextmanager
def patched(sum_shim=False, cond_fix=False):
    saved = (
        storch_arm.DisARM.estimator,
        storch_relax.RELAX.estimator,
        storch_core.conditional_gumbel_rsample,
        storch.conditional_gumbel_rsample,
        storch_relax.conditional_gumbel_rsample,
    )
    try:
        if sum_shim:
            storch_arm.DisARM.estimator = _disarm_estimator
            storch_relax.RELAX.estimator = _relax_estimator
        if cond_fix:
            storch_core.conditional_gumbel_rsample = _conditional_gumbel_fixed
            storch.conditional_gumbel_rsample = _conditional_gumbel_fixed
            storch_relax.conditional_gumbel_rsample = _conditional_gumbel_fixed
        yield
    finally:
        (
            storch_arm.DisARM.estimator,
            storch_relax.RELAX.estimator,
            storch_core.conditional_gumbel_rsample,
            storch.conditional_gumbel_rsample,
            storch_relax.conditional_gumbel_rsample,
        ) = saved


# --------------------------------------------------------------------------- models


def toy_batched(make_method, t, n):
    """n independent estimates of dE/dθ for the REBAR toy, in one storch.backward."""
    th = torch.zeros(n, requires_grad=True)
    theta = storch.denote_independent(th, 0, "batch")
    b = make_method("b")(Bernoulli(logits=theta))
    storch.add_cost((b.float() - t) ** 2, "cost")
    storch.backward(update_estimator_params=False)
    return th.grad.detach().double().numpy().reshape(n, 1) * n


def toy_sequential(method, t, n, warmup):
    """n estimates from n sequential backward calls on a scalar θ (stateful methods)."""
    out = np.empty((n, 1))
    for i in range(warmup + n):
        if i == warmup:
            start = time.perf_counter()
        th = torch.zeros((), requires_grad=True)
        b = method(Bernoulli(logits=th))
        storch.add_cost((b.float() - t) ** 2, "cost")
        storch.backward()
        if i >= warmup:
            out[i - warmup, 0] = th.grad.item()
    return out, time.perf_counter() - start


def categorical_batched(make_method, n):
    """n independent estimates for the 10-way Categorical toy, in one storch.backward."""
    th = torch.linspace(-1.0, 1.0, CATEGORIES).repeat(n, 1).requires_grad_(True)
    theta = storch.denote_independent(th, 0, "batch")
    x = make_method("x")(OneHotCategorical(logits=theta))
    w = torch.arange(CATEGORIES, dtype=torch.float32) / (CATEGORIES - 1.0)
    storch.add_cost(((x * w).sum(-1) - CAT_TARGET) ** 2, "cost")
    storch.backward(update_estimator_params=False)
    return th.grad.detach().double().numpy() * n


def _rollout(theta0, theta1, methods, per_step_costs):
    state, total = 0.0, 0.0
    for step in range(STEPS):
        a = methods[step](Bernoulli(logits=theta0 + theta1 * state)).float()
        reward = (a - 0.5 * state) ** 2
        if per_step_costs:
            storch.add_cost(reward, f"r{step}")
        else:
            total = total + reward
        state = 0.7 * state + a
    if not per_step_costs:
        storch.add_cost(total, "cost")


def rollout_batched(make_method, n, per_step_costs=True):
    th = torch.tensor(ROLLOUT_THETA).repeat(n, 1).requires_grad_(True)
    theta = storch.denote_independent(th, 0, "batch")
    methods = [make_method(f"a{step}") for step in range(STEPS)]
    _rollout(theta[..., 0], theta[..., 1], methods, per_step_costs)
    storch.backward(update_estimator_params=False)
    return th.grad.detach().double().numpy() * n


def rollout_sequential(methods, n, warmup, per_step_costs=True):
    out = np.empty((n, 2))
    for i in range(warmup + n):
        if i == warmup:
            start = time.perf_counter()
        th = torch.tensor(ROLLOUT_THETA, requires_grad=True)
        _rollout(th[0], th[1], methods, per_step_costs)
        storch.backward()
        if i >= warmup:
            out[i - warmup] = th.grad.numpy()
    return out, time.perf_counter() - start


def sbn_batched(make_z1, make_z2, params, x, copies, mean_images=False):
    """``copies`` independent ELBO-gradient estimates of the sigmoid belief net, one backward.

    The model of ``torch_peers_models.storch_sbn`` (images an independent plate of weight 1,
    the five log-density terms five cost nodes, log q at detached parameters), with the
    Storchastic methods of z1 and z2 as arguments; with plain ``ScoreFunction`` for both it
    gives the same numbers from the same random stream (checked in ``main``). A method with
    ``n_samples=k`` adds a sample plate of k under its parents' plates, averaged in the
    estimate: k samples of z1 and one z2 per z1 are k evaluations of the ELBO's integrand
    per estimate; k of each, k² (z2's plate nests in z1's).

    ``mean_images=True`` gives the images plate Storchastic's default weight 1/64 (a mean, as
    in its examples) and multiplies the gradient by 64: the same estimate for stateless
    methods (checked in ``main``), but ``storch.reduce_plates`` inside the moving-average
    baseline then averages the cost over images instead of summing it.
    """
    import torch_peers_models as tp  # same environment; imported here (it imports this module)

    if copies is None:  # one estimate, no plate of copies (a plate of size 1 breaks)
        leaves = {k: params[k].clone().requires_grad_(True) for k in tp.SBN_NAMES}
        p = leaves
    else:
        leaves = {k: tp.copies_of(params[k], copies) for k in tp.SBN_NAMES}
        p = {k: tp.plate(v, 0, "batch") for k, v in leaves.items()}
    if mean_images:
        images = storch.denote_independent(x, 0, "images")
    else:
        images = tp.plate(x, 0, "images")
    q1 = tp.bernoulli(tp.affine(images, p["V1"], p["c1"]))
    z1 = make_z1("z1")(q1)
    q2 = tp.bernoulli(tp.affine(z1, p["V2"], p["c2"]))
    z2 = make_z2("z2")(q2)
    neg_terms = {
        "neg_log_p_z2": -tp.bernoulli(torch.zeros(params["c2"].shape)).log_prob(z2),
        "neg_log_p_z1": -tp.bernoulli(tp.affine(z2, p["W2"], p["b2"])).log_prob(z1),
        "neg_log_p_x": -tp.bernoulli(tp.affine(z1, p["W1"], p["b1"])).log_prob(images),
        "log_q_z1": tp.bernoulli(q1.logits.detach()).log_prob(z1),
        "log_q_z2": tp.bernoulli(q2.logits.detach()).log_prob(z2),
    }
    for name, term in neg_terms.items():
        storch.add_cost(term.sum(-1), name)
    scale = float(len(x)) if mean_images else 1.0
    if copies is not None:
        return tp.storch_backward([leaves[k] for k in tp.SBN_NAMES], -scale)
    try:
        storch.backward(update_estimator_params=False)
    finally:
        reset_storch()
    grads = torch.cat([leaves[k].grad.reshape(1, -1) for k in tp.SBN_NAMES], 1)
    return (-scale * grads).double().numpy()


def sbn_sequential(z1, z2, params, x, n, warmup, mean_images=True):
    """``n`` estimates from ``n`` sequential backward calls (one copy of θ each) after
    ``warmup`` calls, with the same method objects ``z1`` and ``z2`` throughout, so that a
    stateful baseline (the moving average) carries over from call to call, as in training."""
    out = []
    for i in range(warmup + n):
        if i == warmup:
            start = time.perf_counter()
        g = sbn_batched(lambda _: z1, lambda _: z2, params, x, None, mean_images)
        if i >= warmup:
            out.append(g[0])
    return np.stack(out), time.perf_counter() - start


def sbn_inputs(path):
    """(images, parameters by name) from the npz of ``peer_models.torch_inputs``."""
    import torch_peers_models as tp

    inputs = tp.Inputs(dict(np.load(path)))
    return inputs.tensor("sbn_x"), tp.unflatten(inputs.tensor("sbn_theta"), inputs.sbn_shapes())


def sbn_draws(make_z1, make_z2, params, x, copies, calls):
    """``calls`` backward passes of ``copies`` estimates each, stacked."""
    return np.concatenate([sbn_batched(make_z1, make_z2, params, x, copies) for _ in range(calls)])


# --------------------------------------------------------------------------- rows


def make_row(model, estimator, g, seconds, exact, n_estimates, note=None, patch=None):
    mean = g.mean(0)
    se = g.std(0, ddof=1) / np.sqrt(len(g))
    row = {"model": model, "estimator": estimator, "mean": [round(float(m), 6) for m in mean]}
    if exact is None:  # no exact gradient (the SBN): keep the SEs, to compare means elsewhere
        row["se"] = [float(e) for e in se]
    else:
        floor = 1e-6 * (1.0 + np.abs(exact))
        row["exact"] = [round(float(e), 6) for e in exact]
        row["max_abs_bias_over_se"] = round(
            float(np.max(np.abs(mean - exact) / np.maximum(se, floor))), 2
        )
    row |= {
        "variance": float(g.var(0, ddof=1).mean()),
        # SE of that variance: per estimate, its mean squared deviation over coordinates.
        "variance_se": float(((g - mean) ** 2).mean(1).std(ddof=1) / np.sqrt(len(g))),
        "seconds_per_estimate": seconds / n_estimates,
        "n": int(n_estimates),
    }
    if note:
        row["note"] = note
    if patch:
        row["patch"] = patch
    return row


def attempt(
    rows,
    failures,
    model,
    estimator,
    fn,
    exact,
    note=None,
    patch=None,
    seed=0,
    warm=None,
    fields=None,
):
    """Run fn (-> estimates, or (estimates, seconds) when it times itself) and record a row.

    warm: an untimed small run of the same method first (first-call overheads).
    fields: more entries for the row (e.g. its cost evaluations per estimate).
    """
    reset_storch()
    gc.collect()  # REBAR/RELAX graphs (create_graph=True) sit in reference cycles: free them
    log(f"  {model} | {estimator} ...")
    try:
        if warm is not None:
            warm()
            reset_storch()
        torch.manual_seed(seed)
        start = time.perf_counter()
        g = fn()
        seconds = time.perf_counter() - start
        if isinstance(g, tuple):
            g, seconds = g
    except Exception as exc:  # noqa: BLE001 - record and go on
        reset_storch()
        tb = traceback.extract_tb(exc.__traceback__)
        where = next(
            (
                f"{os.path.basename(f.filename)}:{f.lineno} ({f.line})"
                for f in reversed(tb)
                if "/storch/" in f.filename
                and "wrappers.py" not in f.filename
                and "tensor.py" not in f.filename
            ),
            None,
        )
        failures.append(
            {
                "model": model,
                "estimator": estimator,
                "error": f"{type(exc).__name__}: {exc}",
                "raised_in": where,
                **({"patch": patch} if patch else {}),
            }
        )
        log(f"    FAILED: {type(exc).__name__}: {exc}")
        return None
    reset_storch()
    row = make_row(model, estimator, g, seconds, exact, len(g), note, patch)
    row.update(fields or {})
    rows.append(row)
    shown = f"mean {row['mean']} exact {row['exact']} " if "exact" in row else ""
    log(
        f"    {shown}var {row['variance']:.4g} "
        f"bias/SE {row.get('max_abs_bias_over_se', '-')} ({seconds:.2f} s)"
    )
    return row


def jax_scg_reference(path):
    """Score-function variances from jax_scg's variance_<platform>.md, if it is there."""
    ref = {}
    if not os.path.exists(path):
        return ref
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.match(r"score function( \(reward-to-go\))?$", cells[1]):
            try:
                ref[cells[0]] = float(cells[5])
            except ValueError:
                pass
    return ref
