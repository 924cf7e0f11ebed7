"""Flax NNX modules and optax states as arguments of scg.grad/value_and_grad/surrogate, and
nnx.jit/nnx.grad/nnx.vmap around jax_scg's transformations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_mean_close, keys

import jax_scg as scg
from jax_scg import distributions as D

nnx = pytest.importorskip("flax.nnx")  # an optional extra (models); CI installs it

X = jnp.array([0.5, -0.2])
VALUES = jnp.array([0.0, 1.0, 2.0])


class Policy(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(2, 8, rngs=rngs)
        self.out = nnx.Linear(8, 3, rngs=rngs)
        self.steps = nnx.Variable(jnp.int32(0))  # an integer leaf: no gradient

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


def make_policy():
    return Policy(nnx.Rngs(3))


def loss(model, key):
    a = scg.sample(key, D.Categorical(logits=model(X)), name="a")
    return (VALUES[a] - 1.3) ** 2


def expected_loss(model):
    """E[loss] by enumerating the three actions."""
    return jnp.sum(jax.nn.softmax(model(X)) * (VALUES - 1.3) ** 2)


def params(tree):
    """The float arrays of a module or of its gradient, in a fixed order."""
    return [x for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


def assert_same(a, b):
    for x, y in zip(params(a), params(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_grad_of_an_nnx_module_equals_split_and_merge_by_hand():
    policy = make_policy()
    graphdef, param_state, rest = nnx.split(policy, nnx.Param, ...)

    def by_hand_loss(p, k):
        return loss(nnx.merge(graphdef, p, rest), k)

    for key in keys(8810, 3):
        by_hand = scg.grad(by_hand_loss)(param_state, key)
        g = scg.grad(loss)(policy, key)
        assert isinstance(g, Policy)
        assert g.steps.get_value() is None  # the integer variable gets no gradient
        assert_same(g, by_hand)
        assert_same(jax.jit(scg.grad(loss))(policy, key), by_hand)
        assert_same(nnx.jit(scg.grad(loss))(policy, key), by_hand)
        assert_same(nnx.grad(scg.surrogate(loss))(policy, key), by_hand)
        value, g = scg.value_and_grad(loss)(policy, key)
        np.testing.assert_allclose(value, loss(policy, key), rtol=1e-6)
        assert_same(g, by_hand)


def test_grad_of_an_nnx_module_is_unbiased():
    policy = make_policy()
    n = 20_000
    estimate = nnx.jit(nnx.vmap(scg.grad(loss), in_axes=(None, 0)))
    grads = estimate(policy, keys(8811, n))
    exact = nnx.grad(expected_loss)(policy)
    samples = np.concatenate([np.reshape(x, (n, -1)) for x in params(grads)], axis=1)
    reference = np.concatenate([np.ravel(x) for x in params(exact)])
    assert_mean_close(samples, reference, what="NNX policy gradient")


def test_hessian_through_an_nnx_module():
    """Second order: jax.hessian of the surrogate in the last layer's bias, unbiased."""
    policy = make_policy()
    is_output_bias = lambda path, _: path[-1] == "bias" and "out" in path  # noqa: E731
    graphdef, bias, rest = nnx.split(policy, is_output_bias, ...)

    def surrogate_in_bias(b, key):
        return scg.surrogate(loss)(nnx.merge(graphdef, b, rest), key)

    def exact_in_bias(b):
        return expected_loss(nnx.merge(graphdef, b, rest))

    n = 20_000
    hessian = jax.jit(jax.vmap(jax.hessian(surrogate_in_bias), in_axes=(None, 0)))
    (samples,) = jax.tree_util.tree_leaves(hessian(bias, keys(8812, n)))
    (exact,) = jax.tree_util.tree_leaves(jax.hessian(exact_in_bias)(bias))
    assert samples.shape == (n, 3, 3)
    assert_mean_close(np.reshape(samples, (n, -1)), np.ravel(exact), what="NNX Hessian")


def test_an_optax_state_with_an_integer_count():
    """A pytree with integer leaves and no functions (an optax state) is a model too."""
    theta = jnp.array([0.3, -0.2, 0.1])
    opt_state = optax.adam(0.1).init(theta)

    def f(state, key):
        mu = state[0].mu  # ScaleByAdamState: count (int32), mu, nu
        x = scg.sample(key, D.Bernoulli(logits=mu + theta), name="x")
        return jnp.sum((x - 0.5) * mu) + state[0].count

    g = scg.grad(f)(opt_state, jax.random.key(8813))
    assert g[0].count is None
    plain = scg.grad(lambda mu, k: f((opt_state[0]._replace(mu=mu),) + opt_state[1:], k))
    np.testing.assert_allclose(g[0].mu, plain(opt_state[0].mu, jax.random.key(8813)), rtol=1e-6)


def test_a_lone_integer_argument_is_still_refused():
    with pytest.raises(TypeError, match="real- or complex-valued"):
        scg.grad(lambda n, k: scg.sample(k, D.Bernoulli(logits=1.0 * n)))(1, jax.random.key(0))
