"""One estimate spanning devices: collectives inside ``jax.shard_map`` (8 forced CPU devices, in
a subprocess so the flag is set before JAX starts). Exact references by enumerating the
sites of every device, at first and second order; errors where JAX does not record how
values vary across devices."""

import os
import re
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r"""
    import itertools, re, warnings
    import jax, jax.numpy as jnp, numpy as np
    from jax import lax
    from jax.sharding import Mesh, PartitionSpec as P
    import jax_scg as scg
    from jax_scg import distributions as D
    from jax_scg._src.jaxpr import varying_axes

    jax.config.update("jax_enable_x64", True)
    warnings.simplefilter("error")
    assert jax.device_count() == 8, jax.devices()
    shard_map = jax.shard_map
    K = 4000  # estimator samples per check
    Z = 5.0


    def check_unbiased(name, estimates, exact):
        estimates, exact = np.asarray(estimates), np.asarray(exact)
        se = estimates.std(0) / np.sqrt(len(estimates))
        z = np.abs(estimates.mean(0) - exact) / np.maximum(se, 1e-12)
        assert np.all(z <= Z), (name, estimates.mean(0), exact, z)
        assert np.any(se > 0), name  # a statistical check that can fail
        print("ok", name, f"max z {z.max():.2f}")


    def bernoulli_prob(xs, logits):
        p = jax.nn.sigmoid(logits)
        return jnp.prod(jnp.where(xs == 1, p, 1 - p))


    def enumerate_expectation(f, n):
        # E[f(theta, x)] over n independent Bernoulli sites with logits theta[:n]
        outcomes = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=n)))
        def expectation(theta):
            probs = jax.vmap(lambda xs: bernoulli_prob(xs, theta[:n]))(outcomes)
            return jnp.sum(probs * jax.vmap(lambda xs: f(theta, xs))(outcomes))
        return expectation


    def sharded(fn, mesh, key_spec, **kwargs):
        return jax.jit(shard_map(fn, mesh=mesh, in_specs=(P(), key_spec), out_specs=P(), **kwargs))


    theta = jnp.array([0.3, -0.5, 0.7, 0.1, -0.2, 0.6, -0.9, 0.4, 0.5])
    W = jnp.array([1.0, -2.0, 0.5, 1.5, -1.0, 0.8, 2.0, -0.3])
    mesh = Mesh(np.array(jax.devices()), ("d",))
    keys = jax.random.split(jax.random.key(1400), (8, K))

    # 1. The issue's program: a nonlinear cost after psum, and a parameter times the psum.
    def psum_square(theta, key):
        d = lax.axis_index("d")
        x = scg.sample(key, D.Bernoulli(logits=theta[d]), name="x")
        C = lax.psum(x * W[d], "d")
        return C**2 + theta[8] * C

    exact = enumerate_expectation(lambda t, xs: (xs @ W) ** 2 + t[8] * (xs @ W), 8)
    grads = sharded(
        lambda t, k: jax.vmap(scg.grad(psum_square), in_axes=(None, 0))(t, k[0]), mesh, P("d")
    )(theta, keys)
    check_unbiased("psum_square_grad", grads, jax.grad(exact)(theta))
    hessians = sharded(
        lambda t, k: jax.vmap(jax.hessian(scg.surrogate(psum_square)), in_axes=(None, 0))(t, k[0]),
        mesh,
        P("d"),
    )(theta, keys)
    check_unbiased("psum_square_hessian", hessians, jax.hessian(exact)(theta))

    # The surrogate has the loss's value and varying-axes type (invariant here).
    def types(t, k):
        value, surrogate = psum_square(t, k[0, 0]), scg.surrogate(psum_square)(t, k[0, 0])
        vary = lambda x: varying_axes(jax.typeof(x))  # JAX 0.10/0.11 name the field differently
        assert vary(surrogate) == vary(value) == frozenset()
        return jnp.stack([value, surrogate])

    pair = sharded(types, mesh, P("d"))(theta, keys)
    np.testing.assert_allclose(pair[0], pair[1], rtol=1e-12)
    eager = shard_map(
        lambda t, k: scg.grad(psum_square)(t, k[0, 0]), mesh=mesh, in_specs=(P(), P("d")),
        out_specs=P(),
    )(theta, keys)
    np.testing.assert_allclose(eager, grads[0], rtol=1e-12)
    print("ok psum_square_value_type_eager")

    # Sites that differ between devices only through their keys (shared parameters).
    def shared_parameters(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta[0]))
        return lax.psum(x, "d") ** 2 + theta[1] * lax.pmean(x, "d")

    def shared_exact(t):
        p = jax.nn.sigmoid(t[0])
        return 8 * p + 56 * p**2 + t[1] * p

    grads = sharded(
        lambda t, k: jax.vmap(scg.grad(shared_parameters), in_axes=(None, 0))(t, k[0]),
        mesh,
        P("d"),
    )(theta, keys)
    check_unbiased("shared_parameters_grad", grads[:, :2], jax.grad(shared_exact)(theta)[:2])

    # 2. pmean of per-device losses: equal key by key to the single-device program that
    # samples every device's site (vmap over the same per-shard keys) and averages.
    def cost(theta, x, d):
        return (x - 0.3 * W[d]) ** 2 * theta[8] + jnp.sin(theta[d]) * x

    def pmean_loss(theta, key):
        d = lax.axis_index("d")
        x = scg.sample(key, D.Bernoulli(logits=theta[d]))
        return lax.pmean(cost(theta, x, d), "d")

    def single_device(theta, keys):
        x = jax.vmap(lambda k, l: scg.sample(k, D.Bernoulli(logits=l)))(keys, theta[:8])
        return jnp.mean(jax.vmap(cost, in_axes=(None, 0, 0))(theta, x, jnp.arange(8)))

    few = keys[:, :64]
    mapped = sharded(
        lambda t, k: jax.vmap(scg.grad(pmean_loss), in_axes=(None, 0))(t, k[0]), mesh, P("d")
    )(theta, few)
    alone = jax.jit(jax.vmap(scg.grad(single_device), in_axes=(None, 1)))(theta, few)
    np.testing.assert_allclose(mapped, alone, rtol=1e-10, atol=1e-12)
    second = sharded(
        lambda t, k: jax.vmap(jax.hessian(scg.surrogate(pmean_loss)), in_axes=(None, 0))(t, k[0]),
        mesh,
        P("d"),
    )(theta, few)
    second_alone = jax.jit(jax.vmap(jax.hessian(scg.surrogate(single_device)), in_axes=(None, 1)))(
        theta, few
    )
    np.testing.assert_allclose(second, second_alone, rtol=1e-10, atol=1e-12)
    print("ok pmean_equals_single_device")

    # 2b. A vector site meeting per-device data: JAX casts the sample (typed invariant) to
    # varying with pvary; per-point credit must survive the cast (no FallbackWarning: the
    # script turns warnings into errors), equal key by key to the single-device program.
    data = jnp.linspace(-1.0, 1.0, 8 * 3 * 2).reshape(8, 3, 2)

    def per_point(theta, key, points):
        z = scg.sample(key, D.Bernoulli(logits=points @ theta[:2]))
        return jnp.mean((z - points[:, 0]) ** 2 * theta[8])

    def per_point_loss(theta, key, points):
        return lax.pmean(per_point(theta, key, points[0]), "d")

    def per_point_single(theta, keys, points):
        return jnp.mean(jax.vmap(per_point, in_axes=(None, 0, 0))(theta, keys, points))

    def per_point_sharded(transform):
        def on_device(t, k, x):
            return jax.vmap(transform(per_point_loss), in_axes=(None, 0, None))(t, k[0], x)

        return jax.jit(
            shard_map(on_device, mesh=mesh, in_specs=(P(), P("d"), P("d")), out_specs=P())
        )

    for transform in (scg.grad, lambda f: jax.hessian(scg.surrogate(f))):
        mapped = per_point_sharded(transform)(theta, few, data)
        alone = jax.jit(jax.vmap(transform(per_point_single), in_axes=(None, 1, None)))(
            theta, few, data
        )
        np.testing.assert_allclose(mapped, alone, rtol=1e-10, atol=1e-12)
    print("ok per_point_credit_through_pvary")

    # 3. A two-axis mesh: psum over one axis, a nonlinear cost, psum over the other.
    mesh2 = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))

    def two_axes(theta, key):
        i = lax.axis_index("a") * 4 + lax.axis_index("b")
        x = scg.sample(key, D.Bernoulli(logits=theta[i]))
        column = lax.psum(x * W[i], "a")  # varies along "b"
        return lax.psum(column**2, "b") + theta[8] * lax.psum(x, ("a", "b"))

    def two_axes_exact(t, xs):
        column = (xs * W).reshape(2, 4).sum(0)
        return jnp.sum(column**2) + t[8] * xs.sum()

    exact2 = enumerate_expectation(two_axes_exact, 8)
    keys2 = keys.reshape(2, 4, K)
    mesh_keys = P("a", "b")
    grads = jax.jit(
        shard_map(
            lambda t, k: jax.vmap(scg.grad(two_axes), in_axes=(None, 0))(t, k[0, 0]),
            mesh=mesh2, in_specs=(P(), mesh_keys), out_specs=P(),
        )
    )(theta, keys2)
    check_unbiased("two_axes_grad", grads, jax.grad(exact2)(theta))
    hessians = jax.jit(
        shard_map(
            lambda t, k: jax.vmap(jax.hessian(scg.surrogate(two_axes)), in_axes=(None, 0))(
                t, k[0, 0]
            ),
            mesh=mesh2, in_specs=(P(), mesh_keys), out_specs=P(),
        )
    )(theta, keys2)
    check_unbiased("two_axes_hessian", hessians, jax.hessian(exact2)(theta))

    # 4. A site replicated on every device (same key and parameters) is one site: its
    # log-probability is taken once, not once per device; beside it, one site per device.
    def replicated(theta, shared, own):
        d = lax.axis_index("d")
        s = scg.sample(shared, D.Bernoulli(logits=theta[8]))
        y = scg.sample(own, D.Bernoulli(logits=theta[d]))
        return lax.psum(s * W[d] + y, "d") ** 2

    def replicated_exact(t, xs):  # xs[:8]: the devices' sites, xs[8]: the shared one
        return (xs[8] * W.sum() + xs[:8].sum()) ** 2

    exact4 = enumerate_expectation(replicated_exact, 9)
    shared_keys = jax.random.split(jax.random.key(1401), K)  # replicated: in_specs P()
    grads = jax.jit(
        shard_map(
            lambda t, s, k: jax.vmap(scg.grad(replicated), in_axes=(None, 0, 0))(t, s, k[0]),
            mesh=mesh, in_specs=(P(), P(), P("d")), out_specs=P(),
        )
    )(theta, shared_keys, jax.random.split(jax.random.key(1402), (8, K)))
    check_unbiased("replicated_site_grad", grads, jax.grad(exact4)(theta))

    # 5. ppermute, all_gather and pmax move and mix influence.
    perm = [(i, (i + 1) % 8) for i in range(8)]

    def moved(theta, key):
        d = lax.axis_index("d")
        x = scg.sample(key, D.Bernoulli(logits=theta[d]))
        left = lax.ppermute(x, "d", perm)  # the previous device's draw
        gathered = lax.all_gather(x, "d")  # every device's draws (varying along "d")
        top = lax.pmax(x * W[d], "d")
        spread = lax.pmean(theta[8] * (gathered @ W) ** 2, "d")  # the same on every device
        return lax.psum((x - left) ** 2 * W[d], "d") + spread + top

    def moved_exact(t, xs):
        left = jnp.roll(xs, 1)
        return jnp.sum((xs - left) ** 2 * W) + t[8] * (xs @ W) ** 2 + jnp.max(xs * W)

    exact5 = enumerate_expectation(moved_exact, 8)
    grads = sharded(
        lambda t, k: jax.vmap(scg.grad(moved), in_axes=(None, 0))(t, k[0]), mesh, P("d")
    )(theta, keys)
    check_unbiased("collectives_grad", grads, jax.grad(exact5)(theta))
    hessians = sharded(
        lambda t, k: jax.vmap(jax.hessian(scg.surrogate(moved)), in_axes=(None, 0))(t, k[0]),
        mesh,
        P("d"),
    )(theta, keys)
    check_unbiased("collectives_hessian", hessians, jax.hessian(exact5)(theta))

    # 6. Refused, naming the site.
    def refused(name, fn, key_spec, keys, pattern, **kwargs):
        try:
            sharded(fn, mesh, key_spec, **kwargs)(theta, keys)
        except scg.SiteError as err:
            assert re.search(pattern, str(err), re.S), str(err)
            print("ok", name)
        else:
            raise AssertionError(name + " was not refused")

    refused(
        "check_vma_false",
        lambda t, k: scg.grad(psum_square)(t, k[0, 0]),
        P("d"),
        keys,
        r"site 'x'.*psum.*check_vma=False",
        check_vma=False,
    )

    def in_scan(theta, key):
        d = lax.axis_index("d")
        def step(c, k):
            x = scg.sample(k, D.Bernoulli(logits=theta[d]), name="step")
            return c + lax.psum(x, "d") ** 2, None
        return lax.scan(step, 0.0, jax.random.split(key, 3))[0]

    refused(
        "collective_in_loop",
        lambda t, k: scg.grad(in_scan)(t, k[0, 0]),
        P("d"),
        keys,
        r"site 'step'.*inside a loop",
    )

    def replicated_key(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta[lax.axis_index("d")]), name="shared")
        return lax.psum(x, "d") ** 2

    refused(
        "replicated_key",
        lambda t, k: scg.grad(replicated_key)(t, k[0]),
        P(),
        keys[0],
        r"site 'shared'.*key is replicated",
    )
    """
)

CHECKS = [
    "psum_square_grad",
    "psum_square_hessian",
    "psum_square_value_type_eager",
    "shared_parameters_grad",
    "pmean_equals_single_device",
    "per_point_credit_through_pvary",
    "two_axes_grad",
    "two_axes_hessian",
    "replicated_site_grad",
    "collectives_grad",
    "collectives_hessian",
    "check_vma_false",
    "collective_in_loop",
    "replicated_key",
]


@pytest.fixture(scope="module")
def run():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env["JAX_PLATFORMS"] = "cpu"
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True)


@pytest.mark.parametrize("check", CHECKS)
def test_collectives_on_eight_devices(run, check):
    passed = re.findall(r"^ok (\S+)", run.stdout, re.M)
    assert check in passed, run.stdout + run.stderr


def test_a_collective_without_a_rule_is_refused_naming_the_site():
    import jax
    from jax.extend.core import Primitive

    import jax_scg as scg
    from jax_scg import distributions as D

    # Stands for a collective that a newer JAX may add under another name.
    unknown = Primitive("unknown_collective")
    unknown.def_impl(lambda x, axes: x)
    unknown.def_abstract_eval(lambda x, axes: x)

    def loss(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta), name="x")
        return unknown.bind(x, axes=("d",)) ** 2

    with pytest.raises(scg.SiteError, match=r"(?s)site 'x'.*unknown_collective.*no rule"):
        scg.grad(loss)(0.0, jax.random.key(0))
