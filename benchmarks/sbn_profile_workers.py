"""The worker subprocesses of ``sbn_profile.py`` and the analysis of their profiles and HLO.

Each worker answers one JSON request per line on stdin (:func:`serve`): :func:`jax_worker`
builds the JAX systems of ``sbn_profile.py`` (``hand``, ``scg``, ``NAME-mean``, ``NAME@C``,
...), :func:`torch_worker` Pyro's ELBOs; both compile or warm up, time batches of calls
(:func:`run_timed`) and profile, and the JAX worker also writes estimates and reports its
compiled program. The second half classifies what a profile measured into the report's
:data:`CATEGORIES`: ``jax.profiler`` events by the HLO opcodes of the thunk they ran
(:func:`classify_jax`), ``torch.profiler`` aten self times (:func:`classify_torch`); and
lists the dots of a compiled module (:func:`hlo_dots`).

Only the standard library and NumPy are imported at module level (the torch worker runs in
the peers' environment); JAX, ``harness`` and torch are imported inside the workers.
"""

from __future__ import annotations

import functools
import glob
import gzip
import json
import os
import re
import resource
import sys
import time
from collections import defaultdict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
PYRO_JIT = "pyro-jit"


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
    import hlo_stats
    import jax
    import jax.numpy as jnp
    import models_elbo
    import peer_models

    import jax_scg as scg

    model = peer_models.make("sbn")  # θ is drawn with jax.random: before the PRNG changes
    theta = model.theta
    if prng:
        jax.config.update("jax_default_prng_impl", prng)

    x, _, unravel = models_elbo.sbn_inputs(model.size)

    transpose_free_loss = functools.partial(
        models_elbo.sbn_elbo_transpose_free, x=x, unravel=unravel
    )

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
        opcodes = hlo_stats.hlo_opcodes(text)
        return {
            "ops": hlo_stats.hlo_op_count(text),
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
    import hlo_stats

    comps = hlo_stats.hlo_computations(text)

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
