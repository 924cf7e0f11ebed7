"""Batched environments inside one loop keep per-episode (per-element) credit.

A policy over B environments stepped together inside ``lax.scan`` is one vectorised site per
step. Environment i's rewards must get the scores of environment i's earlier actions only,
as if each episode were differentiated on its own: the alignment of a site's elements flows
through loop carries, stacked outputs, ``vmap``, ``cond`` and nested loops. Each program is
checked key by key against a DiCE surrogate written by hand with exactly that credit, at
first and second order, and the batched estimator's variance against the per-episode one.
"""

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

B, T = 5, 4
THETA = jnp.array([0.2, -0.3])


def bernoulli_step(theta, s, a):
    return 0.8 * s + a - 0.5


def reward(s):
    return -((s - 1.0) ** 2)


def policy_step(theta, s, k):
    """One step of the environments with jax_scg: the policy's site, then the dynamics."""
    a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * s))
    return bernoulli_step(theta, s, a)


def policy_step_by_hand(theta, s, k):
    """The same step written by hand: ``(next state, log π(a))``, drawn from stopped logits."""
    logits = theta[0] + theta[1] * s
    a = D.Bernoulli(logits=lax.stop_gradient(logits)).sample(k)
    return bernoulli_step(theta, s, a), D.Bernoulli(logits=logits).log_prob(a)


# --- the programs, and their hand-written per-element surrogates ---------------------------


def batched(theta, key):
    """The issue's program: B environments in one scan, one (B,) site per step."""

    def step(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def per_env_box(log_probs, rewards):
    """Σ_{t,i} ⊡(τ_{t,i}) r_{t,i} with τ_{t,i} = Σ_{t' ≤ t} log π(a_{t',i})."""
    return jnp.sum(scg.magic_box(jnp.cumsum(log_probs, axis=0)) * rewards)


def batched_by_hand(theta, key):
    def step(s, k):
        s, lp = policy_step_by_hand(theta, s, k)
        return s, (reward(s), lp)

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return per_env_box(lp, r) / B


CAT_THETA = jnp.array([[0.2, -0.1, 0.3], [-0.3, 0.2, 0.1]])


def categorical(theta, key):
    def step(s, k):
        a = scg.sample(k, D.Categorical(logits=theta[0] + theta[1] * s[:, None]))
        s = 0.8 * s + (a - 1) * 0.5
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def categorical_by_hand(theta, key):
    def step(s, k):
        logits = theta[0] + theta[1] * s[:, None]
        a = D.Categorical(logits=lax.stop_gradient(logits)).sample(k)
        lp = D.Categorical(logits=logits).log_prob(a)
        s = 0.8 * s + (a - 1) * 0.5
        return s, (reward(s), lp)

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return per_env_box(lp, r) / B


def vmapped(theta, key):
    """Environments batched with jax.vmap inside the step; a scalar site per environment."""

    def one(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s)

    def step(s, k):
        return jax.vmap(one)(s, jax.random.split(k, B))

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.mean(axis=1).sum()


def vmapped_by_hand(theta, key):
    def one(s, k):
        s, lp = policy_step_by_hand(theta, s, k)
        return s, (reward(s), lp)

    def step(s, k):
        return jax.vmap(one)(s, jax.random.split(k, B))

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return per_env_box(lp, r) / B


def fori(theta, key):
    """fori_loop with static bounds (a scan), carrying the key and per-environment returns."""

    def body(t, carry):
        s, k, ret = carry
        k, sub = jax.random.split(k)
        s = policy_step(theta, s, sub)
        return s, k, ret + reward(s)

    _, _, ret = lax.fori_loop(0, T, body, (jnp.zeros(B), key, jnp.zeros(B)))
    return ret.sum() / B


def fori_by_hand(theta, key):
    def step(carry, _):
        s, k = carry
        k, sub = jax.random.split(k)
        s, lp = policy_step_by_hand(theta, s, sub)
        return (s, k), (reward(s), lp)

    _, (r, lp) = lax.scan(step, (jnp.zeros(B), key), None, length=T)
    return per_env_box(lp, r) / B


def nested(theta, key):
    """Two sub-steps per step, in an inner scan; a reward per outer step."""

    def substep(s, k):
        return policy_step(theta, s, k), None

    def step(s, k):
        s, _ = lax.scan(substep, s, jax.random.split(k, 2))
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def nested_by_hand(theta, key):
    def substep(s, k):
        return policy_step_by_hand(theta, s, k)

    def step(s, k):
        s, lp = lax.scan(substep, s, jax.random.split(k, 2))
        return s, (reward(s), lp)

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    tau = jnp.cumsum(lp.reshape(2 * T, B), axis=0)[1::2]  # through the 2nd sub-step of t
    return jnp.sum(scg.magic_box(tau) * r) / B


def branching(theta, key):
    """A cond inside the body picks the policy by the step's parity; the site is in it."""

    def step(s, inputs):
        t, k = inputs

        def policy(sign):
            return lambda s: scg.sample(k, D.Bernoulli(logits=theta[0] + sign * theta[1] * s))

        a = lax.cond(t % 2 == 0, policy(1.0), policy(-1.0), s)
        s = bernoulli_step(theta, s, a)
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), (jnp.arange(T), jax.random.split(key, T)))
    return r.sum() / B


def branching_by_hand(theta, key):
    def step(s, inputs):
        t, k = inputs
        logits = theta[0] + jnp.where(t % 2 == 0, 1.0, -1.0) * theta[1] * s
        a = D.Bernoulli(logits=lax.stop_gradient(logits)).sample(k)
        s = bernoulli_step(theta, s, a)
        return s, (reward(s), D.Bernoulli(logits=logits).log_prob(a))

    _, (r, lp) = lax.scan(step, jnp.zeros(B), (jnp.arange(T), jax.random.split(key, T)))
    return per_env_box(lp, r) / B


DISCOUNT = 0.9 ** jnp.arange(T)


def reductions(theta, key):
    """The usual post-loop reductions: a mean over environments, a discount vector."""

    def step(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return DISCOUNT @ r.mean(axis=1) + jnp.sum(DISCOUNT @ r) / B


def reductions_by_hand(theta, key):
    def step(s, k):
        s, lp = policy_step_by_hand(theta, s, k)
        return s, (reward(s), lp)

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return 2.0 * per_env_box(lp, DISCOUNT[:, None] * r) / B


def auto_reset(theta, key):
    """An environment that resets itself (``where(done, reset, s)``) keeps its own credit."""

    def step(s, k):
        s = policy_step(theta, s, k)
        return jnp.where(s > 0.2, -0.5, s), reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def auto_reset_by_hand(theta, key):
    def step(s, k):
        s, lp = policy_step_by_hand(theta, s, k)
        return jnp.where(s > 0.2, -0.5, s), (reward(s), lp)

    _, (r, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return per_env_box(lp, r) / B


PROGRAMS = {
    "bernoulli": (batched, batched_by_hand, THETA),
    "categorical": (categorical, categorical_by_hand, CAT_THETA),
    "vmap_in_step": (vmapped, vmapped_by_hand, THETA),
    "fori_loop": (fori, fori_by_hand, THETA),
    "nested_scan": (nested, nested_by_hand, THETA),
    "cond_in_body": (branching, branching_by_hand, THETA),
    "reductions": (reductions, reductions_by_hand, THETA),
    "auto_reset": (auto_reset, auto_reset_by_hand, THETA),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_equal_key_by_key_to_per_environment_credit(name):
    fn, by_hand, theta = PROGRAMS[name]
    estimate, reference = jax.jit(scg.grad(fn)), jax.jit(jax.grad(by_hand))
    for key in keys(700 + sorted(PROGRAMS).index(name), 3):
        np.testing.assert_allclose(estimate(theta, key), reference(theta, key), rtol=1e-5)
    np.testing.assert_allclose(scg.grad(fn)(theta, key), reference(theta, key), rtol=1e-5)
    assert scg.surrogate(fn)(theta, key) == pytest.approx(float(fn(theta, key)), rel=1e-6)


@pytest.mark.parametrize("name", ["bernoulli", "categorical", "vmap_in_step", "nested_scan"])
def test_hessians_equal_key_by_key(name):
    fn, by_hand, theta = PROGRAMS[name]
    for key in keys(720 + sorted(PROGRAMS).index(name), 2):
        np.testing.assert_allclose(
            jax.hessian(scg.surrogate(fn))(theta, key),
            jax.hessian(by_hand)(theta, key),
            rtol=1e-4,
            atol=1e-6,
        )


def test_vmap_over_keys_equals_one_key_at_a_time():
    many = keys(730, 6)
    batched_estimates = jax.vmap(scg.grad(categorical), in_axes=(None, 0))(CAT_THETA, many)
    for key, estimate in zip(many, batched_estimates):
        np.testing.assert_allclose(
            estimate, jax.grad(categorical_by_hand)(CAT_THETA, key), rtol=1e-5, atol=1e-7
        )


# --- unbiased against exact enumeration ----------------------------------------------------

SMALL_B, SMALL_T = 2, 3


def small(theta, key):
    def step(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(SMALL_B), jax.random.split(key, SMALL_T))
    return r.sum() / SMALL_B


def small_exact(theta):
    """E[small] by enumerating all 2^(T·B) action sequences."""
    total = 0.0
    for actions in itertools.product([0.0, 1.0], repeat=SMALL_T * SMALL_B):
        a = jnp.reshape(jnp.array(actions), (SMALL_T, SMALL_B))
        s, prob, ret = jnp.zeros(SMALL_B), 1.0, 0.0
        for t in range(SMALL_T):
            p = jax.nn.sigmoid(theta[0] + theta[1] * s)
            prob = prob * jnp.prod(jnp.where(a[t] == 1.0, p, 1.0 - p))
            s = 0.8 * s + a[t] - 0.5
            ret = ret + jnp.sum(-((s - 1.0) ** 2))
        total = total + prob * ret / SMALL_B
    return total


def test_unbiased_at_first_and_second_order_against_enumeration():
    theta = jnp.array([0.3, -0.6])
    many = keys(740, 20_000)
    grads = jax.jit(jax.vmap(scg.grad(small), in_axes=(None, 0)))(theta, many)
    assert_mean_close(grads, jax.grad(small_exact)(theta), what="gradient")
    hessian = jax.hessian(scg.surrogate(small))
    hessians = jax.jit(jax.vmap(hessian, in_axes=(None, 0)))(theta, keys(741, 20_000))
    assert_mean_close(
        hessians.reshape(-1, 4), jax.hessian(small_exact)(theta).reshape(4), what="Hessian"
    )


# --- variance: as low as differentiating each episode on its own ---------------------------


def one_episode(theta, key):
    def step(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s)

    _, r = lax.scan(step, 0.0, jax.random.split(key, T))
    return r.sum()


def per_episode(theta, key):
    """jax.vmap over episode keys of scg.grad(one episode), averaged: the low-variance route."""
    grads = jax.vmap(scg.grad(one_episode), in_axes=(None, 0))(theta, jax.random.split(key, B))
    return grads.mean(0)


def test_batched_variance_matches_per_episode_estimator():
    n = 4000
    batched_grads = jax.jit(jax.vmap(scg.grad(batched), in_axes=(None, 0)))(THETA, keys(750, n))
    episode_grads = jax.jit(jax.vmap(per_episode, in_axes=(None, 0)))(THETA, keys(751, n))
    ratio = np.var(np.asarray(batched_grads), 0) / np.var(np.asarray(episode_grads), 0)
    # Same distribution: the ratio of two variances of 4000 draws is 1 ± ~0.05 (whole-site
    # credit through the carry made it ~B times larger).
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
    assert_mean_close(batched_grads - episode_grads, np.zeros(2), what="mean difference")


# --- a reward that really mixes environments -----------------------------------------------


def shared_resource(theta, key):
    """Each environment's own reward, minus a penalty on the mean state (shared by all)."""

    def step(s, k):
        s = policy_step(theta, s, k)
        return s, reward(s) - 0.5 * jnp.mean(s) ** 2

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def shared_resource_by_hand(theta, key):
    """Own rewards credited per environment; the shared penalty to every environment."""

    def step(s, k):
        s, lp = policy_step_by_hand(theta, s, k)
        return s, (reward(s), 0.5 * jnp.mean(s) ** 2, lp)

    _, (r, penalty, lp) = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    all_envs = jnp.cumsum(lp.sum(axis=1))
    return per_env_box(lp, r) / B - jnp.sum(scg.magic_box(all_envs) * penalty)


def test_a_reward_that_mixes_environments_is_credited_exactly_where_it_mixes():
    for key in keys(760, 3):
        np.testing.assert_allclose(
            scg.grad(shared_resource)(THETA, key),
            jax.grad(shared_resource_by_hand)(THETA, key),
            rtol=1e-5,
        )


# --- while loops (fori_loop with traced bounds): per-element credit of the final state -----


def until(theta, key, steps):
    def body(t, carry):
        s, k = carry
        k, sub = jax.random.split(k)
        return policy_step(theta, s, sub), k

    s, _ = lax.fori_loop(0, steps, body, (jnp.zeros(B), key))
    return jnp.sum(reward(s))


def until_by_hand(theta, key, steps):
    def body(t, carry):
        s, k, lp = carry
        k, sub = jax.random.split(k)
        s, step_lp = policy_step_by_hand(theta, s, sub)
        return s, k, lp + step_lp

    s, _, lp = lax.fori_loop(0, steps, body, (jnp.zeros(B), key, jnp.zeros(B)))
    return jnp.sum(scg.magic_box(lp) * reward(s))


def test_while_loop_keeps_per_environment_credit_in_forward_mode():
    steps = jnp.asarray(T)  # traced bound: a while_loop
    for key in keys(770, 2):
        np.testing.assert_allclose(
            jax.jacfwd(scg.surrogate(until))(THETA, key, steps),
            jax.jacfwd(until_by_hand)(THETA, key, steps),
            rtol=1e-5,
        )


# --- fallbacks are visible -----------------------------------------------------------------


def unknown_op_in_loop(theta, key):
    """A step through an operation without a per-element rule (an FFT round trip)."""

    def step(s, k):
        a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * s), name="action")
        s = jnp.fft.ifft(jnp.fft.fft(bernoulli_step(theta, s, a))).real
        return s, reward(s)

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum() / B


def mixing_in_loop(theta, key):
    def step(s, k):
        a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * s), name="action")
        s = bernoulli_step(theta, s, a)
        return s, jnp.sum(s) ** 2

    _, r = lax.scan(step, jnp.zeros(B), jax.random.split(key, T))
    return r.sum()


def test_a_fallback_warns_once_naming_the_site_and_the_operation():
    key = jax.random.key(780)
    with pytest.warns(scg.FallbackWarning, match=r"site 'action'.*whole site at `fft`"):
        scg.grad(unknown_op_in_loop)(THETA, key)
    graph = scg.graph(unknown_op_in_loop)(THETA, key)
    assert graph.sites[0].credit == "whole site (no rule for fft)"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=scg.FallbackWarning)
        scg.grad(unknown_op_in_loop)(THETA, key)  # silenced


def test_real_mixing_is_whole_site_credit_without_a_warning():
    key = jax.random.key(781)
    scg.grad(mixing_in_loop)(THETA, key)  # warnings are errors in the tests
    assert scg.graph(mixing_in_loop)(THETA, key).sites[0].credit == "whole site"
    assert scg.graph(batched)(THETA, key).sites[0].credit == "per element"


# --- reductions over array axes in a vmapped loop body are not collectives ------------------


def seen_before(theta, key):
    """vmap gives the softmax's reduce_max a NumPy integer axis; it is an array axis, not a
    mesh axis name (a regression: it was refused as a collective without a rule)."""

    def episode(k):
        def look(seen, k):
            probs = jax.nn.softmax(theta - 2.0 * seen)
            location = scg.sample(k, D.Categorical(probs=probs), name="where")
            return seen + jax.nn.one_hot(location, 3), location

        seen, _ = lax.scan(look, jnp.zeros(3), jax.random.split(k, 2))
        return jnp.sum(seen * jnp.array([1.0, -2.0, 0.5])) + jnp.max(seen)

    return jax.vmap(episode)(jax.random.split(key, 2)).mean()


def seen_before_exact(theta):
    total = 0.0
    for first, second in itertools.product(range(3), repeat=2):
        p1 = jax.nn.softmax(theta)
        seen = jax.nn.one_hot(first, 3)
        p2 = jax.nn.softmax(theta - 2.0 * seen)
        seen = seen + jax.nn.one_hot(second, 3)
        cost = jnp.sum(seen * jnp.array([1.0, -2.0, 0.5])) + jnp.max(seen)
        total = total + p1[first] * p2[second] * cost
    return total


@pytest.mark.parametrize("jit", [False, True])
def test_array_axis_reductions_in_a_vmapped_loop_are_not_collectives(jit):
    theta = jnp.array([0.2, -0.4, 0.7])
    grad = scg.grad(seen_before)
    grad = jax.jit(grad) if jit else grad
    assert np.all(np.isfinite(grad(theta, jax.random.key(750 + jit))))
    # 16,000 keys x 2 episodes stay under 2**15 rows: on XLA CPU (jaxlib 0.10.2) the reverse
    # pass of a vmapped lax.scan over 32,769 to 65,535 rows returns wrong rows past 32,768,
    # for plain JAX gradients too (see the README's sharp edges).
    many = 16_000
    grads = jax.jit(jax.vmap(scg.grad(seen_before), in_axes=(None, 0)))(theta, keys(752, many))
    assert_mean_close(grads, jax.grad(seen_before_exact)(theta), what="gradient")
    hessian = jax.vmap(jax.hessian(scg.surrogate(seen_before)), in_axes=(None, 0))
    hessians = jax.jit(hessian)(theta, keys(753, many))
    assert_mean_close(
        hessians.reshape(-1, 9), jax.hessian(seen_before_exact)(theta).reshape(9), what="Hessian"
    )
