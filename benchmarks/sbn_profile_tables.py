"""The tables of ``sbn_profile.py``'s report, each measured through worker subprocesses.

The driver's end of the pipes: a :class:`Worker` is one worker subprocess, an :class:`Entry`
one timed (worker, system, P); :func:`interleave` times entries in rotating rounds and
:func:`ratio_cell` writes a ratio between medians of the same rounds. :class:`Settings`
holds the sizes of a run. Then one function per table: :func:`speed_table`,
:func:`flag_table` (with :func:`moments_z` for the PRNG implementations), :func:`key_checks`,
:func:`profile_section` and :func:`hlo_section`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import statistics
import subprocess
import time
from collections import Counter

import numpy as np
from sbn_profile_workers import PYRO_JIT, TRANSCENDENTAL_OPS, category_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAUSE_S = 0.02  # after each timed batch
LABELS = {
    "hand": "hand-written JAX, vmap(grad)",
    "scg": "jax_scg, vmap(scg.grad)",
    "hand-mean": "hand-written JAX, grad of the mean",
    "scg-mean": "jax_scg, scg.grad of the mean",
    "scg-nt": "jax_scg, affine maps without .T, vmap(scg.grad)",
    "scg-nt-mean": "jax_scg, affine maps without .T, scg.grad of the mean",
    PYRO_JIT: "Pyro JitTraceGraph_ELBO",
    "pyro": "Pyro TraceGraph_ELBO",
}


def label(system: str) -> str:
    name, _, chunk = system.partition("@")
    if not chunk:
        return LABELS[name]
    if name.endswith("-mean"):
        return LABELS[name] + f", lax.map over chunks of {chunk} keys"
    return LABELS[name].replace("vmap(", f"lax.map(batch_size={chunk}, ")


# ------------------------------------------------------------------------------------------
# The driver's end of the pipes


class Worker:
    """A worker subprocess and its request pipe."""

    def __init__(self, label, argv, env=None, cpus=None, log_dir="."):
        self.label = label
        self.log_path = os.path.join(log_dir, re.sub(r"\W+", "_", label) + ".log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - closed in close()
        argv = (["taskset", "-c", cpus] if cpus else []) + argv
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )

    def ask(self, op, **request):
        self.proc.stdin.write(json.dumps({"op": op, **request}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line or "error" in (reply := json.loads(line)):
            self.log.flush()
            with open(self.log_path) as f:
                tail = f.read()[-3000:]
            raise RuntimeError(f"worker {self.label}: {line.strip() or 'died'}\n{tail}")
        return reply

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        self.log.close()


@dataclasses.dataclass
class Entry:
    """One timed (worker, system, P)."""

    worker: Worker
    system: str
    p: int
    inner: int = 1
    times: list = dataclasses.field(default_factory=list)
    usage: list = dataclasses.field(default_factory=list)

    def median(self, field: str) -> float:
        return float(np.median([u[field] for u in self.usage]))

    @property
    def rate(self) -> float:
        return self.p / float(np.median(self.times))


def interleave(entries: list[Entry], repeats: int, target_s: float) -> None:
    """Prepares every entry, then times them in rotating rounds (see the module text)."""
    for e in entries:
        e.worker.ask("prepare", system=e.system, p=e.p)
        per_call = min(e.worker.ask("time", system=e.system, p=e.p, inner=1)["s"] for _ in range(3))
        e.inner = int(min(1000, max(1, round(target_s / per_call))))
    for r in range(repeats):
        shift = r % len(entries)
        for e in entries[shift:] + entries[:shift]:
            e.usage.append(e.worker.ask("time", system=e.system, p=e.p, inner=e.inner))
            e.times.append(e.usage[-1]["s"])
            time.sleep(PAUSE_S)


def ratio_cell(entry: Entry, base: Entry | None) -> str:
    """Median est/s ratio to ``base`` with the IQR of the per-round ratios."""
    if base is None:
        return "–"
    paired = np.asarray(base.times) / np.asarray(entry.times) * entry.p / base.p
    q25, q75 = np.percentile(paired, [25, 75])
    return f"{entry.rate / base.rate:.2f} [{q25:.2f}, {q75:.2f}]"


def table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Settings:
    ps: tuple
    flag_p: int
    flag_systems: tuple
    pyro_p: int
    repeats: int
    target_s: float
    flags: tuple
    profile_p: int
    profiles: tuple
    profile_calls: int
    moments_n: int
    systems: tuple


# ------------------------------------------------------------------------------------------
# The tables


def speed_table(jax_worker, pyro_worker, s: Settings) -> str:
    """Estimates/s of every system at every P and its ratio to Pyro JIT at the same P; then
    the CPU time and page faults behind each, from the same rounds."""
    entries = {(system, p): Entry(jax_worker, system, p) for p in s.ps for system in s.systems}
    if pyro_worker:
        entries.update({(PYRO_JIT, p): Entry(pyro_worker, PYRO_JIT, p) for p in s.ps})
    interleave(list(entries.values()), s.repeats, s.target_s)
    systems = s.systems + ((PYRO_JIT,) if pyro_worker else ())
    rows, usage = [], []
    for system in systems:
        rows.append([label(system)])
        usage.append([label(system)])
        for p in s.ps:
            e = entries[system, p]
            rows[-1] += [f"{e.rate:,.0f}", ratio_cell(e, entries.get((PYRO_JIT, p)))]
            usage[-1].append(
                f"{e.median('user') / p * 1e6:.0f} + {e.median('sys') / p * 1e6:.0f}; "
                f"{e.median('faults'):,.0f}"
            )
    headers = ["system"] + [h for p in s.ps for h in (f"est/s P={p}", f"/ Pyro JIT P={p} [IQR]")]
    usage_headers = ["CPU µs per estimate, user + system; page faults per call"] + [
        f"P={p}" for p in s.ps
    ]
    return table(headers, rows) + "\n" + table(usage_headers, usage)


def flag_table(driver, default: Worker, pyro_worker, s: Settings) -> tuple[str, list]:
    """Each flag / environment / PRNG configuration in its own worker, one at a time (to
    bound memory): its JAX systems at ``s.flag_p`` keys per call, interleaved with the
    default worker's and with Pyro JIT at ``s.pyro_p``, so every ratio is same-round. For
    the PRNG configurations, also the max |z| of their mean against threefry's."""
    p, systems, tmp = s.flag_p, s.flag_systems, driver.tmp
    reference = estimates_of(default, "hand", s.ps[0], tmp)
    ref_moments = os.path.join(tmp, "m0.npz")
    if any(prng for _, _, prng in s.flags):
        default.ask("moments", system="hand", p=s.ps[0], n=s.moments_n, path=ref_moments)
    rows, prng_rows, defaults = [], [], []
    for name, env, prng in s.flags:
        worker = driver.jax(name, env, prng)
        entries = {(c, x): Entry(w, x, p) for c, w in (("default", default), (name, worker))
                   for x in systems}  # fmt: skip
        pyro = Entry(pyro_worker, PYRO_JIT, s.pyro_p) if pyro_worker else None
        interleave(list(entries.values()) + ([pyro] if pyro else []), s.repeats, s.target_s)
        row = [name, f"{entries[name, systems[0]].median('sys') / p * 1e6:.0f}"]
        for x in systems:
            e = entries[name, x]
            row += [f"{e.rate:,.0f}", ratio_cell(e, entries["default", x]), ratio_cell(e, pyro)]
        if prng:
            row.append("other draws")
            prng_rows.append([name, *moments_z(worker, ref_moments, s)])
        else:
            got = estimates_of(worker, "hand", s.ps[0], tmp)
            diff = np.max(np.abs(got - reference)) / np.max(np.abs(reference))
            row.append(f"{diff:.1e}" if diff else "0")
        rows.append(row)
        defaults.append((entries, pyro))
        driver.close_worker(worker)
    sys_us = np.median([e["default", systems[0]].median("sys") for e, _ in defaults]) / p * 1e6
    row = ["default (its median over the rounds above)", f"{sys_us:.0f}"]
    for x in systems:
        rate = np.median([entries["default", x].rate for entries, _ in defaults])
        row += [f"{rate:,.0f}", "1", "–"]
    rows.insert(0, row + ["0"])
    headers = ["configuration", f"{systems[0]}: system CPU µs / est"]
    for x in systems:
        headers += [f"{x} est/s", "/ default [IQR]", f"/ Pyro JIT P={s.pyro_p} [IQR]"]
    headers.append("max \\|Δ\\| / max \\|est\\| vs default, same keys")
    text = table(headers, rows)
    if pyro_worker:
        rates = [pyro.rate for _, pyro in defaults]
        text += (
            f"\nPyro JIT P={s.pyro_p} in the same rounds: {min(rates):,.0f} to "
            f"{max(rates):,.0f} est/s.\n"
        )
    return text, prng_rows


def moments_z(worker: Worker, ref_path: str, s: Settings) -> list:
    """[estimates, max |z| [Bonferroni bound]] of ``worker``'s mean against ``ref_path``'s."""
    path = ref_path.replace(".npz", "_other.npz")
    worker.ask("moments", system="hand", p=s.ps[0], n=s.moments_n, path=path)
    a, b = np.load(ref_path), np.load(path)
    se = np.sqrt(a["var"] / a["n"] + b["var"] / b["n"])
    z = np.abs(a["mean"] - b["mean"]) / np.where(se > 0, se, np.inf)
    bound = statistics.NormalDist().inv_cdf(1 - 0.01 / (2 * len(z)))  # Bonferroni, 0.01
    return [int(b["n"]), f"{np.max(z):.2f} [{bound:.2f}]"]


def estimates_of(worker: Worker, system: str, p: int, tmp: str) -> np.ndarray:
    path = os.path.join(tmp, "estimates.npy")
    worker.ask("estimates", system=system, p=p, path=path)
    return np.load(path)


def key_checks(default: Worker, tmp: str, s: Settings) -> list:
    """Each JAX system against hand-written vmap(grad) on the same keys."""
    hand = estimates_of(default, "hand", s.ps[0], tmp)
    rows = []
    for system in s.systems:
        got = estimates_of(default, system, s.ps[0], tmp)
        want = hand if got.ndim == 2 else hand.mean(0)
        diff = np.max(np.abs(got - want)) / np.max(np.abs(want))
        what = "per key" if got.ndim == 2 else "mean of the per-key estimates"
        rows.append([label(system), what, f"{diff:.1e}" if diff > 0 else "0"])
    return rows


def profile_section(jax1: Worker, pyro1, tmp: str, s: Settings) -> str:
    """Milliseconds per category of each (system, P) of ``s.profiles``, single-threaded."""
    results = {}
    for system, p in s.profiles:
        worker = pyro1 if system == PYRO_JIT else jax1
        if worker is None or (system != PYRO_JIT and system not in s.systems):
            continue
        directory = os.path.join(tmp, f"trace_{len(results)}")
        reply = worker.ask(
            "profile", system=system, p=p, calls=s.profile_calls, directory=directory
        )
        results[f"{system}, P={p}"] = (p, reply)
    categories = sorted(
        {c for _, r in results.values() for c in r["categories"]}, key=category_order
    )
    per_est = lambda p, ms: f"{ms / p * 1e3:.1f}"
    rows = [
        [c] + [per_est(p, r["categories"].get(c, 0.0)) for p, r in results.values()]
        for c in categories
    ]
    rows.append(
        ["**sum of profiled ops**"]
        + [per_est(p, sum(r["categories"].values())) for p, r in results.values()]
    )
    rows.append(
        ["**wall, not profiled**"] + [per_est(p, r["wall_ms"]) for p, r in results.values()]
    )
    text = table(["µs per estimate, 1 core"] + list(results), rows)
    for name, (p, r) in results.items():
        top = "; ".join(f"{n} {ms / p * 1e3:.1f} ({c})" for ms, n, c in r["top"])
        text += f"\n- {name}, largest (µs per estimate): {top}"
        if "mm_flops" in r:
            text += f"\n- {name}: matmul FLOPs per estimate {r['mm_flops'] / p:,.0f}"
    return text + "\n"


def hlo_section(default: Worker, s: Settings) -> str:
    """Op counts and XLA's cost analysis at ``s.profile_p``; the temporary buffer at each P."""
    rows, notes, p = [], [], s.profile_p
    for system in s.systems:
        st = default.ask("stats", system=system, p=p)
        # XLA's cost analysis counts a while loop's body once: per estimate, divide by a chunk
        per = min(int(system.partition("@")[2] or p), p)
        dots = Counter(st["dots"])
        ops = st["opcodes"]
        temp = [default.ask("stats", system=system, p=q)["temp"] / 1e6 for q in s.ps]
        rows.append(
            [
                label(system),
                st["ops"],
                sum(dots.values()),
                sum(n for d, n in dots.items() if d.endswith("batched")),
                st["transposed_dots"],
                sum(ops.get(o, 0) for o in TRANSCENDENTAL_OPS),
                f"{st['flops'] / per:,.0f}",
                f"{st['transcendentals'] / per:,.0f}",
                f"{st['bytes'] / per / 1e3:,.0f}",
                " / ".join(f"{x:.1f}" for x in temp),
            ]
        )
        notes.append(
            f"- {label(system)}, dots (output shape): "
            + ", ".join(f"{d}" + (f" ×{n}" if n > 1 else "") for d, n in dots.items())
        )
    headers = [
        f"system (P={p})",
        "HLO ops",
        "dots",
        "batched dots",
        "dots on transposed operands",
        "transcendental instructions",
        "FLOPs / estimate",
        "transcendentals / estimate",
        "kB accessed / estimate",
        "temp buffer MB, P=" + " / ".join(str(q) for q in s.ps),
    ]
    return table(headers, rows) + "\n" + "\n".join(notes) + "\n"
