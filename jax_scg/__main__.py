"""The demo: ``python -m jax_scg [--samples N]``.

Estimates the gradients (and Hessians) of the paper's Figure 1 graphs and of a small MDP with
``scg.grad`` over many keys (``scg.monte_carlo``: ``jax.jit`` of ``jax.vmap``, chunked), and
prints each beside its exact value with its standard error.
"""

from __future__ import annotations

import argparse
import functools

import jax
import numpy as np

import jax_scg as scg
from jax_scg import examples


def _row(name: str, estimator, keys, exact) -> str:
    result = scg.monte_carlo(estimator, keys, chunk_size=_CHUNK, exact=exact)
    mean, se, exact = (np.ravel(x) for x in (result.mean, result.standard_error, exact))
    cells = "  ".join(f"{m:+.4f}±{s:.4f} (exact {e:+.4f})" for m, s, e in zip(mean, se, exact))
    return f"  {name:<16} {cells}   max |z| = {result.max_abs_z:.1f}"


_CHUNK = 50_000  # estimates held in memory at once


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="estimator samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    keys = jax.random.split(jax.random.key(args.seed), args.samples)
    print(f"jax_scg {scg.__version__} on {jax.devices()[0].platform}, {args.samples} samples")
    sections = [
        ("Figure 1 of Schulman et al. (2015)", examples.FIGURE1),
        ("Continuous sites (score function, pathwise, implicit)", examples.CONTINUOUS),
        (f"An MDP in lax.scan, {examples.MDP_STEPS} steps (reward-to-go)", examples.MDP),
    ]
    for title, models in sections:
        print(f"\n{title}: gradient, mean ± standard error")
        for model in models:
            grad = functools.partial(scg.grad(model.fn), model.theta)
            print(_row(model.name, grad, keys, jax.grad(model.exact)(model.theta)))
    print("\nHessians (jax.hessian of scg.surrogate), graph 5 and the MDP:")
    for model in (examples.FIGURE1[4], examples.MDP[0]):
        hessian = functools.partial(jax.hessian(scg.surrogate(model.fn)), model.theta)
        print(_row(model.name, hessian, keys, jax.hessian(model.exact)(model.theta)))


if __name__ == "__main__":
    main()
