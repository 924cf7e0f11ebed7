"""Determinism across devices: the same keys give the same estimates on one device and
sharded over eight, with jit + NamedSharding and with shard_map (CPU devices forced with
XLA_FLAGS, in a subprocess so the flag is set before JAX starts). Discrete models agree
bitwise; the continuous one to float rounding."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jax_scg as scg
    from jax_scg import examples

    try:
        shard_map = jax.shard_map
    except AttributeError:
        from jax.experimental.shard_map import shard_map
    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("keys",))
    for model in (examples.FIGURE1[4], examples.MDP[0], examples.CONTINUOUS[0]):
        keys = jax.random.split(jax.random.key(0), 64)
        estimate = jax.jit(jax.vmap(scg.grad(model.fn), in_axes=(None, 0)))
        one = np.asarray(estimate(model.theta, jax.device_put(keys, jax.devices()[0])))
        sharded_keys = jax.device_put(keys, NamedSharding(mesh, P("keys")))
        many = estimate(model.theta, sharded_keys)
        assert len(many.sharding.device_set) == 8
        def per_device(theta, keys):
            # With check_vma (the default), JAX sums gradients of a replicated parameter
            # over the mesh axis; marking it varying keeps one estimate per key.
            theta = jax.lax.pcast(theta, ("keys",), to="varying")
            return jax.vmap(scg.grad(model.fn), in_axes=(None, 0))(theta, keys)

        mapped = jax.jit(
            shard_map(per_device, mesh=mesh, in_specs=(P(), P("keys")), out_specs=P("keys"))
        )(model.theta, sharded_keys)
        unchecked = jax.jit(
            shard_map(
                jax.vmap(scg.grad(model.fn), in_axes=(None, 0)),
                mesh=mesh,
                in_specs=(P(), P("keys")),
                out_specs=P("keys"),
                check_vma=False,
            )
        )(model.theta, sharded_keys)
        np.testing.assert_array_equal(np.asarray(unchecked), np.asarray(mapped))
        if model.name == "mixed":
            # Transcendentals of the Normal draw compile to different CPU kernels for 64 and
            # for 8 rows: equal to float rounding, not bitwise.
            np.testing.assert_allclose(np.asarray(many), one, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(np.asarray(mapped), one, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(many), one)
            np.testing.assert_array_equal(np.asarray(mapped), one)
        print(model.name, "equal on 1 and 8 devices")
    """
)


def test_estimates_are_equal_on_one_and_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("equal on 1 and 8 devices") == 3
