"""Per-element credit without plates: element i of a vectorised site is credited only to the
costs its value reaches, found from the dataflow (elementwise ops, broadcasts, reductions over
other axes, transposes, matrix products), with a safe fallback (the whole site) everywhere
else."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import distributions as D

N = 20_000
P = 6
C = jnp.linspace(0.1, 0.9, P)
sig = jax.nn.sigmoid


def per_point(theta, key):
    """P local latents in one sample call, per-point terms summed."""
    z = scg.sample(key, D.Bernoulli(logits=theta))
    return jnp.sum((z - C) ** 2 * (1.0 + theta))


def per_point_vmapped(theta, key):
    """The same with the site under jax.vmap, a custom_jvp op and a mean."""
    draw = lambda k, logit: scg.sample(k, D.Bernoulli(logits=logit))
    z = jax.vmap(draw)(jax.random.split(key, P), theta)
    return jnp.mean(jax.nn.relu(z - C) + z * C) * P


def per_point_exact(theta):
    p = sig(theta)
    return jnp.sum((p * (1 - C) ** 2 + (1 - p) * C**2) * (1.0 + theta))


def per_point_vmapped_exact(theta):
    p = sig(theta)
    return jnp.sum(p * (jax.nn.relu(1 - C) + C) + (1 - p) * jax.nn.relu(-C))


def per_point_by_hand(theta, key):
    """Σ_i ⊡(log p(z_i)) f_i: what a plate gives, written by hand."""
    d = D.Bernoulli(logits=theta)
    z = jax.lax.stop_gradient(d.sample(key))
    return jnp.sum(scg.magic_box(d.log_prob(z)) * (z - C) ** 2 * (1.0 + theta))


def one_node(theta, key):
    """The whole site as one node: ⊡(Σ_i log p(z_i)) Σ_i f_i (unbiased, noisier)."""
    d = D.Bernoulli(logits=theta)
    z = jax.lax.stop_gradient(d.sample(key))
    return scg.magic_box(jnp.sum(d.log_prob(z))) * jnp.sum((z - C) ** 2 * (1.0 + theta))


THETA = jnp.linspace(-1.0, 1.0, P)


def test_per_element_credit_matches_the_plate_estimator_key_by_key():
    for key in keys(51, 4):
        np.testing.assert_allclose(
            scg.grad(per_point)(THETA, key), jax.grad(per_point_by_hand)(THETA, key), rtol=1e-6
        )
        np.testing.assert_allclose(
            jax.hessian(scg.surrogate(per_point))(THETA, key),
            jax.hessian(per_point_by_hand)(THETA, key),
            rtol=1e-5,
            atol=1e-6,
        )


def test_per_element_credit_is_unbiased_and_beats_one_node():
    for fn, exact, seed in (
        (per_point, per_point_exact, 52),
        (per_point_vmapped, per_point_vmapped_exact, 53),
    ):
        grads = mc(scg.grad(fn), THETA, seed=seed, n=N)
        assert_mean_close(grads, jax.grad(exact)(THETA))
        hessians = mc(jax.hessian(scg.surrogate(fn)), THETA, seed=seed + 10, n=N)
        assert_mean_close(hessians, jax.hessian(exact)(THETA))
    ours = mc(scg.grad(per_point), THETA, seed=54, n=N)
    whole = mc(jax.grad(one_node), THETA, seed=54, n=N)
    assert np.var(ours, 0).mean() < 0.2 * np.var(whole, 0).mean()


def test_alignment_through_broadcast_transpose_and_reduction_over_other_axes():
    w = jnp.arange(3.0 * P).reshape(3, P) / 10.0

    def fn(theta, key):
        z = scg.sample(key, D.Bernoulli(logits=theta))  # (P,)
        grid = (z[None, :] - w) ** 2  # (3, P): broadcast along a new axis
        return jnp.sum(jnp.transpose(grid).sum(axis=1) * theta)  # transpose, reduce axis 1

    def by_hand(theta, key):
        d = D.Bernoulli(logits=theta)
        z = jax.lax.stop_gradient(d.sample(key))
        per_point_cost = ((z[None, :] - w) ** 2).sum(0) * theta
        return jnp.sum(scg.magic_box(d.log_prob(z)) * per_point_cost)

    def exact(theta):
        p = sig(theta)
        return jnp.sum((p * ((1 - w) ** 2).sum(0) + (1 - p) * (w**2).sum(0)) * theta)

    for key in keys(55, 3):
        np.testing.assert_allclose(
            scg.grad(fn)(THETA, key), jax.grad(by_hand)(THETA, key), rtol=1e-5, atol=1e-6
        )
    assert_mean_close(mc(scg.grad(fn), THETA, seed=56, n=N), jax.grad(exact)(THETA))


def test_hierarchical_local_latents_keep_alignment():
    # z_i ~ Bernoulli(θ_i), y_i ~ Bernoulli(2 z_i - 1 + φ): term i depends on z_i and y_i only.
    def fn(params, key):
        theta, phi = params[:P], params[P]
        k1, k2 = jax.random.split(key)
        z = scg.sample(k1, D.Bernoulli(logits=theta))
        y = scg.sample(k2, D.Bernoulli(logits=2.0 * z - 1.0 + phi))
        return jnp.sum((y + z - C) ** 2)

    def by_hand(params, key):
        theta, phi = params[:P], params[P]
        k1, k2 = jax.random.split(key)
        dz = D.Bernoulli(logits=theta)
        z = jax.lax.stop_gradient(dz.sample(k1))
        dy = D.Bernoulli(logits=2.0 * z - 1.0 + phi)
        y = jax.lax.stop_gradient(dy.sample(k2))
        box = scg.magic_box(dz.log_prob(z) + dy.log_prob(y))
        return jnp.sum(box * (y + z - C) ** 2)

    def exact(params):
        theta, phi = params[:P], params[P]
        pz = sig(theta)
        total = 0.0
        for z in (0.0, 1.0):
            py = sig(2.0 * z - 1.0 + phi)
            wz = pz if z else 1 - pz
            total += wz * (py * (1 + z - C) ** 2 + (1 - py) * (z - C) ** 2)
        return jnp.sum(total)

    params = jnp.concatenate([THETA, jnp.array([0.3])])
    for key in keys(57, 3):
        np.testing.assert_allclose(
            scg.grad(fn)(params, key), jax.grad(by_hand)(params, key), rtol=1e-5, atol=1e-6
        )
    assert_mean_close(mc(scg.grad(fn), params, seed=58, n=N), jax.grad(exact)(params))
    hessians = mc(jax.hessian(scg.surrogate(fn)), params, seed=59, n=N)
    assert_mean_close(hessians, jax.hessian(exact)(params))


def test_undecidable_mixing_falls_back_to_the_whole_site_and_stays_unbiased():
    def fn(theta, key):
        z = scg.sample(key, D.Bernoulli(logits=theta))
        return jnp.sum(jnp.cumsum(z) ** 2 * C)  # term j mixes z_0..z_j: the whole site

    def one_node_by_hand(theta, key):
        d = D.Bernoulli(logits=theta)
        z = jax.lax.stop_gradient(d.sample(key))
        return scg.magic_box(jnp.sum(d.log_prob(z))) * jnp.sum(jnp.cumsum(z) ** 2 * C)

    def exact(theta):  # E[(Σ_{i<=j} z_i)^2] = Σ_{i<=j} p_i (1 - p_i) + (Σ_{i<=j} p_i)^2
        p = sig(theta)
        return jnp.sum((jnp.cumsum(p * (1 - p)) + jnp.cumsum(p) ** 2) * C)

    for key in keys(60, 3):
        np.testing.assert_allclose(
            scg.grad(fn)(THETA, key), jax.grad(one_node_by_hand)(THETA, key), rtol=1e-5
        )
    assert_mean_close(mc(scg.grad(fn), THETA, seed=61, n=N), jax.grad(exact)(THETA))


def test_a_linear_mix_of_elements_still_gets_per_element_credit():
    # cumsum is linear: Σ_j C_j Σ_{i<=j} z_i = Σ_i z_i Σ_{j>=i} C_j, so z_i's score only
    # multiplies its own term.
    def fn(theta, key):
        return jnp.sum(jnp.cumsum(scg.sample(key, D.Bernoulli(logits=theta))) * C)

    def by_hand(theta, key):
        d = D.Bernoulli(logits=theta)
        z = jax.lax.stop_gradient(d.sample(key))
        return jnp.sum(scg.magic_box(d.log_prob(z)) * z * jnp.cumsum(C[::-1])[::-1])

    for key in keys(63, 3):
        np.testing.assert_allclose(
            scg.grad(fn)(THETA, key), jax.grad(by_hand)(THETA, key), rtol=1e-5, atol=1e-6
        )


def test_vmap_of_scg_grad_over_data_points_is_the_other_route():
    # One site per data point, differentiated per point with jax.vmap over (θ_i, key_i).
    single = lambda t, k: (scg.sample(k, D.Bernoulli(logits=t)) - 0.5) ** 2 * (1.0 + t)
    exact = lambda t: (sig(t) * 0.25 + (1 - sig(t)) * 0.25) * (1.0 + t)
    ks = keys(62, N * P).reshape(N, P)
    grads = jax.jit(jax.vmap(jax.vmap(scg.grad(single))))(jnp.broadcast_to(THETA, (N, P)), ks)
    assert_mean_close(grads, jax.vmap(jax.grad(exact))(THETA))


MIX = jnp.array([[0.5, -1.0], [1.5, 0.3], [-0.7, 0.8]])


def rows_through_a_matmul(theta, key):
    z = scg.sample(key, D.Bernoulli(logits=theta))  # (points, units)
    return jnp.sum(jnp.sin(z @ MIX.T + 0.2))  # row n of the product reads row n of z only


def rows_through_a_broadcast(theta, key):
    z = scg.sample(key, D.Bernoulli(logits=theta))
    return jnp.sum(jnp.sin(jnp.sum(z[:, None, :] * MIX, axis=-1) + 0.2))


def test_matrix_products_keep_per_row_credit():
    theta = jnp.array([[0.3, -0.6], [1.0, 0.1]])
    for key in keys(131, 3):  # the same estimator as the broadcast form, key by key
        np.testing.assert_allclose(
            scg.grad(rows_through_a_matmul)(theta, key),
            scg.grad(rows_through_a_broadcast)(theta, key),
            rtol=1e-5,
            atol=1e-6,
        )
    batched = lambda t, k: jnp.sum(  # noqa: E731
        jnp.sin(jnp.einsum("bnk,jk->bnj", scg.sample(k, D.Bernoulli(logits=t)), MIX))
    )
    stacked = jnp.array([[[0.3, -0.6]], [[1.0, 0.1]]])  # (batch, points, units)

    def exact(theta):
        total = 0.0
        for bits in itertools.product([0.0, 1.0], repeat=theta.size):
            z = jnp.array(bits).reshape(theta.shape)
            p = jnp.prod(jnp.where(z > 0, jax.nn.sigmoid(theta), jax.nn.sigmoid(-theta)))
            total += p * jnp.sum(jnp.sin(jnp.einsum("bnk,jk->bnj", z, MIX)))
        return total

    assert_mean_close(mc(scg.grad(batched), stacked, seed=132, n=N), jax.grad(exact)(stacked))


# Aligned axes that change size: a prefix slice (x[0], x[:2]) keeps the first elements; a
# concatenation or padding after the site appends elements it does not reach.
SLICE_W = jnp.array([0.7, -0.4, 1.1])


def _sliced(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, D.Bernoulli(logits=theta[:3]))
    y = scg.sample(k2, D.Bernoulli(logits=theta[3:]))
    joined = jnp.concatenate([x, jnp.array([2.0, 3.0])])  # (5,): x's elements first
    padded = jnp.pad(x, (0, 2), constant_values=0.5)
    return (
        (x @ SLICE_W - 0.3) ** 2
        + 0.5 * x[0] * theta[1]
        + jnp.sum(x[:2] * jnp.array([1.0, -2.0]))
        + jnp.sum(joined * jnp.arange(5.0)) ** 2 * 0.1
        + jnp.sum(padded**2 * jnp.arange(1.0, 6.0))
        + jnp.sum(y) * x[0]
    )


def _sliced_exact(theta):
    total = 0.0
    for bits in itertools.product([0.0, 1.0], repeat=5):
        x, y = jnp.array(bits[:3]), jnp.array(bits[3:])
        logp = jnp.sum(D.Bernoulli(logits=theta[:3]).log_prob(x))
        logp = logp + jnp.sum(D.Bernoulli(logits=theta[3:]).log_prob(y))
        joined = jnp.concatenate([x, jnp.array([2.0, 3.0])])
        padded = jnp.pad(x, (0, 2), constant_values=0.5)
        cost = (
            (x @ SLICE_W - 0.3) ** 2
            + 0.5 * x[0] * theta[1]
            + jnp.sum(x[:2] * jnp.array([1.0, -2.0]))
            + jnp.sum(joined * jnp.arange(5.0)) ** 2 * 0.1
            + jnp.sum(padded**2 * jnp.arange(1.0, 6.0))
            + jnp.sum(y) * x[0]
        )
        total = total + jnp.exp(logp) * cost
    return total


# x[0] * sum(y) loses x's alignment at the squeeze (a warned, unbiased fallback).
@pytest.mark.filterwarnings("ignore::jax_scg.FallbackWarning")
def test_slices_concatenations_and_padding_of_a_vector_site():
    theta = jnp.array([0.3, -0.8, 1.2, 0.4, -0.5])
    assert_mean_close(
        mc(scg.grad(_sliced), theta, 15100, N), jax.grad(_sliced_exact)(theta), what="grad"
    )
    hessians = mc(jax.hessian(scg.surrogate(_sliced)), theta, 15101, N)
    assert_mean_close(hessians.reshape(N, -1), jax.hessian(_sliced_exact)(theta).ravel())
    # Eagerly too, and the estimate's value is the loss on the same draws.
    key = jax.random.key(15102)
    value, _ = scg.value_and_grad(_sliced)(theta, key)
    np.testing.assert_allclose(value, _sliced(theta, key), rtol=1e-6)
