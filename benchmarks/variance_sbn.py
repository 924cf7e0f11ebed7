"""The sigmoid belief net of ``variance.py``: jax_scg's rows and the section at equal cost.

Holds :func:`mean_of` (the score function averaged over m estimates, also used by the
Categorical toy's rows), :func:`sbn_rows` (jax_scg's estimators on ``peer_models.sbn``: the
score function and its mean of 4, leave-one-out, a constant baseline, and
``scg.baselines.moving_average`` drawn one estimate after another in a ``lax.scan`` by
:func:`moving_average_estimates`), and :func:`sbn_section` (the report's section: jax_scg's
rows against Storchastic's at equal cost, with the goal's ratios).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import models_elbo
import numpy as np
import peer_models
import variance_peers
from harness import markdown_table
from jax import lax
from variance_storchastic import SBN_IMAGES, best, fmt_ratio, independent_ratio

import jax_scg as scg


def mean_of(grad, m):
    """The mean of ``m`` independent estimates (the score function at cost m)."""
    return lambda theta, key: jax.vmap(grad, (None, 0))(theta, jax.random.split(key, m)).mean(0)


MA_DECAYS = (0.9, 0.99)


def moving_average_estimates(loss, flat, decay, warmup_keys, keys):
    """Score-function estimates with ``scg.baselines.moving_average(decay)``, drawn as a
    training loop would: a ``lax.scan`` over keys carrying the baseline state (θ fixed), the
    baseline of step t the bias-corrected average of the downstream costs of steps before t
    (so each estimate is unbiased given the past); ``warmup_keys`` first, their estimates
    dropped. One evaluation of the ELBO's integrand per step (``grad_and_downstream_costs``:
    the gradient and the costs that update the average from the same draws)."""
    average = scg.baselines.moving_average(decay)

    def step(state, key):
        baselines = average.value(state)
        g, costs = scg.grad_and_downstream_costs(functools.partial(loss, baselines=baselines))(
            flat, key
        )
        return average.update(state, costs), g

    @jax.jit
    def run(warmup_keys, keys):
        shapes = jax.eval_shape(scg.downstream_costs(loss), flat, keys[0])
        state = average.init(jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes))
        state, _ = lax.scan(lambda s, k: (step(s, k)[0], None), state, warmup_keys)
        return lax.scan(step, state, keys)[1]

    return np.asarray(run(warmup_keys, keys), np.float64)


def _paired_bias_z(g, reference, guide):
    """Two numbers for estimates ``g`` and ``reference`` on the same keys (the same draws):
    over the guide coordinates (where the score terms are), max of |mean(g − reference)| /
    SE, the mean of the baseline's term, 0 for an unbiased baseline; over the model
    coordinates (no score term, so no baseline's term), max |g − reference| / max
    |reference|, float32 rounding of a differently arranged computation."""
    d = g[:, guide] - reference[:, guide]
    se = d.std(0, ddof=1) / np.sqrt(len(d))
    varies = se > 0
    z = float(np.max(np.abs(d.mean(0))[varies] / se[varies])) if varies.any() else 0.0
    model = ~guide
    rounding = np.abs(g[:, model] - reference[:, model]).max() / np.abs(reference[:, model]).max()
    return z, float(rounding)


def sbn_rows(quick, seed=4, chunk=250):
    """jax_scg on the sigmoid belief net (``peer_models.sbn``) at 1, 4 and 16 evaluations of
    the ELBO's integrand per estimate: per-estimate squared deviations for the intervals."""
    model = peer_models.sbn(SBN_IMAGES)
    loss, flat = model.scg_loss, model.theta
    n = 200 if quick else 10_000
    warmup = 200 if quick else 2_000
    ma_warmup = 50 if quick else 500
    baselines = variance_peers.warmup_baselines(loss, flat, warmup, seed=99, chunk=chunk)
    variants = [  # (label, estimator, cost evaluations per estimate)
        ("score function (detach_log_prob=True)", scg.grad(loss), 1),
        ("score function, mean of 4", mean_of(scg.grad(loss), 4), 4),
        ("leave-one-out, 4 copies", scg.baselines.leave_one_out(loss, 4), 4),
        ("leave-one-out, 16 copies", scg.baselines.leave_one_out(loss, 16), 16),
        (
            f"constant baseline per element (mean downstream cost over {warmup} warm-up keys, "
            "seed 99)",
            scg.grad(functools.partial(loss, baselines=baselines)),
            1,
        ),
    ]
    keys = jax.random.split(jax.random.key(seed), n)
    out, plain = {}, None

    def record(label, g, cost, **extra):
        mean = g.mean(0)
        u = ((g - mean) ** 2).mean(1) * n / (n - 1)
        se = g.std(0, ddof=1) / np.sqrt(n)
        out[label] = {"mean": mean, "se": se, "u": u, "cost": cost, **extra}

    for label, fn, cost in variants:
        run = jax.jit(jax.vmap(fn, in_axes=(None, 0)))
        g = np.concatenate(
            [np.asarray(run(flat, keys[i : i + chunk])) for i in range(0, n, chunk)]
        ).astype(np.float64)
        if plain is None:
            plain = g
        record(label, g, cost)
    # The moving average: warm-up keys from seed 98 (no measured row's seed), then the
    # measured keys of the rows above, one after another.
    warmup_keys = jax.random.split(jax.random.key(98), ma_warmup)
    guide = models_elbo.sbn_guide_mask()
    assert guide.shape == flat.shape
    for decay in MA_DECAYS:
        start = time.perf_counter()
        g = moving_average_estimates(loss, flat, decay, warmup_keys, keys)
        seconds = time.perf_counter() - start
        record(
            f"moving-average baseline per element (scg.baselines.moving_average({decay}), "
            f"sequential, {ma_warmup} warm-up steps, seed 98)",
            g,
            1,
            warmup=ma_warmup,
            paired=_paired_bias_z(g, plain, guide),
            guide_coordinates=int(guide.sum()),
            seconds=seconds,
        )
    return out, n, warmup


STORCH_MA_DECAY = 0.95  # MovingAverageBaseline's default decay, as storchastic_rows.py runs it
SBN_SHARP = "leave-one-out, 16 copies"  # jax_scg's lowest-variance SBN row: the sharp reference


def sbn_section(jax_sbn, n, warmup, result) -> list:
    """The SBN at equal cost: jax_scg's rows and Storchastic's, with the goal's ratios."""
    model = f"sigmoid belief net, {SBN_IMAGES} digits"
    reference = jax_sbn["score function (detach_log_prob=True)"]
    sharp = jax_sbn[SBN_SHARP]
    coordinates = len(reference["mean"])

    def agreement(mean, se, ref):
        # Coordinates that never vary (V1's columns of pixels that are 0 in every image) have
        # SE 0 in both and the same mean: left out.
        both = np.sqrt(se**2 + ref["se"] ** 2)
        varies = both > 0
        return np.max(np.abs(mean - ref["mean"])[varies] / both[varies])

    ours = [
        {
            "system": "jax_scg",
            "label": label,
            "cost": r["cost"],
            "n": n,
            "variance": r["u"].mean(),
            "se": r["u"].std(ddof=1) / np.sqrt(n),
            "z": agreement(r["mean"], r["se"], reference),
            "z_sharp": agreement(r["mean"], r["se"], sharp),
            "warmup": r.get("warmup"),
            "paired": r.get("paired"),
            "guide_coordinates": r.get("guide_coordinates"),
            "seconds": r.get("seconds"),
            "biased": None,
        }
        for label, r in jax_sbn.items()
    ]
    theirs = []
    if not isinstance(result, str):
        theirs = [
            {
                "system": "Storchastic",
                "label": r["estimator"],
                "cost": r["cost"],
                "n": r["n"],
                "variance": r["variance"],
                "se": r["variance_se"],
                "z": agreement(np.asarray(r["mean"]), np.asarray(r["se"]), reference),
                "z_sharp": agreement(np.asarray(r["mean"]), np.asarray(r["se"]), sharp),
                "warmup": r.get("warmup"),
                "biased": r.get("biased"),
            }
            for r in result["rows"]
            if r["model"] == model
        ]
    fixed = [r for r in ours if r["label"].startswith("constant baseline")]
    per_estimate = [r for r in ours if r not in fixed]
    unbiased = [r for r in theirs if not r["biased"]]
    rows, goal = [], []
    for r in ours + theirs:
        peer = best(unbiased, r["cost"])
        if peer is None:
            ratio = "–"
        elif peer is r:
            ratio = "1 (this row)"
        else:
            ratio = fmt_ratio(
                independent_ratio(r["variance"], r["se"], peer["variance"], peer["se"])
            )
        cost = str(r["cost"])
        if r in fixed:
            cost += f" (+{warmup} once)"
        elif r["warmup"]:
            cost += f" (+{r['warmup']} warm-up " + ("steps)" if r in ours else "calls)")
        rows.append(
            [
                r["system"],
                r["label"] + (" (biased)" if r["biased"] else ""),
                cost,
                "0",
                str(r["n"]),
                f"{r['variance']:.4g} ± {1.96 * r['se']:.2g}",
                f"{r['z']:.1f}",
                f"{r['z_sharp']:.1f}",
                ratio,
            ]
        )
    for cost in sorted({r["cost"] for r in theirs}):
        a, b = best(per_estimate, cost), best(unbiased, cost)
        if a is None or b is None:
            continue
        r = independent_ratio(a["variance"], a["se"], b["variance"], b["se"])
        status = "met" if r[0] <= 1 else "not met"
        line = (
            f"  - cost {cost}: jax_scg '{a['label']}' {a['variance']:.4g} / Storchastic "
            f"'{b['label']}' {b['variance']:.4g} = {fmt_ratio(r)}: {status}"
        )
        if status == "not met" and cost == 1 and b["label"].startswith("ScoreFunction (plain"):
            line += (
                " (plain score function against plain score function: the difference is in "
                "what multiplies each score, as in the ablation section above)"
            )
        others = [o for o in per_estimate if o["cost"] == cost and o is not a]
        if cost == 1 and others:
            line += "; jax_scg's other cost-1 rows: " + ", ".join(
                f"'{o['label']}' {o['variance']:.4g}" for o in others
            )
        biased = [t for t in theirs if t["biased"] and t["cost"] == cost]
        if biased:
            c = best(biased, cost)
            r2 = independent_ratio(a["variance"], a["se"], c["variance"], c["se"])
            met2 = r2[0] <= 1
            line += (
                f"; excluded as biased: Storchastic {', '.join(repr(t['label']) for t in biased)}"
                f" ({c['biased']}); against the lowest-variance of them, {c['variance']:.4g}, "
                f"the ratio is {fmt_ratio(r2)}: " + ("met" if met2 else "not met")
            )
            if status == "met" and not met2:
                status = "met against unbiased (moving average)"
        goal.append((cost, line, status))
    for r in fixed:
        peer = best(unbiased, 1)
        if peer:
            ratio = independent_ratio(r["variance"], r["se"], peer["variance"], peer["se"])
            goal.append(
                (
                    None,
                    f"  - apart from the equal-cost comparison: jax_scg '{r['label']}' (1 "
                    f"evaluation per estimate after {warmup} warm-up evaluations once): "
                    f"{r['variance']:.4g}, {fmt_ratio(ratio)} × Storchastic '{peer['label']}'",
                    None,
                )
            )
    moving = [r for r in ours if r["warmup"]]
    summed = [t for t in theirs if "images plate summed" in t["label"]]
    plain = [t for t in theirs if t["label"].startswith("ScoreFunction (plain")]
    summed_text = (
        f": variance {summed[0]['variance']:.4g}, "
        f"{summed[0]['variance'] / plain[0]['variance']:.3g}× the plain row's"
        if summed and plain
        else ""
    )
    check = None if isinstance(result, str) else result.get("sbn_check")
    lines = [
        f"jax_scg: {n} estimates per row, keys split from seed 4 (the same for every row), "
        f"the constant baseline's {warmup} warm-up keys from seed 99. Storchastic: the model "
        "of `torch_peers.storch_sbn` (checked: the plain row gives the same numbers from the "
        "same random stream, max |difference| "
        + (f"{check['max_abs_difference_to_torch_peers_storch_sbn']:.2g})" if check else "not run)")
        + ", with Storchastic's methods for z1 and z2; a method with n_samples=k adds a "
        "sample plate of k, and z2's nests in z1's. Cost: evaluations of the ELBO's integrand "
        "log p(x, z1, z2) − log q(z1, z2 | x) per estimate (no control variates). Variance: "
        f"mean over the {coordinates} coordinates of the per-coordinate variance of one estimate, "
        "± its 95% half-width; no exact gradient exists, so the means are compared with "
        f"jax_scg's score-function row and with its '{SBN_SHARP}' row (the lowest variance, "
        "so the sharper test) instead (max over coordinates of |Δmean| / sqrt(SE₁² + "
        f"SE₂²); about 4 by chance over {coordinates} coordinates). Ratio: to Storchastic's "
        "lowest-variance unbiased row at the same cost, delta method, independent runs.",
        "",
        "Baselines learned from past costs, drawn one estimate after another as in training "
        "(θ fixed; the warm-up estimates are dropped and not counted in the cost, as earlier "
        "training steps would supply them):",
        "",
        "- jax_scg: `scg.baselines.moving_average(decay)`, the bias-corrected running mean of "
        "each element's downstream cost, in a `lax.scan` carrying its state; step t's "
        "baseline is computed from the costs of steps before t, so each estimate is unbiased "
        "given the past. One evaluation per step (`scg.grad_and_downstream_costs`: the "
        "gradient and the costs that update the average, from the same draws). Warm-up keys "
        "from seed 98, then the measured keys above (so the draws are the plain row's, key by "
        "key). Unbiasedness, paired with the plain row on the same draws: max over the "
        + (f"{moving[0]['guide_coordinates']} " if moving else "")
        + "guide coordinates of |mean of (estimate − plain estimate)| / its SE, the mean of the "
        "baseline's term (about 4 by chance), and on the model coordinates, which get no score "
        "term, max |difference| / max |plain estimate| (float32 rounding): "
        + "; ".join(
            f"decay {r['label'].split('moving_average(')[1].split(')')[0]}: "
            f"{r['paired'][0]:.1f} and {r['paired'][1]:.1e} (scan of {r['warmup']} + {n} "
            f"steps, with compilation: {r['seconds']:.1f} s)"
            for r in moving
        )
        + ".",
        "- Storchastic: `ScoreFunction(baseline_factory='moving_average')` (its "
        "MovingAverageBaseline, default decay 0.95): one scalar average per (site, cost node) "
        "of `storch.reduce_plates(cost)`, the cost reduced over every plate, updated with the "
        "current call's cost before it is used, so the current draws enter their own "
        "baseline (biased, as on the REBAR toy). Sequential backward calls on one copy of θ "
        "with the same method objects. With the images plate summed (weight 1, as in the "
        f"other Storchastic rows) the average is of the cost summed over the {SBN_IMAGES} "
        f"images, {SBN_IMAGES}× one image's{summed_text}; with the images plate a mean "
        f"(Storchastic's default weight 1/{SBN_IMAGES}, gradient × {SBN_IMAGES}: the same "
        "estimates for the plain method, max |difference| "
        + (
            f"{check['max_abs_difference_mean_images_plate']:.2g}"
            if check and "max_abs_difference_mean_images_plate" in check
            else "not run"
        )
        + ") it is of the mean over images, and an image's own cost enters its baseline with "
        f"weight (1 − {STORCH_MA_DECAY}) / {SBN_IMAGES}: its score terms are scaled by "
        f"{1 - (1 - STORCH_MA_DECAY) / SBN_IMAGES:.5f} in expectation, a bias of "
        f"{(1 - STORCH_MA_DECAY) / SBN_IMAGES:.2%} (the column of max |Δmean|/SE shows whether "
        "its estimates can detect it).",
        "",
        markdown_table(
            [
                "system",
                "estimator",
                "cost evaluations / estimate",
                "control-variate evaluations",
                "n",
                "variance ± 95%",
                "max |Δmean|/SE vs jax_scg score function",
                f"max |Δmean|/SE vs jax_scg {SBN_SHARP}",
                "ratio to Storchastic's best unbiased row at this cost [95%]",
            ],
            rows,
        ),
    ]
    if isinstance(result, str):
        lines += ["", result]
    return lines, goal
