"""The two ELBO models of the benchmarks, each defined once, with its hand-written surrogate.

For each: its data, its jax_scg program (``scg.grad`` of it is one gradient estimate), the
hand-written DiCE surrogate with jax_scg's credit assignment (``jax.grad`` of it gives the
same estimate from the same key), and NumPyro's ``TraceGraph_ELBO`` gradient of the same
model. ``peer_models.py`` is the peer suite's registry of these; the other JAX models are in
``models.py``.

* **ELBO** with N Bernoulli latents and a data plate (``variance_peers.py`` model A,
  ``peers.py`` model 2), exact gradient, exact variances, NumPyro's ``TraceGraph_ELBO``.
* **SBN**: the two-layer sigmoid belief net on binarised digits (``variance_peers.py``
  model B, ``peers.py`` model 4, ``variance.py``, ``sbn_ablation.py``, ``sbn_profile.py``),
  its transpose-free form, NumPyro's model and guide.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.flatten_util import ravel_pytree

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src.distributions import _softplus  # the softplus of D.Bernoulli.log_prob

# ------------------------------------------------------------------------------------------
# ELBO: N independent Bernoulli latents with a data plate, exact gradient by enumeration
# (variance_peers.py model A, peers.py model 2)

POINTS = 256
LOG_HALF = math.log(0.5)
HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def elbo_data(points: int = POINTS) -> jax.Array:
    """x_i = (2 b_i − 1) + ε_i with fixed keys; for 256 points the data of tests/test_elbo.py."""
    signs = 2.0 * jax.random.bernoulli(jax.random.key(2024), 0.5, (points,)) - 1.0
    return signs + jax.random.normal(jax.random.key(2025), (points,))


def elbo_log_joint(data, z):
    """log p(z_i) + log p(x_i | z_i) per point."""
    return LOG_HALF - 0.5 * (data - (2.0 * z - 1.0)) ** 2 - HALF_LOG_2PI


def elbo_loss(phi, key, data, detach=True, one_node=False, estimator="auto"):
    q = D.Bernoulli(logits=phi)
    z, log_q = scg.sample_and_log_prob(key, q, detach_log_prob=detach, estimator=estimator)
    terms = elbo_log_joint(data, z) - log_q
    if one_node:
        # A product with a value every z_i reaches makes each term one cost node that every
        # z_i influences (numerically ×1): the whole ELBO times the score of all of z.
        terms = terms * (1.0 + 0.0 * jnp.sum(z))
    return jnp.sum(terms)


def elbo_exact(phi, data):
    q = jax.nn.sigmoid(phi)
    log_q1, log_q0 = jax.nn.log_sigmoid(phi), jax.nn.log_sigmoid(-phi)
    one, zero = elbo_log_joint(data, 1.0) - log_q1, elbo_log_joint(data, 0.0) - log_q0
    return jnp.sum(q * one + (1 - q) * zero)


def elbo_exact_variances(data):
    """Exact mean per-coordinate variances at φ = 0 (q = 1/2), by enumerating z_i.

    Coordinate i of a per-point estimator is (z_i - 1/2) (c_i(z_i) + offset), minus the
    direct derivative z_i - 1/2 of log q when it is kept; c_i(z) = -(x_i - (2z - 1))² / 2.
    jax_scg's costs hold only the summands z_i reaches (offset 0); NumPyro's per-point cost
    also holds the constants log p(z_i) - log q(z_i) - ½ log 2π. The one-node estimator is
    (z_i - 1/2) E(z), E the whole ELBO with its constants.
    """
    data = np.asarray(data, np.float64)
    cost = {z: -0.5 * (data - (2.0 * z - 1.0)) ** 2 for z in (0.0, 1.0)}

    def per_point(offset, kept):
        g = {z: (z - 0.5) * (cost[z] + offset - (1.0 if kept else 0.0)) for z in (0.0, 1.0)}
        mean = 0.5 * (g[0.0] + g[1.0])
        return float((0.5 * ((g[0.0] - mean) ** 2 + (g[1.0] - mean) ** 2)).mean())

    constants = LOG_HALF - HALF_LOG_2PI - LOG_HALF  # log p(z) - ½ log 2π - log q(z), at q = ½
    term = {z: cost[z] + constants for z in (0.0, 1.0)}
    mean_term = 0.5 * (term[0.0] + term[1.0])
    total_second_moment = float(
        (0.5 * ((term[0.0] - mean_term) ** 2 + (term[1.0] - mean_term) ** 2)).sum()
        + mean_term.sum() ** 2
    )
    one_node = 0.25 * total_second_moment - (0.25 * (term[1.0] - term[0.0])) ** 2
    return {
        "jax_scg detached": per_point(0.0, False),
        "jax_scg log q kept": per_point(0.0, True),
        "jax_scg / NumPyro one node": float(one_node.mean()),
        "NumPyro plate": per_point(constants, False),
    }


def numpyro_elbo_grad(data, plate=True):
    """The ELBO gradient estimate of NumPyro's TraceGraph_ELBO, plate over points or not."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import TraceGraph_ELBO

    points = data.shape[0]

    def model(x):
        if plate:
            with numpyro.plate("points", points):
                z = numpyro.sample("z", dist.Bernoulli(probs=0.5))
                numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0), obs=x)
        else:
            z = numpyro.sample("z", dist.Bernoulli(probs=jnp.full(points, 0.5)).to_event(1))
            numpyro.sample("x", dist.Normal(2.0 * z - 1.0, 1.0).to_event(1), obs=x)

    def guide(x):
        phi = numpyro.param("phi", jnp.zeros(points))
        # probs=, not logits=: NumPyro 0.22's Bernoulli(logits=) log-prob gradient is wrong
        # at logits exactly 0 (the subgradient of its clip/abs at 0), and φ = 0 here.
        q = dist.Bernoulli(probs=jax.nn.sigmoid(phi))
        if plate:
            with numpyro.plate("points", points):
                numpyro.sample("z", q)
        else:
            numpyro.sample("z", q.to_event(1))

    elbo = TraceGraph_ELBO()

    def grad(phi, key):
        negative = lambda p: elbo.loss(key, {"phi": p}, model, guide, data)
        return -jax.grad(negative)(phi)

    return grad


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
    """Per-point DiCE: Σ_i ⊡(log q_i)·(reached_i) + Σ_i unreached_i (see ``peer_models.py``)."""
    q = D.Bernoulli(logits=phi)
    z = lax.stop_gradient(q.sample(key))
    boxed = scg.magic_box(q.log_prob(z)) * elbo_reached(data, z, phi)
    return jnp.sum(boxed + elbo_unreached(phi))


# ------------------------------------------------------------------------------------------
# SBN: a two-layer sigmoid belief net on binarised digits, no closed form (variance_peers.py
# model B, peers.py model 4)
#: The flat order of θ: ``ravel_pytree`` of a dict flattens its sorted keys.
SBN_NAMES = ("V1", "V2", "W1", "W2", "b1", "b2", "c1", "c2")

Z1, Z2, PIXELS = 16, 8, 64


def digits(count):
    """The first ``count`` scikit-learn digits, 8×8, binarised at pixel > 7."""
    from sklearn.datasets import load_digits

    return jnp.asarray(load_digits().data[:count] > 7, jnp.float32)


def sbn_params():
    """Fixed initial parameters, Normal(0, 0.1²): guide (V1, c1, V2, c2), model (W2, b2, W1, b1)."""
    shapes = {
        "V1": (Z1, PIXELS), "c1": (Z1,), "V2": (Z2, Z1), "c2": (Z2,),
        "W2": (Z1, Z2), "b2": (Z1,), "W1": (PIXELS, Z1), "b1": (PIXELS,),
    }  # fmt: skip
    keys = jax.random.split(jax.random.key(31), len(shapes))
    return {
        name: 0.1 * jax.random.normal(k, shape) for k, (name, shape) in zip(keys, shapes.items())
    }


def sbn_affine(z, w, b, matmul):
    """z @ w.T + b, or the same as a broadcast product summed over the input axis; in both
    forms jax_scg's per-element credit follows the image axis (as a plate would)."""
    if matmul:
        return z @ w.T + b
    return jnp.sum(z[:, None, :] * w, axis=-1) + b


def sbn_elbo(flat, key, x, unravel, matmul=True, baselines=None, estimator="auto"):
    """The ELBO of images ``x`` as a jax_scg program (θ flat; ``baselines`` per site name)."""
    p = unravel(flat)
    baselines = baselines or {}
    k1, k2 = jax.random.split(key)
    z1, log_q1 = scg.sample_and_log_prob(
        k1,
        D.Bernoulli(logits=x @ p["V1"].T + p["c1"]),
        detach_log_prob=True,
        estimator=estimator,
        baseline=baselines.get("z1"),
        name="z1",
    )
    z2, log_q2 = scg.sample_and_log_prob(
        k2,
        D.Bernoulli(logits=sbn_affine(z1, p["V2"], p["c2"], matmul)),
        detach_log_prob=True,
        estimator=estimator,
        baseline=baselines.get("z2"),
        name="z2",
    )
    log_p = (
        jnp.sum(D.Bernoulli(logits=jnp.zeros(Z2)).log_prob(z2))
        + jnp.sum(D.Bernoulli(logits=sbn_affine(z2, p["W2"], p["b2"], matmul)).log_prob(z1))
        + jnp.sum(D.Bernoulli(logits=sbn_affine(z1, p["W1"], p["b1"], matmul)).log_prob(x))
    )
    return log_p - jnp.sum(log_q1) - jnp.sum(log_q2)


def sbn_elbo_transpose_free(flat, key, x, unravel):
    """:func:`sbn_elbo` with every ``z @ w.T`` written as one ``dot_general`` contracting w's
    dimension 1: no transpose of w (``sbn_profile.py``'s "scg-nt")."""

    def affine(z, w, b):
        return jax.lax.dot_general(z, w, (((z.ndim - 1,), (1,)), ((), ()))) + b

    p, (k1, k2) = unravel(flat), jax.random.split(key)

    def site(k, logits, name):
        return scg.sample_and_log_prob(
            k, D.Bernoulli(logits=logits), detach_log_prob=True, name=name
        )

    z1, log_q1 = site(k1, affine(x, p["V1"], p["c1"]), "z1")
    z2, log_q2 = site(k2, affine(z1, p["V2"], p["c2"]), "z2")
    log_p = (
        jnp.sum(D.Bernoulli(logits=jnp.zeros(z2.shape[-1])).log_prob(z2))
        + jnp.sum(D.Bernoulli(logits=affine(z2, p["W2"], p["b2"])).log_prob(z1))
        + jnp.sum(D.Bernoulli(logits=affine(z1, p["W1"], p["b1"])).log_prob(x))
    )
    return log_p - jnp.sum(log_q1) - jnp.sum(log_q2)


def sbn_guide_mask() -> np.ndarray:
    """True at the guide's coordinates (V1, c1, V2, c2) of the flat θ."""
    is_guide = {k: jnp.full(v.shape, k[0] in "Vc", bool) for k, v in sbn_params().items()}
    return np.asarray(ravel_pytree(is_guide)[0])


def numpyro_sbn_model(x):
    """The sigmoid belief net as a NumPyro model, plate over images."""
    import numpyro
    import numpyro.distributions as dist

    images = x.shape[0]
    init = sbn_params()  # start values only: the loss substitutes the flat vector's

    def model(x):
        w2, b2 = numpyro.param("W2", init["W2"]), numpyro.param("b2", init["b2"])
        w1, b1 = numpyro.param("W1", init["W1"]), numpyro.param("b1", init["b1"])
        with numpyro.plate("images", images):
            z2 = numpyro.sample("z2", dist.Bernoulli(probs=jnp.full(Z2, 0.5)).to_event(1))
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=z2 @ w2.T + b2).to_event(1))
            numpyro.sample("x", dist.Bernoulli(logits=z1 @ w1.T + b1).to_event(1), obs=x)

    return model


def numpyro_sbn_guide(x):
    """The guide q(z1 | x) q(z2 | z1) as a NumPyro guide, plate over images."""
    import numpyro
    import numpyro.distributions as dist

    images = x.shape[0]
    init = sbn_params()

    def guide(x):
        v1, c1 = numpyro.param("V1", init["V1"]), numpyro.param("c1", init["c1"])
        v2, c2 = numpyro.param("V2", init["V2"]), numpyro.param("c2", init["c2"])
        with numpyro.plate("images", images):
            z1 = numpyro.sample("z1", dist.Bernoulli(logits=x @ v1.T + c1).to_event(1))
            numpyro.sample("z2", dist.Bernoulli(logits=z1 @ v2.T + c2).to_event(1))

    return guide


def numpyro_sbn_grad(x, unravel):
    """The ELBO gradient estimate of NumPyro's TraceGraph_ELBO for model B, plate over images."""
    from numpyro.infer import TraceGraph_ELBO

    model, guide = numpyro_sbn_model(x), numpyro_sbn_guide(x)
    elbo = TraceGraph_ELBO()

    def grad(flat, key):
        negative = lambda f: elbo.loss(key, unravel(f), model, guide, x)
        return -jax.grad(negative)(flat)

    return grad


def sbn_stop_model(p):
    """The model's parameters (W, b) stopped, the guide's (V, c) kept."""
    return {k: v if k[0] in "Vc" else lax.stop_gradient(v) for k, v in p.items()}


def sbn_handwritten(flat, key, x, unravel, stop_model=False):
    """DiCE by hand with jax_scg's credit: per image, and within an image per element.

    With ``stop_model``, the model's parameters are stopped: only the scores keep their
    derivatives (the score-stream of ``sbn_forms.py``'s first-order form).

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
    p = sbn_stop_model(unravel(flat)) if stop_model else unravel(flat)
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
    """(binarised digits, flat float32 θ of :func:`sbn_params`, unravel)."""
    flat, unravel = ravel_pytree(sbn_params())
    return digits(images), jnp.asarray(flat, jnp.float32), unravel
