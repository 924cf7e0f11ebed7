"""Unbiasedness of scg.grad and of Hessians of scg.surrogate against exact references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys, mc

import jax_scg as scg
from jax_scg import examples

N = 20_000


@pytest.mark.parametrize("model", examples.ALL, ids=lambda m: m.name)
def test_gradient_is_unbiased_under_jit_and_vmap(model):
    grads = mc(scg.grad(model.fn), model.theta, seed=1, n=N)
    assert_mean_close(grads, jax.grad(model.exact)(model.theta), what=f"{model.name} grad")


@pytest.mark.parametrize("model", examples.ALL, ids=lambda m: m.name)
def test_hessian_is_unbiased(model):
    hessians = mc(jax.hessian(scg.surrogate(model.fn)), model.theta, seed=2, n=N)
    exact = jax.hessian(model.exact)(model.theta)
    assert_mean_close(hessians, exact, what=f"{model.name} Hessian")


@pytest.mark.parametrize("model", examples.ALL, ids=lambda m: m.name)
def test_surrogate_value_equals_objective_value(model):
    for key in keys(3, 4):
        value = model.fn(model.theta, key)
        np.testing.assert_allclose(scg.surrogate(model.fn)(model.theta, key), value, rtol=1e-6)
        v, _ = scg.value_and_grad(model.fn)(model.theta, key)
        np.testing.assert_allclose(v, value, rtol=1e-6)


@pytest.mark.parametrize("model", examples.ALL, ids=lambda m: m.name)
def test_eager_jit_and_vmap_agree_on_the_same_key(model):
    ks = keys(4, 3)
    grad = scg.grad(model.fn)
    eager = np.stack([grad(model.theta, k) for k in ks])
    jitted = np.stack([jax.jit(grad)(model.theta, k) for k in ks])
    mapped = jax.vmap(grad, in_axes=(None, 0))(model.theta, ks)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mapped, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", examples.FIGURE1 + examples.MDP, ids=lambda m: m.name)
def test_jacfwd_of_grad_is_the_same_hessian_estimate(model):
    for key in keys(5, 3):
        h1 = jax.hessian(scg.surrogate(model.fn))(model.theta, key)
        h2 = jax.jacfwd(scg.grad(model.fn))(model.theta, key)
        h3 = jax.jacfwd(jax.jacfwd(scg.surrogate(model.fn)))(model.theta, key)
        np.testing.assert_allclose(h1, h2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(h1, h3, rtol=1e-5, atol=1e-6)


def test_graph5_matches_the_hand_written_causal_estimator_key_by_key():
    theta = examples.FIGURE1[4].theta
    for key in keys(6, 8):
        ours = scg.grad(examples.graph5)(theta, key)
        by_hand = jax.grad(examples.graph5_handwritten)(theta, key)
        np.testing.assert_allclose(ours, by_hand, rtol=1e-6, atol=1e-7)
        h_ours = jax.hessian(scg.surrogate(examples.graph5))(theta, key)
        h_hand = jax.hessian(examples.graph5_handwritten)(theta, key)
        np.testing.assert_allclose(h_ours, h_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", [examples.mdp_stacked, examples.mdp_carried])
def test_mdp_in_scan_gives_reward_to_go_not_all_rewards(fn):
    theta = examples.MDP[0].theta
    differs = 0
    for key in keys(7, 8):
        ours = scg.grad(fn)(theta, key)
        rtg = jax.grad(examples.mdp_reward_to_go)(theta, key)
        everything = jax.grad(examples.mdp_all_rewards)(theta, key)
        np.testing.assert_allclose(ours, rtg, rtol=1e-5, atol=1e-6)
        differs += not np.allclose(ours, everything, rtol=1e-3)
        h_ours = jax.hessian(scg.surrogate(fn))(theta, key)
        h_rtg = jax.hessian(examples.mdp_reward_to_go)(theta, key)
        np.testing.assert_allclose(h_ours, h_rtg, rtol=1e-5, atol=1e-6)
    assert differs > 0


def test_reward_to_go_has_lower_variance_than_all_rewards():
    theta = examples.MDP[0].theta
    ours = mc(scg.grad(examples.mdp_stacked), theta, seed=8, n=N)
    everything = mc(jax.grad(examples.mdp_all_rewards), theta, seed=8, n=N)
    assert np.all(np.var(ours, 0) < np.var(everything, 0))


def test_magic_box_derivatives_follow_the_dice_sequence():
    # n-th derivative of ⊡(τ²/2) at τ = 1: 1, 1, 2, 4, 10, 26, 76, 232, 764, 2620.
    f = lambda tau: scg.magic_box(tau**2 / 2)
    expected = [1, 1, 2, 4, 10, 26, 76, 232, 764, 2620]
    derivative = f
    for n, value in enumerate(expected):
        assert float(derivative(1.0)) == pytest.approx(value, rel=1e-4), n
        derivative = jax.grad(derivative)


def test_grad_supports_argnums_and_has_aux():
    def fn(a, b, key):
        x = scg.sample(key, scg.distributions.Bernoulli(logits=a))
        return (x - b) ** 2, {"x": x}

    key = jax.random.key(0)
    (ga, gb), aux = scg.grad(fn, argnums=(0, 1), has_aux=True)(0.2, 0.5, key)
    assert set(aux) == {"x"} and jnp.shape(ga) == () and jnp.shape(gb) == ()
    (value, aux2), g = scg.value_and_grad(fn, has_aux=True)(0.2, 0.5, key)
    np.testing.assert_allclose(g, ga)
    assert float(aux2["x"]) == float(aux["x"])
