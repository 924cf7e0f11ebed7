"""The iterated prisoner's dilemma of ``jax_scg.examples`` and LOLA-DiCE (Foerster et al. 2018).

The exact expected return is checked against brute-force enumeration; the estimates of its
gradient and of its mixed second derivative (what LOLA differentiates through) against exact
derivatives, with and without a value baseline; jit against eager evaluation, key by key.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys

import jax_scg as scg
from jax_scg import examples as E

T, B = 5, 4  # rounds and episodes per estimate: small, so that many keys are cheap
N = 10_000  # estimates per Monte Carlo check
THETA1 = jnp.array([0.3, -0.5, 0.8, 0.1, -0.2])
THETA2 = jnp.array([-0.4, 0.6, 0.2, -0.7, 0.5])


def objective(agent, values=None):
    """Agent's DiCE objective as ``fn(theta1, theta2, key)``."""
    return lambda t1, t2, key: E.ipd_objective(
        t1, t2, key, agent=agent, steps=T, batch=B, values=values
    )


def exact(agent):
    return lambda t1, t2: E.ipd_exact_return(t1, t2, T)[agent - 1]


def brute_force_return(theta1, theta2, steps, gamma):
    """E[(R1, R2)] by summing over all 4**steps joint action sequences (1.0 = cooperate)."""
    p1, p2 = jax.nn.sigmoid(theta1), jax.nn.sigmoid(theta2)
    payoff = {(1, 1): (-1.0, -1.0), (1, 0): (-3.0, 0.0), (0, 1): (0.0, -3.0), (0, 0): (-2.0, -2.0)}
    total = jnp.zeros(2)
    for sequence in itertools.product(payoff, repeat=steps):
        weight, s1, s2, ret = 1.0, 0, 0, jnp.zeros(2)
        for t, (a1, a2) in enumerate(sequence):
            weight = weight * (p1[s1] if a1 else 1 - p1[s1]) * (p2[s2] if a2 else 1 - p2[s2])
            ret = ret + gamma**t * jnp.array(payoff[a1, a2])
            # states: 1 + 2 [own action is D] + [other's is D]: CC 1, CD 2, DC 3, DD 4
            s1, s2 = 1 + 2 * (1 - a1) + (1 - a2), 1 + 2 * (1 - a2) + (1 - a1)
        total = total + weight * ret
    return total


def estimates(fn, seed, n=N):
    return jax.jit(jax.vmap(fn, in_axes=(None, None, 0)))(THETA1, THETA2, keys(seed, n))


def test_exact_return_equals_enumeration():
    ours = E.ipd_exact_return(THETA1, THETA2, 3, 0.9)
    np.testing.assert_allclose(ours, brute_force_return(THETA1, THETA2, 3, 0.9), rtol=1e-5)
    grads = jax.jacrev(E.ipd_exact_return, argnums=(0, 1))(THETA1, THETA2, 3, 0.9)
    expected = jax.jacrev(brute_force_return, argnums=(0, 1))(THETA1, THETA2, 3, 0.9)
    for ours, theirs in zip(grads, expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_state_values_are_the_expected_returns():
    # over `steps` rounds from the start, the start's value is the expected return
    for steps in (1, 4):
        v1, v2 = E.ipd_state_values(THETA1, THETA2, 0.9, steps=steps)
        np.testing.assert_allclose(
            [v1[0], v2[0]], E.ipd_exact_return(THETA1, THETA2, steps, 0.9), rtol=1e-5
        )
    v1, v2 = E.ipd_state_values(THETA1, THETA2, 0.9)  # forever: a long horizon's return
    np.testing.assert_allclose(
        [v1[0], v2[0]], E.ipd_exact_return(THETA1, THETA2, 400, 0.9), rtol=1e-4
    )


def test_rollout_states_and_rewards_follow_the_actions():
    episodes = E.ipd_rollout(THETA1, THETA2, jax.random.key(0), steps=6, batch=8)
    a1, a2 = np.asarray(episodes.actions1), np.asarray(episodes.actions2)
    s1, s2 = E.ipd_next_states(a1[:-1], a2[:-1])
    np.testing.assert_array_equal(episodes.states1[1:], s1)
    np.testing.assert_array_equal(episodes.states2[1:], s2)
    np.testing.assert_array_equal(episodes.states2, np.array(E.IPD_SWAP)[episodes.states1])
    assert np.all(np.asarray(episodes.states1[0]) == 0)
    r1 = np.select([a1 * a2 == 1, a1 > a2, a1 < a2], [-1.0, -3.0, 0.0], -2.0)
    np.testing.assert_array_equal(episodes.rewards1, r1)
    np.testing.assert_array_equal(episodes.rewards2, np.select(
        [a1 * a2 == 1, a1 > a2, a1 < a2], [-1.0, 0.0, -3.0], -2.0))  # fmt: skip


@pytest.mark.parametrize("agent", [1, 2])
def test_gradient_is_unbiased(agent):
    draws = estimates(scg.grad(objective(agent), argnums=(0, 1)), seed=100 + agent)
    expected = jax.grad(exact(agent), argnums=(0, 1))(THETA1, THETA2)
    assert_mean_close(jnp.concatenate(draws, -1), jnp.concatenate(expected), what="gradient")


@pytest.mark.parametrize("jac", [jax.jacfwd, jax.jacrev], ids=["jacfwd", "jacrev"])
def test_mixed_second_derivative_is_unbiased(jac):
    # d^2 E[R2] / d theta2 d theta1: what the LOLA look-ahead differentiates through
    mixed = jac(scg.grad(objective(2), argnums=1), argnums=0)
    draws = estimates(mixed, seed=110)
    expected = jax.jacfwd(jax.grad(exact(2), argnums=1), argnums=0)(THETA1, THETA2)
    assert_mean_close(draws.reshape(N, -1), expected.reshape(-1), what="mixed derivative")


def test_agent1_mixed_second_derivative_is_unbiased():
    mixed = jax.jacfwd(scg.grad(objective(1), argnums=0), argnums=1)
    draws = estimates(mixed, seed=111)
    expected = jax.jacfwd(jax.grad(exact(1), argnums=0), argnums=1)(THETA1, THETA2)
    assert_mean_close(draws.reshape(N, -1), expected.reshape(-1), what="mixed derivative")


def test_value_baseline_keeps_estimates_unbiased_and_lowers_variance():
    # values over 3 of the 5 rounds: roughly the return-to-go of a round in the middle
    values = E.ipd_state_values(THETA1, THETA2, steps=3)[0]
    with_baseline = estimates(scg.grad(objective(1, values), argnums=(0, 1)), seed=120)
    without = estimates(scg.grad(objective(1), argnums=(0, 1)), seed=120)  # the same keys
    expected = jax.grad(exact(1), argnums=(0, 1))(THETA1, THETA2)
    flat = lambda pair: jnp.concatenate(pair, -1)  # noqa: E731
    assert_mean_close(flat(with_baseline), flat(expected), what="gradient with baseline")
    ratio = flat(with_baseline).var(0).sum() / flat(without).var(0).sum()
    assert ratio < 0.5, ratio  # about 0.28
    # the values change neither the objective's value nor the draws
    value_with = jax.vmap(objective(1, values), (None, None, 0))(THETA1, THETA2, keys(121, 16))
    value_without = jax.vmap(objective(1), (None, None, 0))(THETA1, THETA2, keys(121, 16))
    np.testing.assert_array_equal(value_with, value_without)

    mixed = jax.jacfwd(scg.grad(objective(2, values), argnums=1), argnums=0)
    draws = estimates(mixed, seed=122)
    expected = jax.jacfwd(jax.grad(exact(2), argnums=1), argnums=0)(THETA1, THETA2)
    assert_mean_close(draws.reshape(N, -1), expected.reshape(-1), what="mixed, baseline")


def test_jit_and_eager_agree_key_by_key():
    values = E.ipd_state_values(THETA1, THETA2)
    lola = lambda t1, t2, k: E.lola_dice_grad(t1, t2, k, steps=T, batch=B, values=values)  # noqa: E731
    cases = [
        (scg.grad(objective(1), argnums=(0, 1)), keys(130, 2)),
        (lola, keys(132, 1)),  # eager: slow (every scg.grad call traces its function)
    ]
    for fn, case_keys in cases:
        jitted = jax.jit(fn)
        for key in case_keys:
            eager = fn(THETA1, THETA2, key)
            for a, b in zip(jax.tree.leaves(jitted(THETA1, THETA2, key)), jax.tree.leaves(eager)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_lola_without_lookahead_is_the_naive_gradient():
    naive = scg.grad(objective(1))
    lola = lambda k: E.lola_dice_grad(THETA1, THETA2, k, lookaheads=0, steps=T, batch=B)  # noqa: E731
    for key in keys(140, 1):
        outer_key = jax.random.split(key, 1)[0]  # lola_dice_grad's last key is the outer one
        np.testing.assert_allclose(lola(key), naive(THETA1, THETA2, outer_key), rtol=1e-6)
    np.testing.assert_allclose(
        E.lola_exact_grad(THETA1, THETA2, lookaheads=0, steps=T),
        jax.grad(exact(1))(THETA1, THETA2),
        rtol=1e-6,
    )


def test_exact_lola_gradient_is_the_first_order_formula():
    # one look-ahead: d/dθ1 R1(θ1, θ2') = ∂1 R1 + lr (∂²R2/∂θ2∂θ1)ᵀ ∂2 R1, at θ2' (chain rule),
    # written here with brute-force enumeration over 2 rounds
    lr, gamma = 0.7, 0.9
    r = lambda i: lambda t1, t2: brute_force_return(t1, t2, 2, gamma)[i]  # noqa: E731
    theta2_after = THETA2 + lr * jax.grad(r(1), argnums=1)(THETA1, THETA2)
    d1, d2 = jax.grad(r(0), argnums=(0, 1))(THETA1, theta2_after)
    mixed = jax.jacfwd(jax.grad(r(1), argnums=1), argnums=0)(THETA1, THETA2)  # [θ2, θ1]
    expected = d1 + lr * mixed.T @ d2
    ours = E.lola_exact_grad(THETA1, THETA2, lookaheads=1, inner_lr=lr, steps=2, gamma=gamma)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("with_values", [False, True])
def test_lola_dice_is_the_chain_rule_through_the_inner_estimate(with_values):
    # On the same keys, scg.grad through scg.grad equals the chain rule assembled from
    # separately computed estimates: ∂1 L1(θ1, θ2') + lr (∂ĝ2/∂θ1)ᵀ ∂2 L1(θ1, θ2'), where
    # ĝ2 is the inner estimate, θ2' = θ2 + lr ĝ2 and L1 the outer objective on its own key.
    lr = 0.7
    values = E.ipd_state_values(THETA1, THETA2) if with_values else None
    v1, v2 = (None, None) if values is None else values
    inner = scg.grad(objective(2, v2), argnums=1)

    def both(key):
        k_inner, k_outer = jax.random.split(key)  # as lola_dice_grad splits its key
        theta2_after = THETA2 + lr * inner(THETA1, THETA2, k_inner)
        d1, d2 = scg.grad(objective(1, v1), argnums=(0, 1))(THETA1, theta2_after, k_outer)
        jacobian = jax.jacfwd(inner, argnums=0)(THETA1, THETA2, k_inner)  # [θ2, θ1]
        ours = E.lola_dice_grad(
            THETA1, THETA2, key, lookaheads=1, inner_lr=lr, steps=T, batch=B, values=values
        )
        return ours, d1 + lr * jacobian.T @ d2

    ours, chain_rule = jax.jit(jax.vmap(both))(keys(150 + with_values, 2))
    np.testing.assert_allclose(ours, chain_rule, rtol=1e-4, atol=1e-4)
