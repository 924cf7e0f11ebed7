"""Fuzzing collectives: random per-device programs inside ``jax.shard_map`` on a forced CPU
mesh, one estimate spanning devices, against exact answers.

Each program draws one or two sites per device (Bernoulli or 3-way Categorical; parameters
of its own device, shared by every device, or a site replicated on every device from one
key), mixes them with collectives (``psum``, ``pmean`` of a nonlinear function, ``pmax``,
``all_gather``, ``ppermute``) and returns a replicated scalar that is nonlinear after the
collectives. The exact expectation runs the same program under ``jax.vmap`` with the mesh
axis name, at every joint outcome of every device's sites (a replicated site counted once),
weighted by its probability; ``jax.grad``/``jax.hessian`` of it are the references. The mesh
needs its devices before JAX starts, so the flag is set when this file runs as a script (never
on import) and the tests run it in a subprocess::

    python tests/fuzz_mesh.py --programs 200 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

import jax_scg as scg
from jax_scg import distributions as D

AXIS = "d"
COLLECTIVES = ("psum", "pmean_sin", "pmax", "all_gather", "ppermute")
PARAMS = ("own", "shared", "replicated")
CATEGORY_VALUES = np.array([0.5, -1.0, 2.0])
MAX_OUTCOMES = 4096


@dataclasses.dataclass(frozen=True)
class MeshSite:
    kind: str  # "bern" or "cat"
    params: str  # "own" (theta per device), "shared" (one theta), "replicated" (one site)
    scale: float
    bias: float
    weight: float  # its value's weight in the device's feature u


@dataclasses.dataclass(frozen=True)
class MeshProgram:
    seed: int
    devices: int
    sites: tuple
    collectives: tuple  # (op, coefficients): op in COLLECTIVES
    square: float  # coefficient of u**2 in each device's local cost
    gather_weights: tuple
    hessian: bool

    @property
    def n_theta(self) -> int:  # per site: one logit per device; then the direct parameter
        return len(self.sites) * self.devices + 1

    def outcomes(self) -> int:
        size = {"bern": 2, "cat": 3}
        n = 1
        for s in self.sites:
            n *= size[s.kind] ** (1 if s.params == "replicated" else self.devices)
        return n


def generate_mesh(seed: int) -> MeshProgram:
    rng = np.random.default_rng(seed)
    while True:
        devices = int(rng.choice([2, 4]))
        sites = tuple(
            MeshSite(
                kind=str(rng.choice(["bern", "cat"], p=[0.7, 0.3])),
                params=str(rng.choice(PARAMS, p=[0.5, 0.25, 0.25])),
                scale=float(rng.uniform(0.5, 1.5)),
                bias=float(rng.uniform(-0.5, 0.5)),
                weight=float(rng.choice([-1, 1]) * rng.uniform(0.5, 1.5)),
            )
            for _ in range(int(rng.integers(1, 3)))
        )
        ops = rng.choice(COLLECTIVES, size=int(rng.integers(1, 4)), replace=False)
        collectives = tuple(
            (str(op), tuple(float(c) for c in rng.uniform(-1.0, 1.0, size=3))) for op in ops
        )
        program = MeshProgram(
            seed=seed,
            devices=devices,
            sites=sites,
            collectives=collectives,
            square=float(rng.uniform(-1.0, 1.0)),
            gather_weights=tuple(float(w) for w in rng.uniform(-1.0, 1.0, size=devices)),
            hessian=bool(rng.random() < 0.4),
        )
        if program.outcomes() <= MAX_OUTCOMES:
            return program


def site_distribution(site: MeshSite, theta, j: int, devices: int):
    index = j * devices + (lax.axis_index(AXIS) if site.params == "own" else 0)
    logit = site.scale * theta[index] + site.bias
    if site.kind == "bern":
        return D.Bernoulli(logits=logit)
    return D.Categorical(logits=logit * jnp.array([1.0, -1.0, 0.5]) + jnp.array([0.0, 0.3, -0.2]))


def site_value(site: MeshSite, x):
    return x.astype(jnp.float64) if site.kind == "bern" else jnp.asarray(CATEGORY_VALUES)[x]


def program_body(program: MeshProgram, theta, draws):
    """The per-device program, given the drawn values (a list, one per site)."""
    direct = theta[-1]
    drawn = sum(site.weight * site_value(site, x) for site, x in zip(program.sites, draws))
    u = drawn + 0.3 * direct
    local = program.square * u**2
    shared = 0.0
    n = program.devices
    for op, (a, b, c) in program.collectives:
        if op == "psum":
            g = lax.psum(u, AXIS)
        elif op == "pmean_sin":
            g = lax.pmean(jnp.sin(u) * direct, AXIS)
        elif op == "pmax":
            g = lax.pmax(drawn, AXIS)  # JAX cannot differentiate pmax: the draws only
        elif op == "all_gather":  # typed as varying: JAX does not know that it is not
            g = lax.all_gather(u, AXIS) @ jnp.asarray(program.gather_weights)
        else:  # ppermute: the previous device's u, different on each device
            g = lax.ppermute(u, AXIS, [(i, (i + 1) % n) for i in range(n)])
        if op in ("all_gather", "ppermute"):  # varying values: summed over devices below
            local = local + a * g * u + b * g**2 + c * direct * g
            continue
        local = local + a * g * u
        shared = shared + b * g**2 + c * direct * g
    return lax.psum(local, AXIS) + shared


def make_scg_fn(program: MeshProgram):
    def fn(theta, key, replicated_key):
        own = jax.random.split(key, len(program.sites))
        one = jax.random.split(replicated_key, len(program.sites))
        draws = []
        for j, site in enumerate(program.sites):
            k = one[j] if site.params == "replicated" else own[j]
            draws.append(scg.sample(k, site_distribution(site, theta, j, program.devices)))
        return program_body(program, theta, draws)

    return fn


def exact_expectation(program: MeshProgram):
    """E[fn](theta) by enumerating every device's draws (a replicated site once)."""
    per_site = []  # (support size, batched over devices?)
    for site in program.sites:
        size = 2 if site.kind == "bern" else 3
        per_site.append((size, site.params != "replicated"))
    axes = []
    for size, batched in per_site:
        axes += [range(size)] * (program.devices if batched else 1)
    outcomes = np.array(list(itertools.product(*axes)), dtype=np.int32)

    def split(row):
        draws, i = [], 0
        for _, batched in per_site:
            width = program.devices if batched else 1
            draws.append(row[i : i + width] if batched else row[i])
            i += width
        return draws

    def log_prob(theta, draws):
        total = 0.0
        for j, (site, x) in enumerate(zip(program.sites, draws)):
            if site.params == "replicated":  # no axis_index: one draw for every device
                total = total + site_distribution(site, theta, j, program.devices).log_prob(x)
            else:
                lp = jax.vmap(
                    lambda xd, site=site, j=j: site_distribution(
                        site, theta, j, program.devices
                    ).log_prob(xd),
                    axis_name=AXIS,
                )(x)
                total = total + jnp.sum(lp)
        return total

    def value(theta, draws):
        in_axes = [0 if s.params != "replicated" else None for s in program.sites]
        out = jax.vmap(
            lambda *ds: program_body(program, theta, list(ds)),
            in_axes=in_axes,
            axis_name=AXIS,
            axis_size=program.devices,
        )(*draws)
        return out[0]

    def expectation(theta):
        def term(row):
            draws = split(row)
            return jnp.exp(log_prob(theta, draws)) * value(theta, draws)

        return jnp.sum(jax.vmap(term)(jnp.asarray(outcomes)))

    return expectation


def theta_for(program: MeshProgram):
    rng = np.random.default_rng(program.seed + 10_000)
    return jnp.asarray(rng.uniform(-1.0, 1.0, size=program.n_theta))


def estimates(program: MeshProgram, n: int, seed: int, order: int):
    mesh = Mesh(np.array(jax.devices()[: program.devices]), (AXIS,))
    fn = make_scg_fn(program)
    derivative = scg.grad(fn) if order == 1 else jax.hessian(scg.surrogate(fn))
    mapped = jax.shard_map(
        lambda t, k, r: jax.vmap(derivative, in_axes=(None, 0, 0))(t, k[0], r),
        mesh=mesh,
        in_specs=(P(), P(AXIS), P()),
        out_specs=P(),
    )
    # The loss itself is replicated (out_specs=P() checks its type), so its gradient is
    # that of one value, not a sum over devices of per-device values.
    one = jax.shard_map(
        lambda t, k, r: fn(t, k[0], r), mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P()
    )
    one(theta_for(program), jax.random.split(jax.random.key(0), program.devices), jax.random.key(1))
    root = jax.random.key(seed)
    own, replicated = jax.random.split(root, 2)
    keys = jax.random.split(own, (program.devices, n))
    return jax.jit(mapped)(theta_for(program), keys, jax.random.split(replicated, n))


def check_mesh(program: MeshProgram, n: int, z: float) -> list:
    """Problems found in one program (empty when it passes)."""
    theta = theta_for(program)
    exact = exact_expectation(program)
    checks = [(1, jax.grad(exact)(theta))]
    if program.hessian:
        checks.append((2, jax.hessian(exact)(theta)))
    problems = []
    for order, reference in checks:
        samples = np.asarray(estimates(program, n, program.seed * 7 + order, order))
        samples = samples.reshape(n, -1)
        reference = np.asarray(reference).reshape(-1)
        mean = samples.mean(0)
        se = samples.std(0, ddof=1) / math.sqrt(n)
        bad = np.abs(mean - reference) > z * se + 1e-8 * (1 + np.abs(reference))
        if bad.any():
            problems.append(
                f"order {order}: mean {mean[bad]} exact {reference[bad]} se {se[bad]} "
                f"(coordinates {np.flatnonzero(bad)})"
            )
    return problems


def z_threshold(n_tests: int) -> float:
    return 5.0 + math.sqrt(2.0 * math.log(max(n_tests, 1)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=8_000)
    args = parser.parse_args(argv)
    assert jax.device_count() >= 4, jax.devices()
    z = z_threshold(args.programs * 80)
    failed = 0
    counts = {op: 0 for op in COLLECTIVES} | {p: 0 for p in PARAMS}
    for i in range(args.programs):
        program = generate_mesh(args.seed + i)
        for op, _ in program.collectives:
            counts[op] += 1
        for site in program.sites:
            counts[site.params] += 1
        problems = check_mesh(program, args.samples, z)
        if problems:
            failed += 1
            print(f"mesh program {args.seed + i} FAILED: {program}\n  " + "\n  ".join(problems))
        else:
            print(f"mesh program {args.seed + i} ok", flush=True)
    print("fragments:", counts)
    print(f"{args.programs - failed} of {args.programs} mesh programs passed")
    return 1 if failed else 0


def configure_process() -> None:
    """Four forced CPU devices and float64, for this file run as a script only: importing it
    (pytest's doctest collection does) must not change the importing process's JAX."""
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    jax.config.update("jax_enable_x64", True)


if __name__ == "__main__":
    configure_process()
    sys.exit(main())
