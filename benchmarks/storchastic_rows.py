"""Variance rows from the PyTorch peer Storchastic 0.3.7 for two models of ``variance.py``.

Run with the peers' virtual environment (``bash benchmarks/setup_peers.sh`` makes it):

    benchmarks/.venv-peers/bin/python benchmarks/storchastic_rows.py [--quick]

Models (as in ``variance.py``): the REBAR toy E[(b - t)²], b ~ Bernoulli(σ(θ)), θ = 0, for
t = 0.45 and 0.499; the 10-way Categorical toy; the 16-step policy rollout, θ = [0.2, -0.5],
state' = 0.7·state + a, a ~ Bernoulli(σ(θ0 + θ1·state)), cost = Σ (a - 0.5·state)²; and, with
``--sbn-inputs FILE`` (the npz of ``peer_models.torch_inputs``, which ``variance.py`` writes),
the sigmoid belief net on 64 digits of ``torch_peers_models.storch_sbn`` with the methods of
z1 and z2 as arguments (plain ScoreFunction, and the batch-average baseline with n_samples=2
or 4), and the moving-average baseline, drawn sequentially.

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
and undone inside this script (``storchastic_models.patched``).

This file holds the arguments and ``main``, which runs the rows and assembles the result;
the models, their exact gradients, the Storchastic plumbing and shims, and the timing and
recording of each row are in ``storchastic_models.py``.

Prints ONE JSON object to stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from importlib.metadata import version

import numpy as np
import storch
import torch
from storchastic_models import (  # same environment, same directory
    CAT_MODEL,
    CATEGORIES,
    COND_FIX,
    MA_DECAY,
    ROLLOUT_MODEL,
    STEPS,
    SUM_SHIM,
    T_VALUES,
    attempt,
    categorical_batched,
    categorical_exact,
    jax_scg_reference,
    log,
    patched,
    reset_storch,
    rollout_batched,
    rollout_exact,
    rollout_sequential,
    sbn_batched,
    sbn_draws,
    sbn_inputs,
    sbn_sequential,
    toy_batched,
    toy_exact,
    toy_sequential,
)


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

        # The model here is torch_peers_models.storch_sbn's: same numbers from the same stream.
        import torch_peers_models

        reset_storch()
        torch.manual_seed(0)
        ours = sbn_batched(plain, plain, params, x, 16)
        torch.manual_seed(0)
        theirs = torch_peers_models.storch_sbn(params, x, 16)
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
