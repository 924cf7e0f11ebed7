"""ELBO-shaped objectives: per-point credit, and the first-order form that drops -log q's
zero-mean direct derivative (what Pyro/NumPyro's TraceGraph_ELBO do), with exact variances."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import distributions as D

POINTS = 256
DATA = 2.0 * jax.random.bernoulli(jax.random.key(2024), 0.5, (POINTS,)) - 1.0
DATA = DATA + jax.random.normal(jax.random.key(2025), (POINTS,))
PHI = jnp.zeros(POINTS)
LOG_HALF = math.log(0.5)


def _log_joint(z):
    """log p(z) + log p(x | z) per point: z ~ Bernoulli(1/2), x ~ Normal(2z - 1, 1)."""
    return LOG_HALF - 0.5 * (DATA - (2.0 * z - 1.0)) ** 2 - 0.5 * math.log(2 * math.pi)


def _depends_on_z(z):
    """The summands of ``_log_joint`` that z influences; the constants are cost nodes of their
    own that no site influences, so per-cost causality gives them no score term."""
    return -0.5 * (DATA - (2.0 * z - 1.0)) ** 2


def elbo(phi, key, detach=False):
    z, log_q = scg.sample_and_log_prob(key, D.Bernoulli(logits=phi), detach_log_prob=detach)
    return jnp.sum(_log_joint(z) - log_q)


def elbo_exact(phi):
    q = jax.nn.sigmoid(phi)
    log_q1, log_q0 = jax.nn.log_sigmoid(phi), jax.nn.log_sigmoid(-phi)
    return jnp.sum(q * (_log_joint(1.0) - log_q1) + (1 - q) * (_log_joint(0.0) - log_q0))


def exact_variance_per_coordinate(phi, detach):
    """Exact variance of coordinate i of the estimator, by enumerating z_i.

    The score of z_i multiplies the summands z_i influences: (x_i - (2 z_i - 1))² / -2 and,
    of -log q(z_i) = -(z_i φ_i - softplus(φ_i)), the summand -z_i φ_i. The kept form adds
    the direct derivative of -log q, -(z_i - σ(φ_i)).
    """
    q = jax.nn.sigmoid(phi)
    out = []
    for z, w in ((1.0, q), (0.0, 1 - q)):
        score = z - q  # d/dφ log q(z)
        g = score * (_depends_on_z(z) - z * phi) - (0.0 if detach else score)
        out.append((w, g))
    mean = sum(w * g for w, g in out)
    return sum(w * (g - mean) ** 2 for w, g in out)


def test_elbo_gradient_is_unbiased_in_both_forms():
    exact = jax.grad(elbo_exact)(PHI)
    for detach, seed in ((False, 71), (True, 72)):
        grads = mc(scg.grad(functools.partial(elbo, detach=detach)), PHI, seed=seed, n=4_000)
        assert_mean_close(grads, exact, what=f"ELBO gradient, detach={detach}")


def test_elbo_variance_equals_the_exact_per_point_variance():
    for detach, seed in ((False, 73), (True, 74)):
        grads = np.asarray(
            mc(scg.grad(functools.partial(elbo, detach=detach)), PHI, seed=seed, n=8_000)
        )
        exact = np.asarray(exact_variance_per_coordinate(PHI, detach))
        measured = grads.var(0, ddof=1)
        # SE of a sample variance: sqrt((m4 - σ⁴) / n), m4 the fourth central moment.
        centred = grads - grads.mean(0)
        se = np.sqrt(np.maximum((centred**4).mean(0) - measured**2, 0.0) / grads.shape[0])
        # At φ = 0 each coordinate is a symmetric two-point variable: its sample variance
        # then moves only at second order in the sample frequency, ~ z² σ² / n.
        n = grads.shape[0]
        assert np.all(np.abs(measured - exact) <= 6 * se + 36 * exact / n)


def test_detaching_log_q_lowers_first_order_variance():
    kept = np.asarray(exact_variance_per_coordinate(PHI, detach=False)).mean()
    detached = np.asarray(exact_variance_per_coordinate(PHI, detach=True)).mean()
    assert detached < 0.75 * kept
    ours = mc(scg.grad(lambda p, k: elbo(p, k, True)), PHI, seed=75, n=4_000)
    np.testing.assert_allclose(np.var(ours, 0).mean(), detached, rtol=0.1)


def test_detached_form_matches_a_hand_written_per_point_estimator():
    def by_hand(phi, key):
        q = D.Bernoulli(logits=phi)
        z = jax.lax.stop_gradient(q.sample(key))
        log_q = q.log_prob(z)
        costs = _depends_on_z(z) - z * jax.lax.stop_gradient(phi)
        constants = _log_joint(z) - _depends_on_z(z) - jax.lax.stop_gradient(log_q - z * phi)
        return jnp.sum(scg.magic_box(log_q) * costs + constants)

    for key in keys(76, 3):
        np.testing.assert_allclose(
            scg.grad(lambda p, k: elbo(p, k, True))(PHI, key),
            jax.grad(by_hand)(PHI, key),
            rtol=1e-5,
            atol=1e-5,
        )


def test_default_form_stays_unbiased_at_second_order_and_detached_does_not():
    phi = jnp.array([0.3, -0.4])
    data = DATA[:2]

    def small(phi, key, detach):
        z, log_q = scg.sample_and_log_prob(key, D.Bernoulli(logits=phi), detach_log_prob=detach)
        return jnp.sum(-0.5 * (data - (2.0 * z - 1.0)) ** 2 - log_q)

    def exact(phi):
        q = jax.nn.sigmoid(phi)
        one = -0.5 * (data - 1.0) ** 2 - jax.nn.log_sigmoid(phi)
        zero = -0.5 * (data + 1.0) ** 2 - jax.nn.log_sigmoid(-phi)
        return jnp.sum(q * one + (1 - q) * zero)

    hess = lambda detach: jax.hessian(scg.surrogate(lambda p, k: small(p, k, detach)))
    assert_mean_close(mc(hess(False), phi, seed=77, n=20_000), jax.hessian(exact)(phi))
    # The detached form misses the Fisher information q(1 - q) on the diagonal.
    detached = np.asarray(mc(hess(True), phi, seed=78, n=20_000)).mean(0)
    q = jax.nn.sigmoid(phi)
    fisher = np.diag(np.asarray(q * (1 - q)))
    np.testing.assert_allclose(detached - np.asarray(jax.hessian(exact)(phi)), fisher, atol=0.03)
