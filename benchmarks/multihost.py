"""Several hosts, tried on one machine: N local processes × M CPU devices each, joined by
``jax.distributed.initialize`` (a coordinator on localhost, gloo collectives between
processes), estimating ``jax.jit(jax.vmap(scg.grad(fn)))`` over one global key array; then one
process with N·M devices over the same keys. Prints estimates per second for both and the
largest absolute difference between their estimates (0: the same keys give the same
estimates, whichever process draws them)::

    python benchmarks/multihost.py                                  # 2 processes × 2 devices
    python benchmarks/multihost.py --processes 4 --devices 2 --keys 8192
    python benchmarks/multihost.py --quick --out multihost.md       # a small smoke run

The worker (``run``) is the recipe for a cluster: there, start one process per host (or per
GPU) with ``jax.distributed.initialize()`` and leave out ``configure``. The devices are CPU
devices of this machine sharing its cores, so the throughputs say that it works, not how a
cluster scales.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

TIMEOUT = 1800.0  # seconds for all processes together


def configure(devices: int) -> None:
    """CPU only, ``devices`` CPU devices in this process, gloo for collectives between
    processes: the only JAX-version-dependent lines. Before JAX creates its backends."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    if hasattr(jax.config, "jax_num_cpu_devices"):
        jax.config.update("jax_num_cpu_devices", devices)
    else:  # older JAX: the XLA flag, read when the CPU backend is created
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
    if hasattr(jax.config, "jax_cpu_collectives_implementation"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def run(args) -> None:
    """One process: estimates over the global keys, timed; process 0 writes them."""
    configure(args.devices)
    import jax

    if args.processes > 1:
        kwargs = {}
        accepted = inspect.signature(jax.distributed.initialize).parameters
        for name in (
            "initialization_timeout",
            "heartbeat_timeout_seconds",
            "shutdown_timeout_seconds",
        ):
            if name in accepted:
                kwargs[name] = int(TIMEOUT)
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.processes,
            process_id=args.process_id,
            **kwargs,
        )
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jax_scg as scg
    from jax_scg import examples

    # A mesh over every process's devices, with Auto axes: under jax.make_mesh's default
    # (Explicit in JAX 0.10), JAX fails to differentiate a lax.scan vmapped over sharded keys
    # ("Resource axis: keys ... not found in mesh: ()"; the MDP model's loop is one).
    mesh = jax.make_mesh((jax.device_count(),), ("keys",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, P("keys"))
    all_keys = jax.random.split(jax.random.key(0), args.keys)
    # Each process supplies the rows of its own devices (device_put refuses other processes').
    index = sharding.addressable_devices_indices_map(all_keys.shape)
    lo = min(s[0].start or 0 for s in index.values())
    hi = max(args.keys if s[0].stop is None else s[0].stop for s in index.values())
    keys = jax.make_array_from_process_local_data(sharding, all_keys[lo:hi])

    report = {}
    for model in models(examples, args.quick):
        estimate = jax.jit(jax.vmap(scg.grad(model.fn), in_axes=(None, 0)))
        estimate(model.theta, keys).block_until_ready()  # compile
        multihost_utils.sync_global_devices(f"start {model.name}")
        start = time.perf_counter()
        for _ in range(args.repeats):
            estimates = estimate(model.theta, keys)
        estimates.block_until_ready()
        multihost_utils.sync_global_devices(f"stop {model.name}")
        seconds = time.perf_counter() - start
        gathered = np.asarray(multihost_utils.process_allgather(estimates, tiled=True))
        report[model.name] = {
            "per_second": args.keys * args.repeats / seconds,
            "estimates": gathered.tolist(),
        }
    if jax.process_index() == 0:
        with open(args.out, "w") as f:
            json.dump(report, f)
    if args.processes > 1:
        jax.distributed.shutdown()


def models(examples, quick):
    models = (examples.FIGURE1[4], examples.MDP[0], examples.CONTINUOUS[0])
    return models[:1] if quick else models


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))  # the coordinator binds it on every interface
        return s.getsockname()[1]


def launch(processes: int, devices: int, out: str, common: list) -> None:
    """Starts the processes and waits; if one fails (or TIMEOUT passes) the others are killed."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as logs:
        procs, files = [], []
        try:
            for i in range(processes):
                files.append(open(os.path.join(logs, f"{i}.log"), "w+"))
                cmd = [sys.executable, __file__, "--process-id", str(i), "--port", str(port)]
                cmd += ["--processes", str(processes), "--devices", str(devices), "--out", out]
                procs.append(
                    subprocess.Popen(
                        cmd + common, stdout=files[-1], stderr=subprocess.STDOUT, env=env
                    )
                )
            deadline = time.monotonic() + TIMEOUT
            while True:
                codes = [p.poll() for p in procs]
                failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
                if failed or all(c == 0 for c in codes) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            logs_text = []
            for f in files:
                f.seek(0)
                logs_text.append(f.read())
                f.close()
        if any(p.returncode != 0 for p in procs):
            for i, text in enumerate(logs_text):
                print(f"--- process {i}:\n{text[-4000:]}", file=sys.stderr)
            raise SystemExit(f"{processes} processes × {devices} devices failed")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2, help="local processes (N)")
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process (M)")
    parser.add_argument("--keys", type=int, default=None, help="estimates per call (all devices)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="one model, a few keys")
    parser.add_argument("--out", default=None, help="also write the table here (markdown)")
    parser.add_argument("--process-id", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    total = args.processes * args.devices
    if args.keys is None:
        args.keys = 8 * total if args.quick else 4096
    args.keys = max(total, args.keys // total * total)  # a multiple of the device count
    if args.repeats is None:
        args.repeats = 2 if args.quick else 20
    if args.process_id is not None:  # a worker
        run(args)
        return

    common = ["--keys", str(args.keys), "--repeats", str(args.repeats)]
    common += ["--quick"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        many, one = os.path.join(tmp, "many.json"), os.path.join(tmp, "one.json")
        launch(args.processes, args.devices, many, common)
        launch(1, total, one, common)
        with open(many) as f:
            many = json.load(f)
        with open(one) as f:
            one = json.load(f)
    n, m = args.processes, args.devices
    lines = [
        f"### {n} processes × {m} CPU devices (gloo) against 1 process × {total} devices",
        "",
        f"| model | keys | {n} × {m} devices, estimates/s | 1 × {total} devices, estimates/s "
        "| max abs diff |",
        "|---|---|---|---|---|",
    ]
    for name, row in many.items():
        diff = np.max(np.abs(np.asarray(row["estimates"]) - np.asarray(one[name]["estimates"])))
        lines.append(
            f"| {name} | {args.keys} | {row['per_second']:.0f} | {one[name]['per_second']:.0f} "
            f"| {diff:.3g} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
