"""Variance rows from the PyTorch peer Storchastic 0.3.7 for two models of ``variance.py``.

Run with the peers' virtual environment (``bash benchmarks/setup_peers.sh`` makes it):

    benchmarks/.venv-peers/bin/python benchmarks/storchastic_rows.py [--quick]

Models (as in ``variance.py``): the REBAR toy E[(b - t)²], b ~ Bernoulli(σ(θ)), θ = 0, for
t = 0.45 and 0.499; the 10-way Categorical toy; the 16-step policy rollout, θ = [0.2, -0.5],
state' = 0.7·state + a, a ~ Bernoulli(σ(θ0 + θ1·state)), cost = Σ (a - 0.5·state)²; and, with
``--sbn-inputs FILE`` (the npz of ``peer_models.torch_inputs``, which ``variance.py`` writes),
the sigmoid belief net on 64 digits of ``torch_peers.storch_sbn`` with the methods of z1 and
z2 as arguments (plain ScoreFunction, and the batch-average baseline with n_samples=2 or 4),
and the moving-average baseline, drawn sequentially.

How the one-sample estimates are drawn. Storchastic's ``storch.backward`` returns the gradient
of the *plate-averaged* surrogate, so a plate of N samples on one θ gives only their mean. To
get N independent estimates from one batched pass, θ is an (N, ...) leaf tensor that
``storch.denote_independent`` turns into an independent plate "batch"; the sample plate of
each stochastic node sits under it. Copy i of θ then receives (1/N) × its own estimate, so
``N * th.grad`` holds the N per-copy estimates (checked: same numbers as N separate backward
calls on a scalar θ with the same random stream). Rows whose method keeps state across calls
(the moving-average baseline) are instead drawn as sequential backward calls on a scalar θ,
as in training.

Estimators that fail as shipped are listed under "failures" with their error; where a small,
clearly separate shim makes them run, their rows carry a "patch" field saying what was
changed. Nothing in Storchastic's installed files is edited; patches are monkeypatches made
and undone inside this script.

Prints ONE JSON object to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import re
import sys
import time
import traceback
import warnings
from importlib.metadata import version

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

    The model of ``torch_peers.storch_sbn`` (images an independent plate of weight 1, the five
    log-density terms five cost nodes, log q at detached parameters), with the Storchastic
    methods of z1 and z2 as arguments; with plain ``ScoreFunction`` for both it gives the
    same numbers from the same random stream (checked in ``main``). A method with
    ``n_samples=k`` adds a sample plate of k under its parents' plates, averaged in the
    estimate: k samples of z1 and one z2 per z1 are k evaluations of the ELBO's integrand
    per estimate; k of each, k² (z2's plate nests in z1's).

    ``mean_images=True`` gives the images plate Storchastic's default weight 1/64 (a mean, as
    in its examples) and multiplies the gradient by 64: the same estimate for stateless
    methods (checked in ``main``), but ``storch.reduce_plates`` inside the moving-average
    baseline then averages the cost over images instead of summing it.
    """
    import torch_peers as tp  # same environment; imported here (it imports this module)

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
    import torch_peers as tp

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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny N (runs in well under a minute)")
    parser.add_argument(
        "--sbn-inputs",
        default=None,
        help="npz of peer_models.torch_inputs: adds the sigmoid belief net rows",
    )
    args = parser.parse_args(argv)
    if args.quick:
        n_toy, n_roll, n_seq_toy, n_seq_roll, warm_toy, warm_roll = 2_000, 500, 100, 20, 20, 5
    else:
        n_toy, n_roll, n_seq_toy, n_seq_roll, warm_toy, warm_roll = (
            100_000,
            20_000,
            5_000,
            500,
            200,
            50,
        )
    total_start = time.perf_counter()
    M = storch.method
    rows, failures = [], []

    for t in T_VALUES:
        model = f"REBAR toy t={t}"
        exact = toy_exact(t)

        def toy(name, make, n=n_toy, t=t, model=model, exact=exact, **kw):
            attempt(
                rows,
                failures,
                model,
                name,
                lambda: toy_batched(make, t, n),
                exact,
                seed=1,
                warm=lambda: toy_batched(make, t, 64),
                **kw,
            )

        toy("ScoreFunction (plain REINFORCE)", lambda p: M.ScoreFunction(p))
        toy(
            "ScoreFunction, baseline_factory='batch_average', n_samples=4 (per 4-sample estimate)",
            lambda p: M.ScoreFunction(p, n_samples=4, baseline_factory="batch_average"),
            note="leave-one-out batch-average baseline; each estimate averages 4 samples "
            "(compare jax_scg's 'leave-one-out, 4 samples')",
        )
        attempt(
            rows,
            failures,
            model,
            "ScoreFunction, baseline_factory='moving_average' (decay 0.95)",
            lambda t=t: toy_sequential(
                M.ScoreFunction("b", baseline_factory="moving_average"), t, n_seq_toy, warm_toy
            ),
            exact,
            seed=1,
            note=f"{n_seq_toy} sequential backward calls after {warm_toy} warm-up calls; "
            "Storchastic updates the average with the current cost before using it, so "
            "the baseline holds 0.05 x this sample's own cost: expected mean 0.95 x exact",
        )
        toy("GumbelSoftmax τ=1 (relaxed, biased)", lambda p: M.GumbelSoftmax(p))
        toy(
            "GumbelSoftmax τ=1, straight_through=True (biased)",
            lambda p: M.GumbelSoftmax(p, straight_through=True),
        )
        toy("Expect (exact enumeration)", lambda p: M.Expect(p))
        toy("ARM (2 evaluations)", lambda p: M.ARM(p))
        # As shipped these fail on torch 2.x: record the error, then run them with the shim.
        for name, make in [
            ("DisARM (2 evaluations)", lambda p: M.DisARM(p)),
            ("REBAR τ=1, η=1 (3 evaluations, control parameters untrained)", lambda p: M.REBAR(p)),
            ("RELAX, untrained c_phi MLP (in_dim=1), τ=1, η=1", lambda p: M.RELAX(p, in_dim=1)),
        ]:
            toy(name + " [as shipped]", make, n=64)
            with patched(sum_shim=True):
                toy(
                    name,
                    make,
                    patch=SUM_SHIM,
                    note="DisARM's plate weighting (DisARM.plate_weighting) is defined but never "
                    "registered"
                    if name.startswith("DisARM")
                    else None,
                )

        # Diagnostic: REBAR / RELAX with the conditional Gumbel sample corrected.
        def rebar_tau(tau):
            def build(p):
                m = M.REBAR(p)
                m.temperature.data.fill_(tau)
                return m

            return build

        with patched(sum_shim=True, cond_fix=True):
            for name, make in [
                ("REBAR τ=1, η=1 (3 evaluations)", rebar_tau(1.0)),
                ("REBAR τ=0.5, η=1 (3 evaluations; jax_scg's default λ=0.5)", rebar_tau(0.5)),
                ("RELAX, untrained c_phi MLP (in_dim=1), τ=1, η=1", lambda p: M.RELAX(p, in_dim=1)),
            ]:
                toy(name + " [diagnostic fix]", make, patch=SUM_SHIM + "; " + COND_FIX)

    cat_exact = categorical_exact()

    def cat(name, make, cost, cv=0, n=n_toy, note="", **kw):
        """cost: cost-function evaluations per estimate; cv: control-variate evaluations."""
        what = f"{cost}" + (f" + {cv} control-variate evaluations" if cv else "")
        attempt(
            rows,
            failures,
            CAT_MODEL,
            name,
            lambda: categorical_batched(make, n),
            cat_exact,
            seed=3,
            warm=lambda: categorical_batched(make, 64),
            note=f"cost evaluations per estimate: {what}{note}",
            fields={"cost": cost, "cv": cv},
            **kw,
        )

    cat("ScoreFunction (plain REINFORCE)", lambda p: M.ScoreFunction(p), 1)
    cat(
        "ScoreFunction, baseline_factory='batch_average', n_samples=4 (per 4-sample estimate)",
        lambda p: M.ScoreFunction(p, n_samples=4, baseline_factory="batch_average"),
        4,
    )
    # Its leave-one-out ratios integrate numerically (1000 trapezoid points per estimate):
    # about 0.6 GB per 1000 estimates, so fewer estimates.
    cat(
        "UnorderedSetEstimator, k=4",
        lambda p: M.UnorderedSetEstimator(p, k=4),
        4,
        n=n_toy // 10,
        note=f"; {n_toy // 10} estimates (memory of its numerical integration)",
    )
    cat(
        "ScoreFunctionWOR, k=4, unbiased",
        lambda p: M.ScoreFunctionWOR(p, k=4, biased=False),
        4,
    )
    cat("Expect (exact enumeration)", lambda p: M.Expect(p), CATEGORIES)
    for name, make in [
        ("REBAR τ=1, η=1 (untrained; control variate: the cost at 2 relaxed points)", M.REBAR),
        (
            f"RELAX, untrained c_phi MLP (in_dim={CATEGORIES})",
            lambda p: M.RELAX(p, in_dim=CATEGORIES),
        ),
    ]:
        cat(name + " [as shipped]", make, 1, 2, n=64)
        with patched(sum_shim=True):
            cat(name, make, 1, 2, patch=SUM_SHIM)

    exact = rollout_exact()
    model = ROLLOUT_MODEL
    log(f"  exact rollout gradient (2^16 paths): {exact}")

    def roll(name, make, n=n_roll, per_step_costs=True, **kw):
        attempt(
            rows,
            failures,
            model,
            name,
            lambda: rollout_batched(make, n, per_step_costs),
            exact,
            seed=2,
            warm=lambda: rollout_batched(make, 16, per_step_costs),
            **kw,
        )

    roll(
        "ScoreFunction, one cost node per reward (Storchastic's graph gives reward-to-go)",
        lambda p: M.ScoreFunction(p),
    )
    roll(
        "ScoreFunction, one summed cost node (full return)",
        lambda p: M.ScoreFunction(p),
        per_step_costs=False,
    )
    ma_methods = [M.ScoreFunction(f"a{s}", baseline_factory="moving_average") for s in range(STEPS)]
    attempt(
        rows,
        failures,
        model,
        "ScoreFunction, baseline_factory='moving_average' (decay 0.95), per-reward costs",
        lambda: rollout_sequential(ma_methods, n_seq_roll, warm_roll),
        exact,
        seed=2,
        note=f"{n_seq_roll} sequential backward calls after {warm_roll} warm-up calls; one "
        "unconditional moving average per (action, reward) pair, including 0.05 x the "
        "current cost",
    )
    roll(
        "GumbelSoftmax τ=1, straight_through=True (biased)",
        lambda p: M.GumbelSoftmax(p, straight_through=True),
    )
    roll("GumbelSoftmax τ=1 (relaxed actions, biased)", lambda p: M.GumbelSoftmax(p))
    relax_name = "RELAX, untrained c_phi MLP (in_dim=1), τ=1, η=1, per-reward costs"
    roll(relax_name + " [as shipped]", lambda p: M.RELAX(p, in_dim=1), n=16)
    with patched(sum_shim=True):
        roll(relax_name, lambda p: M.RELAX(p, in_dim=1), patch=SUM_SHIM)
    with patched(sum_shim=True, cond_fix=True):
        roll(
            relax_name + " [diagnostic fix]",
            lambda p: M.RELAX(p, in_dim=1),
            patch=SUM_SHIM + "; " + COND_FIX,
        )

    sbn_check = None
    if args.sbn_inputs:
        x, params = sbn_inputs(args.sbn_inputs)
        sbn_model = f"sigmoid belief net, {len(x)} digits"
        plain = lambda p: M.ScoreFunction(p)  # noqa: E731

        def batch_average(k):
            return lambda p: M.ScoreFunction(p, n_samples=k, baseline_factory="batch_average")

        # The model here is torch_peers.storch_sbn's: same numbers from the same stream.
        import torch_peers

        reset_storch()
        torch.manual_seed(0)
        ours = sbn_batched(plain, plain, params, x, 16)
        torch.manual_seed(0)
        theirs = torch_peers.storch_sbn(params, x, 16)
        reset_storch()
        torch.manual_seed(0)
        mean_images = sbn_batched(plain, plain, params, x, 16, mean_images=True)
        sbn_check = {
            "max_abs_difference_to_torch_peers_storch_sbn": float(np.abs(ours - theirs).max()),
            "max_abs_estimate": float(np.abs(theirs).max()),
            # The images plate as a mean, the gradient × 64: the same estimates.
            "max_abs_difference_mean_images_plate": float(np.abs(mean_images - theirs).max()),
        }
        log(f"  {sbn_model}: key-by-key check against torch_peers.storch_sbn: {sbn_check}")
        calls = 2 if args.quick else 10
        for name, m1, m2, cost, copies in [
            ("ScoreFunction (plain REINFORCE)", plain, plain, 1, 50 if args.quick else 200),
            (
                "ScoreFunction, batch_average, n_samples=2 for z1 and for z2 (2×2 joint samples)",
                batch_average(2),
                batch_average(2),
                4,
                50 if args.quick else 200,
            ),
            (
                "ScoreFunction, batch_average, n_samples=4 for z1; one z2 per z1, no baseline",
                batch_average(4),
                plain,
                4,
                50 if args.quick else 200,
            ),
            (
                "ScoreFunction, batch_average, n_samples=4 for z1 and for z2 (4×4 joint samples)",
                batch_average(4),
                batch_average(4),
                16,
                50 if args.quick else 200,
            ),
        ]:
            attempt(
                rows,
                failures,
                sbn_model,
                name,
                lambda m1=m1, m2=m2, c=copies: sbn_draws(m1, m2, params, x, c, calls),
                None,
                seed=4,
                warm=lambda m1=m1, m2=m2: sbn_batched(m1, m2, params, x, 8),
                note=f"cost evaluations per estimate: {cost}; {calls} backward calls of "
                f"{copies} copies of θ",
                fields={"cost": cost, "cv": 0},
            )
        # The moving-average baseline: Storchastic's MovingAverageBaseline keeps one scalar
        # per (site, cost node), updated with storch.reduce_plates(cost) of the current call
        # *before* it is used, so the current draws enter their own baseline. Sequential
        # calls with the same method objects, as in training.
        images = len(x)
        for label, mean_images, n_ma, warm_ma, share in [
            (
                f"ScoreFunction, baseline_factory='moving_average' (decay {MA_DECAY}), images "
                f"plate a mean (weight 1/{images}; gradient × {images})",
                True,
                20 if args.quick else 2_000,
                10 if args.quick else 500,
                f"(1 − {MA_DECAY}) / {images}",
            ),
            (
                f"ScoreFunction, baseline_factory='moving_average' (decay {MA_DECAY}), images "
                "plate summed (weight 1, as the rows above)",
                False,
                10 if args.quick else 300,
                5 if args.quick else 100,
                f"1 − {MA_DECAY}",
            ),
        ]:
            z1 = M.ScoreFunction(
                "z1", baseline_factory="moving_average", exponential_decay=MA_DECAY
            )
            z2 = M.ScoreFunction(
                "z2", baseline_factory="moving_average", exponential_decay=MA_DECAY
            )
            attempt(
                rows,
                failures,
                sbn_model,
                label,
                lambda z1=z1, z2=z2, m=mean_images, k=n_ma, w=warm_ma: sbn_sequential(
                    z1, z2, params, x, k, w, m
                ),
                None,
                seed=5,
                note=f"cost evaluations per estimate: 1; {n_ma} sequential backward calls after "
                f"{warm_ma} warm-up calls, one copy of θ each; one average per (site, cost "
                "node) of the cost reduced over all plates (the images: "
                + ("a mean" if mean_images else "a sum")
                + ")",
                fields={
                    "cost": 1,
                    "cv": 0,
                    "warmup": warm_ma,
                    "biased": "the average is updated with the current call's cost before it "
                    f"is used, so each image's score multiplies its own cost × (1 − {share}) "
                    "in expectation",
                },
            )

    skipped = [
        {
            "model": model,
            "estimators": [
                "ScoreFunction batch_average (n_samples=4)",
                "ARM",
                "DisARM",
                "REBAR",
                "Expect",
            ],
            "reason": "each of these gives every stochastic node its own sample plate of size k "
            "(k = 4, 2, 2, 3, 2), and the plates of successive nodes multiply: k^16 cost "
            "evaluations per estimate along a 16-step chain (2^16 = 65536 at least); the "
            "REBAR toy rows cover these estimators",
        }
    ]

    reference = jax_scg_reference(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "variance_cpu.md")
    )
    checks = []
    for row in rows:
        if "exact" in row and (
            row["estimator"].startswith("ScoreFunction (plain")
            or row["estimator"].startswith("ScoreFunction, one cost node per reward")
        ):
            check = {
                "model": row["model"],
                "estimator": row["estimator"],
                "mean": row["mean"],
                "exact": row["exact"],
                "max_abs_bias_over_se": row["max_abs_bias_over_se"],
                "variance": row["variance"],
            }
            if row["model"] in reference:
                check["jax_scg_score_function_variance"] = reference[row["model"]]
                check["variance_ratio_to_jax_scg"] = row["variance"] / reference[row["model"]]
            checks.append(check)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "storchastic": version("storchastic"),
        "torch": torch.__version__,
        "pyro-ppl": version("pyro-ppl"),
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "quick": args.quick,
        "variance": "mean over coordinates of the per-coordinate variance (ddof=1) of one estimate",
        "seconds_per_estimate": "wall time of the whole run that drew the row's estimates "
        "(graph construction + storch.backward, CPU, one try) / n",
        "exact": "REBAR toy: 0.25 (1 - 2t) at θ = 0; Categorical toy: enumeration of the 10 "
        "categories; rollout: enumeration of all 2^16 paths; SBN: none (rows keep per-coordinate "
        "SEs instead)",
        "rows": rows,
        "failures": failures,
        "skipped": skipped,
        "sbn_check": sbn_check,
        "checks": checks,
        "total_seconds": round(time.perf_counter() - total_start, 1),
    }
    print(json.dumps(result, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
