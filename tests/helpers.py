"""Statistical assertions shared by the tests: Monte Carlo means against exact references."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def keys(seed: int, n: int):
    """``n`` fresh keys; each test uses its own seed, so no key is used twice."""
    return jax.random.split(jax.random.key(seed), n)


def z_bonferroni(n_coordinates: int, z: float = 5.0) -> float:
    """A z threshold that keeps the family-wise false alarm rate near that of one z test."""
    return z + math.sqrt(2.0 * math.log(max(n_coordinates, 1)))


def assert_mean_close(samples, exact, *, z: float = 5.0, what: str = "estimate"):
    """Asserts |mean - exact| <= z' * SE for every coordinate (z' Bonferroni-corrected)."""
    samples = np.asarray(samples, dtype=np.float64)
    exact = np.asarray(exact, dtype=np.float64)
    n = samples.shape[0]
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / math.sqrt(n)
    threshold = z_bonferroni(mean.size, z)
    # A coordinate whose estimator has zero variance must be exact up to float rounding.
    tolerance = threshold * se + 1e-5 * (1.0 + np.abs(exact))
    bad = np.abs(mean - exact) > tolerance
    assert not bad.any(), (
        f"{what}: Monte Carlo mean differs from the exact value by more than {threshold:.1f} SE\n"
        f"mean  = {mean}\nexact = {exact}\nSE    = {se}"
    )


def mc(fn, theta, seed: int, n: int):
    """``n`` independent estimates ``fn(theta, key)``, jitted and vmapped over keys."""
    return jax.jit(jax.vmap(fn, in_axes=(None, 0)))(theta, keys(seed, n))


def bernoulli_logp(x, logits):
    """log Bernoulli(x; sigmoid(logits)), written independently of jax_scg."""
    return x * jax.nn.log_sigmoid(logits) + (1 - x) * jax.nn.log_sigmoid(-logits)


def tree_mean(tree):
    return jax.tree_util.tree_map(lambda x: jnp.mean(x, 0), tree)
