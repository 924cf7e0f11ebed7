"""Monte Carlo statistics of an estimator over many keys: mean, standard error, variance.

Every user of a gradient estimator writes the same loop: run it on many independent keys
(``jax.jit(jax.vmap(...))``), in chunks when the estimates do not fit in memory, then take
means and standard errors, and compare against an exact value. :func:`monte_carlo` is that loop.

Each chunk's mean and centred sum of squares are computed on the device (two passes, so no
cancellation in the estimate's dtype); the chunks are combined on the host in float64 with
Chan et al.'s parallel update, so the statistics do not depend on the chunk size beyond float
rounding. The last chunk is padded with repeated keys whose estimates are masked out, so every
chunk has the same shape and the estimator compiles once.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class MonteCarloResult:
    """Statistics of ``count`` independent estimates; each field is a pytree like one estimate.

    Attributes:
      mean: the mean of the estimates.
      standard_error: ``sqrt(variance / count)``, the standard error of ``mean``.
      variance: the unbiased (``ddof=1``) variance of one estimate, per coordinate.
      count: how many estimates (keys).
      z: ``(mean - exact) / standard_error`` per coordinate where ``exact`` was given, else
        ``None``. A coordinate with zero standard error has ``z = 0`` where the mean equals
        ``exact`` (up to float rounding) and ``±inf`` otherwise.

    Examples:
      >>> import jax, jax_scg as scg
      >>> keys = jax.random.split(jax.random.key(1), 1000)
      >>> result = scg.monte_carlo(lambda k: jax.random.normal(k, (2,)), keys, exact=0.0)
      >>> result.mean.shape, result.count, bool(result.max_abs_z < 5)
      ((2,), 1000, True)
    """

    mean: Any
    standard_error: Any
    variance: Any
    count: int
    z: Any = None

    @property
    def max_abs_z(self) -> float:
        """The largest ``|z|`` over all coordinates (``exact`` must have been given)."""
        if self.z is None:
            raise ValueError("no z-scores: pass exact= to monte_carlo")
        return max(float(np.max(np.abs(z), initial=0.0)) for z in jax.tree.leaves(self.z))


def _chunk_statistics(estimator, keys, valid):
    """Count, mean and centred sum of squares of ``estimator`` over the valid keys."""
    estimates = jax.vmap(estimator)(keys)
    count = jnp.sum(valid)

    def as_float(x):
        x = jnp.asarray(x)
        return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.result_type(float))

    def mask_like(x):
        return valid.reshape(valid.shape + (1,) * (x.ndim - 1)).astype(x.dtype)

    estimates = jax.tree.map(as_float, estimates)
    means = jax.tree.map(lambda x: jnp.sum(x * mask_like(x), 0) / count.astype(x.dtype), estimates)
    centred_squares = jax.tree.map(
        lambda x, m: jnp.sum(jnp.square(x - m) * mask_like(x), 0), estimates, means
    )
    return count, means, centred_squares


def _combine(total, chunk):
    """Chan, Golub & LeVeque's pairwise update of (count, mean, M2), in float64."""
    n_a, mean_a, m2_a = total
    n_b, mean_b, m2_b = chunk
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + np.square(delta) * (n_a * n_b / n)
    return n, mean, m2


def _z_score(mean, se, exact):
    exact = np.asarray(exact, np.float64)
    difference = mean - exact
    tolerance = 8 * np.finfo(np.float32).eps * (1.0 + np.abs(exact))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = difference / se
    exact_match = np.abs(difference) <= tolerance
    return np.where(se > 0, z, np.where(exact_match, 0.0, np.copysign(np.inf, difference)))


def monte_carlo(
    estimator: Callable[[jax.Array], Any],
    keys: jax.Array,
    *,
    chunk_size: int | None = None,
    exact: Any = None,
    progress: bool | None = None,
) -> MonteCarloResult:
    """Runs ``estimator`` once per key (jit + vmap, chunked) and returns its statistics.

    Args:
      estimator: a function of one key returning a pytree of arrays (one estimate), e.g.
        ``lambda k: scg.grad(loss)(theta, k)``. It is jitted and vmapped here.
      keys: independent keys stacked on a leading axis (``jax.random.split(key, n)``).
      chunk_size: how many keys to run at once (bounds memory: the estimates of one chunk
        live at a time). ``None`` runs all keys at once.
      exact: a pytree like one estimate (each leaf broadcast against the estimate's leaf);
        if given, the result's ``z`` holds ``(mean - exact) / standard_error`` per coordinate.
      progress: print a progress line to stderr after each chunk. ``None`` shows it when
        there is more than one chunk and stderr is a terminal.

    Returns:
      A :class:`MonteCarloResult` with ``mean``, ``standard_error``, ``variance`` (float64
      NumPy arrays in the estimate's tree structure), ``count`` and ``z``.

    Raises:
      ValueError: fewer than two keys, or a ``chunk_size`` below 1.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> loss = lambda theta, key: scg.sample(key, D.Bernoulli(logits=theta)) * 3.0
      >>> keys = jax.random.split(jax.random.key(0), 10_000)
      >>> result = scg.monte_carlo(lambda k: scg.grad(loss)(0.0, k), keys, exact=0.75)
      >>> result.count, result.max_abs_z < 5
      (10000, True)
    """
    count = int(keys.shape[0])
    if count < 2:
        raise ValueError(f"monte_carlo needs at least two keys to estimate a variance, got {count}")
    chunk_size = count if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    chunk_size = min(chunk_size, count)
    n_chunks = math.ceil(count / chunk_size)
    if progress is None:
        progress = n_chunks > 1 and sys.stderr.isatty()

    run_chunk = jax.jit(lambda k, valid: _chunk_statistics(estimator, k, valid))
    totals = None
    treedef = None
    for index in range(n_chunks):
        start = index * chunk_size
        chunk_keys = keys[start : start + chunk_size]
        valid = np.ones(chunk_size, bool)
        size = chunk_keys.shape[0]
        if size < chunk_size:  # pad with repeated keys, masked out: one compilation for all
            valid[size:] = False
            repeats = np.arange(chunk_size) % size
            chunk_keys = chunk_keys[repeats]
        n_chunk, means, centred_squares = run_chunk(chunk_keys, jnp.asarray(valid))
        mean_leaves, treedef = jax.tree.flatten(means)
        chunk = [
            (float(n_chunk), np.asarray(m, np.float64), np.asarray(m2, np.float64))
            for m, m2 in zip(mean_leaves, jax.tree.leaves(centred_squares))
        ]
        totals = chunk if totals is None else [_combine(t, c) for t, c in zip(totals, chunk)]
        if progress:
            done = min(start + chunk_size, count)
            print(f"\rmonte_carlo: {done}/{count} keys", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr, flush=True)

    means = [mean for _, mean, _ in totals]
    variances = [m2 / (n - 1) for n, _, m2 in totals]
    errors = [np.sqrt(v / count) for v in variances]
    z = None
    if exact is not None:
        exact_leaves = treedef.flatten_up_to(exact)
        z = treedef.unflatten([_z_score(m, s, e) for m, s, e in zip(means, errors, exact_leaves)])
    return MonteCarloResult(
        mean=treedef.unflatten(means),
        standard_error=treedef.unflatten(errors),
        variance=treedef.unflatten(variances),
        count=count,
        z=z,
    )
