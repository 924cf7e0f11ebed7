"""Why Pyro's JitTraceGraph_ELBO outran JAX on the sigmoid belief net on CPU (issue 15, item 2).

    python benchmarks/sbn_profile.py [--quick] [--no-torch] [--out PATH]
        [--parts speed,cores,flags,profile,hlo] [--systems hand,scg@32,...] [--ps 64,256]

The model is ``peer_models.sbn()`` (64 binarised digits, z2 (8) -> z1 (16) -> x (64), 2408
parameters); the torch side is ``torch_peers.sbn_model_guide`` under Pyro's
``JitTraceGraph_ELBO(num_particles=P, vectorize_particles=True)``, which returns ONE gradient,
the average of P one-sample estimates (counted as P estimates, as in ``peers.py``). The JAX
systems, P keys per call:

- ``hand``, ``scg``: ``jax.vmap(grad, in_axes=(None, 0))``, as ``peers.py`` times model 4: P
  separate estimates, a (P, 2408) output.
- ``hand-mean``, ``scg-mean``: ``jax.grad`` / ``scg.grad`` of the mean over the P keys of the
  ``vmap``-ed surrogate / loss: one (2408,) gradient, the average of the same P estimates:
  what Pyro's call returns.
- ``scg-nt``, ``scg-nt-mean``: the jax_scg loss with every ``z @ w.T + b`` written as one
  ``lax.dot_general`` contracting ``w``'s second axis (no transpose of ``w``).
- ``NAME@C``: per key, ``lax.map(grad, keys, batch_size=C)``; for the means, the mean over
  ``lax.map`` of chunks of C keys.

Every alternative is checked against ``hand`` on the same keys (per key, or against the mean
of the per-key estimates) before it is timed. Every configuration runs in its own worker
subprocess (XLA_FLAGS, GLIBC_TUNABLES, the PRNG implementation and the CPU affinity are
fixed when a process starts); this process only drives them over pipes. Timings are
interleaved: in each round every (worker, system, P) entry runs one batch of calls (about
``target_s``), the order rotating by one entry per round, with a short pause after each
batch (torch's OpenMP threads spin for a while after a parallel region). Ratios are between
medians measured in the same rounds, with the interquartile range of the per-round ratios;
the machine may be shared, so lone absolute times mean little. Each batch also records the
worker's user and system CPU time and minor page faults (``getrusage``). "1 core" rows pin
both sides to CPU 0 with ``taskset`` (XLA sizes its thread pool from the affinity mask;
torch also gets ``torch.set_num_threads(1)``).

Profiles: ``jax.profiler`` traces (one event per XLA thunk, attributed to the HLO instruction
it runs, in the entry computation or a while loop's body, classified by the opcodes it
contains) and ``torch.profiler`` (self time per aten op), both on 1 core. Compiled programs:
op counts, dots, XLA's cost analysis and the temporary buffer (``memory_analysis``).

Writes ``benchmarks/results/sbn_profile_cpu.md``; the hand-written analysis between the
:data:`ANALYSIS` markers of an existing report is kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import glob
import gzip
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TORCH_PYTHON = os.path.join(HERE, ".venv-peers", "bin", "python")
SEED = 0
PAUSE_S = 0.02  # after each timed batch
JAX_SYSTEMS = (
    "hand",
    "scg",
    "hand@32",
    "scg@32",
    "hand-mean",
    "scg-mean",
    "scg-nt-mean",
    "scg-nt-mean@32",
)
PYRO_JIT = "pyro-jit"
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


#: glibc keeps XLA's large temporary buffer instead of a fresh mmap (and page faults) per call.
NO_MMAP = "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967296"
#: (label, environment, PRNG implementation): one JAX worker each, 2 threads.
FLAG_CONFIGS = tuple(
    (f"XLA_FLAGS={flag}", {"XLA_FLAGS": flag}, None)
    for flag in (
        "--xla_cpu_enable_fast_math=true",
        "--xla_cpu_multi_thread_eigen=false",
        "--xla_cpu_use_thunk_runtime=false",
        "--xla_cpu_use_xnnpack=false",
        "--xla_cpu_use_onednn=true",
        "--xla_cpu_prefer_vector_width=512",
    )
) + (
    (f"GLIBC_TUNABLES={NO_MMAP}", {"GLIBC_TUNABLES": NO_MMAP}, None),
    ("GLIBC_TUNABLES=glibc.malloc.hugetlb=1", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, None),
    ("jax_default_prng_impl=unsafe_rbg", {}, "unsafe_rbg"),
    ("jax_default_prng_impl=philox4x32", {}, "philox4x32"),
)


# ------------------------------------------------------------------------------------------
# Workers: a loop answering one JSON request per line on stdin


def serve(handlers: dict) -> None:
    """Answers ``{"op": name, ...}`` lines with ``handlers[name](**rest)``, one JSON line each."""
    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        if op == "quit":
            break
        try:
            reply = handlers[op](**request)
        except Exception as exc:  # noqa: BLE001 - report it to the driver
            import traceback

            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def run_timed(call, inner: int, finish=lambda out: out) -> dict:
    """Per call of ``call()``, over ``inner`` calls: wall, user and system CPU seconds (all
    threads of the process) and minor page faults."""
    r0, start, out = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), None
    for _ in range(inner):
        out = call()
    finish(out)
    wall, r1 = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "s": wall / inner,
        "user": (r1.ru_utime - r0.ru_utime) / inner,
        "sys": (r1.ru_stime - r0.ru_stime) / inner,
        "faults": (r1.ru_minflt - r0.ru_minflt) / inner,
    }


def jax_worker(prng: str | None) -> None:
    """Serves the JAX systems (XLA_FLAGS and affinity come from the environment)."""
    sys.path.insert(0, HERE)
    import harness
    import jax
    import jax.numpy as jnp
    import models
    import peer_models

    import jax_scg as scg

    model = peer_models.make("sbn")  # θ is drawn with jax.random: before the PRNG changes
    theta = model.theta
    if prng:
        jax.config.update("jax_default_prng_impl", prng)

    x, _, unravel = models.sbn_inputs(model.size)

    transpose_free_loss = functools.partial(models.sbn_elbo_transpose_free, x=x, unravel=unravel)

    def mean_of(loss):
        return lambda th, keys: jnp.mean(jax.vmap(loss, in_axes=(None, 0))(th, keys))

    makers = {
        "hand": lambda: jax.vmap(model.hand_grad(), in_axes=(None, 0)),
        "scg": lambda: jax.vmap(model.scg_grad(), in_axes=(None, 0)),
        "hand-mean": lambda: jax.grad(mean_of(model.handwritten)),
        "scg-mean": lambda: scg.grad(mean_of(model.scg_loss)),
        "scg-nt": lambda: jax.vmap(scg.grad(transpose_free_loss), in_axes=(None, 0)),
        "scg-nt-mean": lambda: scg.grad(mean_of(transpose_free_loss)),
    }
    built: dict = {}

    def make(system):
        """``name``, or ``name@C``: per key, ``lax.map(grad, keys, batch_size=C)``; for the
        means, the mean over ``lax.map`` of the chunks of C keys."""
        name, _, chunk = system.partition("@")
        if not chunk:
            return makers[name]()
        if not name.endswith("-mean"):
            grad = {
                "hand": model.hand_grad(),
                "scg": model.scg_grad(),
                "scg-nt": scg.grad(transpose_free_loss),
            }[name]
            return lambda th, keys: jax.lax.map(
                lambda k: grad(th, k), keys, batch_size=min(int(chunk), len(keys))
            )
        per_chunk = makers[name]()

        def chunked(th, keys):
            chunks = keys.reshape(-1, min(int(chunk), len(keys)), *keys.shape[1:])
            return jax.lax.map(lambda k: per_chunk(th, k), chunks).mean(0)

        return chunked

    def keys_for(p, seed=SEED):
        return jax.random.split(jax.random.key(seed), p)

    def get(system, p):
        if (system, p) not in built:
            fn = jax.jit(make(system))
            start = time.perf_counter()
            compiled = fn.lower(theta, keys_for(p)).compile()
            built[system, p] = (fn, compiled, time.perf_counter() - start)
        return built[system, p]

    def prepare(system, p):
        fn, _, seconds = get(system, p)
        for _ in range(2):
            jax.block_until_ready(fn(theta, keys_for(p)))
        return {"compile_s": seconds}

    def timed(system, p, inner):
        fn, args = get(system, p)[0], (theta, keys_for(p))
        return run_timed(lambda: fn(*args), inner, jax.block_until_ready)

    def estimates(system, p, path):
        np.save(path, np.asarray(get(system, p)[0](theta, keys_for(p)), np.float64))
        return {}

    def moments(system, p, n, path):
        fn, total, squares = get(system, p)[0], 0.0, 0.0
        for i in range(n // p):
            g = np.asarray(fn(theta, keys_for(p, seed=1000 + i)), np.float64)
            total, squares = total + g.sum(0), squares + (g**2).sum(0)
        mean = total / (n // p * p)
        np.savez(path, mean=mean, var=squares / (n // p * p) - mean**2, n=n // p * p)
        return {}

    def stats(system, p):
        _, compiled, _ = get(system, p)
        text = compiled.as_text()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        opcodes = harness.hlo_opcodes(text)
        return {
            "ops": harness.hlo_op_count(text),
            "flops": cost.get("flops", float("nan")),
            "transcendentals": cost.get("transcendentals", float("nan")),
            "bytes": cost.get("bytes accessed", float("nan")),
            "opcodes": dict(opcodes),
            "dots": hlo_dots(text),
            "transposed_dots": len(re.findall(TRANSPOSED_DOT, text)),
            "temp": compiled.memory_analysis().temp_size_in_bytes,
        }

    def profile(system, p, calls, directory):
        fn, compiled, _ = get(system, p)
        args = (theta, keys_for(p))
        jax.block_until_ready(fn(*args))
        start = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn(*args))
        wall = (time.perf_counter() - start) / calls
        with jax.profiler.trace(directory):
            for _ in range(calls):
                jax.block_until_ready(fn(*args))
        events = trace_durations(directory)
        return {"wall_ms": wall * 1e3, **classify_jax(compiled.as_text(), events, calls)}

    serve(
        {
            "ping": dict,
            "prepare": prepare,
            "time": timed,
            "estimates": estimates,
            "moments": moments,
            "stats": stats,
            "profile": profile,
        }
    )


def torch_worker(threads: int) -> None:
    """Serves Pyro's ELBOs on the SBN of ``torch_peers`` (run with the peers' environment)."""
    sys.path.insert(0, HERE)
    import torch

    torch.set_num_threads(threads)
    import pyro
    import torch_peers as tp

    inputs_path = os.environ["SBN_PROFILE_INPUTS"]
    with np.load(inputs_path) as npz:
        problem = tp.Inputs({k: npz[k] for k in npz.files}).sbn_problem()
    pyro.clear_param_store()  # one parameter for every ELBO of this worker
    pyro.param("theta", problem.theta.clone())
    param = pyro.get_param_store()["theta"].unconstrained()
    classes = {PYRO_JIT: tp.JitTraceGraph_ELBO, "pyro": tp.TraceGraph_ELBO}
    built: dict = {}

    def get(system, p):
        if (system, p) not in built:
            elbo = classes[system](num_particles=p, vectorize_particles=p > 1, max_plate_nesting=1)

            def grad():
                param.grad = None
                elbo.loss_and_grads(problem.model, problem.guide, problem.data)
                return -param.grad.detach().double().numpy()  # the loss is −ELBO

            built[system, p] = grad
        return built[system, p]

    def prepare(system, p):
        start = time.perf_counter()
        for _ in range(3):
            get(system, p)()
        return {"compile_s": time.perf_counter() - start}

    def timed(system, p, inner):
        return run_timed(get(system, p), inner)

    def profile(system, p, calls, directory):
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as torch_profile

        fn = get(system, p)
        fn()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        wall = (time.perf_counter() - start) / calls
        with torch_profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
            for _ in range(calls):
                fn()
        ops = {e.key: (e.self_cpu_time_total, e.flops) for e in prof.key_averages()}
        return {"wall_ms": wall * 1e3, **classify_torch(ops, calls)}

    serve({"ping": dict, "prepare": prepare, "time": timed, "profile": profile})


# ------------------------------------------------------------------------------------------
# Profiles and HLO


TRANSCENDENTAL_OPS = {
    "exponential",
    "log",
    "log-plus-one",
    "logistic",
    "exponential-minus-one",
    "tanh",
    "power",
    "sqrt",
    "rsqrt",
}
RANDOM_OPS = {"xor", "shift-right-logical", "shift-left", "rng-bit-generator"}
CATEGORIES = (
    "matmul",
    "random bits + sampling",
    "transcendental elementwise",
    "reductions",
    "other elementwise, copies",
    "not in an op (dispatch, Python, autograd)",
)


#: A dot contracting its lhs's first axis and its rhs's second: both operands transposed.
TRANSPOSED_DOT = r" dot\(.*lhs_contracting_dims=\{0\}, rhs_contracting_dims=\{1\}"


def hlo_dots(text: str) -> list[str]:
    """Every dot of the module (fusion bodies included): output shape, and "batched" if so."""
    dots = []
    for line in text.splitlines():
        match = re.search(r"= (\w+\[[\d,]*\])\S* dot\(", line)
        if match:
            dots.append(match.group(1) + (" batched" if "lhs_batch_dims" in line else ""))
    return sorted(dots)


def jax_category(opcodes: set[str]) -> str:
    if opcodes & {"dot", "convolution"}:
        return "matmul"
    if opcodes & RANDOM_OPS:
        return "random bits + sampling"
    if opcodes & TRANSCENDENTAL_OPS:
        return "transcendental elementwise"
    if "reduce" in opcodes:
        return "reductions"
    return "other elementwise, copies"


def category_order(category: str) -> tuple[int, str]:
    prefixes = [c.split(" (")[0] for c in CATEGORIES]
    return next(i for i, k in enumerate(prefixes) if category.startswith(k)), category


def trace_durations(directory: str) -> dict[str, float]:
    """Event name -> total microseconds, from the ``jax.profiler`` trace in ``directory``."""
    files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
    with gzip.open(files[0]) as f:
        events = json.load(f)["traceEvents"]
    out: dict = defaultdict(float)
    for e in events:
        if e.get("ph") == "X":
            out[e["name"]] += e["dur"]
    return out


def classify_jax(text: str, durations: dict, calls: int) -> dict:
    """Milliseconds per call by category of the thunks (the entry computation's instructions
    and those of the while loops' bodies), and the 8 largest."""
    import harness

    comps = harness.hlo_computations(text)

    def reach(comp, seen):
        ops = set()
        for _, opcode, called in comps.get(comp, []):
            ops.add(opcode)
            for c in called:
                if c not in seen:
                    seen.add(c)
                    ops |= reach(c, seen)
        return ops

    by_category: dict = defaultdict(float)
    top = []
    pending, done = ["ENTRY"], set()
    while pending:  # the entry and, recursively, the bodies of its while loops
        comp = pending.pop()
        done.add(comp)
        for name, opcode, called in comps.get(comp, []):
            if opcode == "while":  # its event spans its body's: count those instead
                pending += [c for c in called if c not in done]
                continue
            if name not in durations:
                continue
            ops = {opcode}.union(*(reach(c, {c}) for c in called))
            category = jax_category(ops)
            if opcode == "dot" and _batched(text, name):
                category = "matmul (batched)"
            ms = durations[name] / calls / 1e3
            by_category[category] += ms
            top.append((ms, name, category))
    top.sort(reverse=True)
    return {"categories": dict(by_category), "top": top[:8]}


def _batched(text: str, name: str) -> bool:
    line = next((x for x in text.splitlines() if f"%{name} = " in x), "")
    return "lhs_batch_dims" in line


def classify_torch(ops: dict, calls: int) -> dict:
    """Milliseconds per call by category of aten self times; matmul FLOPs per call."""
    by_category: dict = defaultdict(float)
    top, flops = [], 0
    for name, (self_us, op_flops) in ops.items():
        base = name.removeprefix("aten::")
        if base in {"mm", "bmm", "addmm", "baddbmm", "matmul", "linear"}:
            category = "matmul"
        elif "bernoulli" in base or base in {"uniform_", "rand", "rand_like"}:
            category = "random bits + sampling"
        elif any(k in base for k in ("sigmoid", "exp", "log", "softplus", "tanh", "entropy")):
            category = "transcendental elementwise"
        elif base in {"sum", "mean"}:
            category = "reductions"
        elif name.startswith("aten::"):
            category = "other elementwise, copies"
        else:
            category = "not in an op (dispatch, Python, autograd)"
        ms = self_us / calls / 1e3
        by_category[category] += ms
        flops += op_flops or 0
        top.append((ms, name, category))
    top.sort(reverse=True)
    return {"categories": dict(by_category), "top": top[:8], "mm_flops": flops / calls}


# ------------------------------------------------------------------------------------------
# The driver


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


FULL = Settings(
    ps=(64, 256, 1024),
    flag_p=1024,
    flag_systems=("hand", "hand@32", "scg-mean"),
    pyro_p=256,
    repeats=15,
    target_s=0.15,
    flags=FLAG_CONFIGS,
    profile_p=256,
    profiles=(
        ("hand", 256),
        ("hand", 1024),
        ("hand@32", 1024),
        ("hand-mean", 256),
        ("scg-mean", 256),
        ("scg-nt-mean", 256),
        (PYRO_JIT, 256),
        (PYRO_JIT, 1024),
    ),
    profile_calls=10,
    moments_n=8192,
    systems=JAX_SYSTEMS,
)
QUICK = Settings(
    ps=(16,),
    flag_p=16,
    flag_systems=("hand",),
    pyro_p=16,
    repeats=2,
    target_s=0.01,
    flags=FLAG_CONFIGS[:1],
    profile_p=16,
    profiles=(("hand", 16), (PYRO_JIT, 16)),
    profile_calls=2,
    moments_n=32,
    systems=("hand",),
)


class Driver:
    def __init__(self, tmp: str, torch: bool):
        self.tmp, self.torch, self.workers = tmp, torch, []

    def jax(self, label, env=None, prng=None, cpus=None) -> Worker:
        argv = [sys.executable, __file__, "--worker", "jax"] + (["--prng", prng] if prng else [])
        return self._add(Worker(label, argv, {"XLA_FLAGS": "", **(env or {})}, cpus, self.tmp))

    def pyro(self, label, threads, cpus=None) -> Worker | None:
        if not self.torch:
            return None
        argv = [TORCH_PYTHON, __file__, "--worker", "torch", "--threads", str(threads)]
        env = {"SBN_PROFILE_INPUTS": os.path.join(self.tmp, "inputs.npz")}
        return self._add(Worker(label, argv, env, cpus, self.tmp))

    def _add(self, worker):
        self.workers.append(worker)
        return worker

    def close_worker(self, worker):
        worker.close()
        self.workers.remove(worker)

    def close(self):
        for w in self.workers:
            w.close()


def write_inputs(path: str) -> None:
    sys.path.insert(0, HERE)
    import peer_models

    np.savez(path, **peer_models.torch_inputs([256]))


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


def flag_table(driver: Driver, default: Worker, pyro_worker, s: Settings) -> tuple[str, list]:
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    parser.add_argument("--no-torch", action="store_true", help="skip the Pyro side")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "sbn_profile_cpu.md"))
    parser.add_argument(
        "--parts",
        default="speed,cores,flags,profile,hlo",
        help="comma-separated subset of speed,cores,flags,profile,hlo",
    )
    parser.add_argument("--systems", default=None, help="comma-separated JAX systems")
    parser.add_argument("--ps", default=None, help="comma-separated P, overrides the default")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--prng", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker == "jax":
        jax_worker(args.prng)
        return 0
    if args.worker == "torch":
        torch_worker(args.threads)
        return 0
    s = QUICK if args.quick else FULL
    if args.systems:
        s = dataclasses.replace(s, systems=tuple(args.systems.split(",")))
    if args.ps:
        s = dataclasses.replace(s, ps=tuple(int(p) for p in args.ps.split(",")))
    todo = set(args.parts.split(","))
    use_torch = not args.no_torch and os.path.exists(TORCH_PYTHON)
    start = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="sbn_profile_")
    write_inputs(os.path.join(tmp, "inputs.npz"))
    driver = Driver(tmp, use_torch)
    parts = [header(args.quick, use_torch, s), kept_analysis(args.out)]
    try:  # these workers start (import) now, before anything is timed
        default, pyro2 = driver.jax("jax default"), driver.pyro("pyro 2 threads", 2)
        one_core = "cores" in todo or ("profile" in todo and not args.quick)
        jax1 = driver.jax("jax 1 core", cpus="0") if one_core else None
        pyro1 = driver.pyro("pyro 1 core", 1, cpus="0") if one_core else None
        for worker in driver.workers:
            worker.ask("ping")
        log("checks ...")
        checks = key_checks(default, tmp, s)
        parts += [
            "## Same estimates\n",
            table(["system", "compared", "max \\|Δ\\| / max \\|est\\|"], checks),
        ]
        if "speed" in todo:
            log("speed, default settings ...")
            parts += [
                "## Speed, default settings (2 threads each)\n",
                speed_table(default, pyro2, s),
            ]
        if "cores" in todo:
            log("speed, 1 core ...")
            parts += ["## Speed, 1 core each (taskset -c 0)\n", speed_table(jax1, pyro1, s)]
        if "flags" in todo:
            log("XLA flags ...")
            flags, prng_rows = flag_table(driver, default, pyro2, s)
            parts += [f"## XLA flags and PRNG implementations (2 threads, P={s.flag_p})\n", flags]
            if prng_rows:
                headers = [
                    "PRNG configuration",
                    "estimates",
                    "max \\|z\\| of the mean vs threefry [Bonferroni bound, 0.01]",
                ]
                parts.append(table(headers, prng_rows))
        if "profile" in todo:
            log("profiles ...")
            parts += ["## Profiles\n", profile_section(jax1 or default, pyro1 or pyro2, tmp, s)]
        if "hlo" in todo:
            log("HLO ...")
            parts += ["## Compiled programs\n", hlo_section(default, s)]
    finally:
        driver.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    parts.append(
        f"\nTotal run time {time.perf_counter() - start:.0f} s; load average at the end {load}.\n"
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


ANALYSIS = ("<!-- analysis: written by hand, kept when sbn_profile.py rewrites this file -->",
            "<!-- end of analysis -->")  # fmt: skip


def kept_analysis(path: str) -> str:
    """The hand-written analysis between the :data:`ANALYSIS` markers of an existing report."""
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        old = f.read()
    start, end = old.find(ANALYSIS[0]), old.find(ANALYSIS[1])
    return old[start : end + len(ANALYSIS[1])] + "\n" if 0 <= start < end else ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def header(quick: bool, use_torch: bool, s: Settings) -> str:
    return "\n".join(
        [
            "# Sigmoid belief net: JAX against Pyro's JitTraceGraph_ELBO on CPU"
            + (" (--quick smoke run)" if quick else ""),
            "",
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
            f"- {platform.platform()}, {os.cpu_count()} CPU(s); "
            f"{s.repeats} interleaved rounds of about {s.target_s} s per entry; load average "
            f"(1, 5, 15 min) at the start {', '.join(f'{x:.1f}' for x in os.getloadavg())}"
            + ("" if use_torch else "; Pyro not run"),
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
