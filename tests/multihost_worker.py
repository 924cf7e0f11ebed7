"""Several processes, one program: the worker that ``tests/test_multihost.py`` launches.

Each process configures JAX for CPU (``--devices`` forced devices, gloo collectives), calls
``jax.distributed.initialize`` with a coordinator on localhost, and computes, over one mesh of
every process's devices:

* ``estimates_<model>``: ``jax.jit(jax.vmap(scg.grad(fn)))`` over a global key array placed
  with ``jax.make_array_from_process_local_data`` (every process holds only its own keys);
* ``hessians_<model>``: ``jax.jacfwd(scg.grad(fn))`` per key, the same way;
* ``steps``/``step_grads``/``step_hessian``: a data-parallel program, ``scg.grad`` inside
  ``jax.shard_map``, each device drawing its own sites for its own data and the per-device
  losses reduced with ``lax.pmean`` (plus a cost that is nonlinear after a ``lax.psum``);
  three SGD steps, and the Hessian of the spanning estimate.

Results are gathered with ``multihost_utils.process_allgather`` and process 0 saves them
with ``np.savez``. With ``--processes 1`` the same program runs in one process without
``jax.distributed``: the reference. JAX is configured only when this file runs as a script
(pytest imports every file under tests/ for doctests)::

    python tests/multihost_worker.py --processes 2 --devices 2 --out results.npz

launches both processes (``launch``) and waits for them; ``--process-id i --port p`` runs
one of them.
"""

from __future__ import annotations

import argparse
import inspect
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

KEYS_PER_DEVICE = 4
POINTS_PER_DEVICE = 3
FEATURES = 3
STEPS = 3
TIMEOUT = 1800.0  # seconds: generous, a loaded machine is slower, not failing


def configure(devices: int) -> None:
    """Everything that depends on the JAX version, in one place: CPU only, ``devices`` CPU
    devices in this process, gloo for collectives between processes. Runs before JAX creates
    its backends."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    if hasattr(jax.config, "jax_num_cpu_devices"):
        jax.config.update("jax_num_cpu_devices", devices)
    else:  # older JAX: the XLA flag, read when the CPU backend is created
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={devices}"
    if hasattr(jax.config, "jax_cpu_collectives_implementation"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(port: int, processes: int, process_id: int) -> None:
    """``jax.distributed.initialize`` on localhost, with generous timeouts where this JAX
    version takes them (a slow start of one process must not fail the others)."""
    import jax

    kwargs = dict(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process_id
    )
    accepted = inspect.signature(jax.distributed.initialize).parameters
    for name in ("initialization_timeout", "heartbeat_timeout_seconds", "shutdown_timeout_seconds"):
        if name in accepted:
            kwargs[name] = int(TIMEOUT)
    jax.distributed.initialize(**kwargs)


def mesh_over_all_devices(axis: str):
    """A 1-D mesh over every process's devices, with ``Auto`` axes: under ``jax.make_mesh``'s
    default (``Explicit`` in JAX 0.10) JAX fails to differentiate a ``lax.scan`` vmapped over
    sharded keys ("Resource axis: keys ... not found in mesh: ()", plain ``jax.grad`` too);
    the MDP model's loop is one."""
    import jax

    return jax.make_mesh((jax.device_count(),), (axis,), axis_types=(jax.sharding.AxisType.Auto,))


def place(global_array, sharding):
    """The global array sharded along its first axis, each process supplying only the rows of
    its own devices (``jax.device_put`` refuses devices of other processes)."""
    import jax

    n = global_array.shape[0]
    index = sharding.addressable_devices_indices_map(global_array.shape)
    lo = min(s[0].start or 0 for s in index.values())
    hi = max(n if s[0].stop is None else s[0].stop for s in index.values())
    assert hi - lo == n // jax.process_count(), (lo, hi, n)
    return jax.make_array_from_process_local_data(sharding, global_array[lo:hi])


def run(args) -> None:
    configure(args.devices)
    import jax

    if args.processes > 1:
        initialize(args.port, args.processes, args.process_id)
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jax_scg as scg
    from jax_scg import distributions as D
    from jax_scg import examples

    shard_map = getattr(jax, "shard_map", None)
    if shard_map is None:  # JAX < 0.7
        from jax.experimental.shard_map import shard_map

    n_devices = jax.device_count()
    assert n_devices == args.processes * args.devices, jax.devices()
    assert jax.process_count() == args.processes
    results = {}

    def gather(x):  # every process gets the global value (tiled: one array, not per process)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    # (a) One estimate per key, the keys sharded over every device of every process.
    mesh = mesh_over_all_devices("keys")
    by_key = NamedSharding(mesh, P("keys"))
    keys = place(jax.random.split(jax.random.key(0), KEYS_PER_DEVICE * n_devices), by_key)
    for model in (examples.FIGURE1[4], examples.MDP[0], examples.CONTINUOUS[0]):
        estimates = jax.jit(jax.vmap(scg.grad(model.fn), in_axes=(None, 0)))(model.theta, keys)
        assert len(estimates.sharding.device_set) == n_devices
        results[f"estimates_{model.name}"] = gather(estimates)
        hessians = jax.jit(jax.vmap(jax.jacfwd(scg.grad(model.fn)), in_axes=(None, 0)))(
            model.theta, keys
        )
        results[f"hessians_{model.name}"] = gather(hessians)

    # (b) One estimate spanning devices: data parallelism, per-device losses reduced with pmean.
    mesh = mesh_over_all_devices("d")
    by_device = NamedSharding(mesh, P("d"))
    data = np.asarray(
        jax.random.normal(jax.random.key(1), (n_devices * POINTS_PER_DEVICE, FEATURES)),
        dtype=np.float32,
    )
    data = place(data, by_device)
    weights = jnp.linspace(-1.0, 1.0, n_devices)

    def device_loss(theta, key, x):  # this device's key (1,) and data (POINTS_PER_DEVICE, F)
        z = scg.sample(key[0], D.Bernoulli(logits=x @ theta[:FEATURES]), name="z")
        local = jnp.mean((z - jax.nn.sigmoid(theta[0])) ** 2) + theta[FEATURES] * jnp.mean(z)
        total = lax.psum(jnp.sum(z) * weights[lax.axis_index("d")], "d")
        return lax.pmean(local, "d") + 0.1 * total**2  # nonlinear after the collective

    def spanning(fn):
        return jax.jit(shard_map(fn, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P()))

    grad_step = spanning(scg.grad(device_loss))
    theta = jnp.array([0.2, -0.3, 0.5, 0.1], dtype=jnp.float32)
    step_keys = jax.random.split(jax.random.key(2), (STEPS, n_devices))
    thetas, grads = [np.asarray(theta)], []
    for step in range(STEPS):
        g = grad_step(theta, place(step_keys[step], by_device), data)
        theta = theta - 0.5 * g
        grads.append(gather(g))
        thetas.append(gather(theta))
    results["step_grads"] = np.stack(grads)
    results["steps"] = np.stack(thetas)
    # (c) Second order: the Hessian of the spanning estimate, cross terms between devices.
    hessian = spanning(jax.hessian(scg.surrogate(device_loss)))(
        theta, place(step_keys[0], by_device), data
    )
    results["step_hessian"] = gather(hessian)

    if jax.process_index() == 0:
        np.savez(args.out, **results)
    if args.processes > 1:
        jax.distributed.shutdown()
    print(f"process {args.process_id} of {args.processes} done", flush=True)


def free_port() -> int:
    """A port free now (the coordinator binds it on every interface a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def launch(
    processes: int,
    devices: int,
    out: str,
    script: str = __file__,
    extra: tuple = (),
    timeout: float = TIMEOUT,
) -> list[str]:
    """Runs ``script`` as ``processes`` processes of ``devices`` CPU devices each (a free
    port for the coordinator, chosen now) and waits for all of them; returns their outputs.
    If one fails, or ``timeout`` passes, the others are killed and RuntimeError says why.
    A port taken between choosing and binding it is retried with another."""
    for attempt in range(3):
        try:
            return _launch_once(processes, devices, out, script, extra, timeout)
        except RuntimeError as e:
            text = str(e).lower()
            taken = ("failed to start rpc server", "failed to add port", "address already in use")
            if attempt == 2 or not any(t in text for t in taken):
                raise
    raise AssertionError("unreachable")


def _launch_once(processes, devices, out, script, extra, timeout):
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    with tempfile.TemporaryDirectory() as logs:
        procs, files = [], []
        try:
            for i in range(processes):
                f = open(os.path.join(logs, f"{i}.log"), "w+")
                files.append(f)
                cmd = [sys.executable, script, "--process-id", str(i), "--processes"]
                cmd += [str(processes), "--devices", str(devices), "--port", str(port)]
                cmd += ["--out", out, *extra]
                procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env))
            deadline = time.monotonic() + timeout
            failed = None
            while True:
                codes = [p.poll() for p in procs]
                failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
                if failed is not None or all(c == 0 for c in codes):
                    break
                if time.monotonic() > deadline:
                    failed = "timeout"
                    break
                time.sleep(0.2)
        finally:
            for p in procs:  # kill the others if one failed (or the caller was interrupted)
                if p.poll() is None:
                    p.kill()
                p.wait()
            outputs = []
            for f in files:
                f.seek(0)
                outputs.append(f.read())
                f.close()
        if failed is not None:
            report = "\n".join(f"--- process {i}:\n{o[-4000:]}" for i, o in enumerate(outputs))
            raise RuntimeError(f"process {failed} failed (port {port})\n{report}")
        return outputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process")
    parser.add_argument("--out", required=True, help="where process 0 saves the results")
    parser.add_argument("--process-id", type=int, default=None, help="run one process")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    if args.process_id is None and args.processes > 1:
        for text in launch(args.processes, args.devices, args.out):
            print(text, end="")
    else:
        args.process_id = args.process_id or 0
        run(args)


if __name__ == "__main__":
    main()
