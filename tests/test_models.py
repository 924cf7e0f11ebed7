"""Models as arguments: pytrees with static leaves (an Equinox module's activation
functions), differentiated in their floating-point arrays only, as ``equinox.filter_grad``
does; and the Equinox transformations around jax_scg's."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from helpers import assert_mean_close, keys

import jax_scg as scg
from jax_scg import distributions as D

X = jnp.array([0.5, -0.2])
VALUES = jnp.array([0.0, 1.0, 2.0])


def make_mlp():
    return eqx.nn.MLP(2, 3, 8, 1, activation=jnp.tanh, key=jax.random.key(1))


def loss(model, key):
    a = scg.sample(key, D.Categorical(logits=model(X)), name="a")
    return (VALUES[a] - 1.3) ** 2


def expected_loss(model):
    """E[loss] by enumerating the three actions."""
    probs = jax.nn.softmax(model(X))
    return jnp.sum(probs * (VALUES - 1.3) ** 2)


def arrays(tree):
    return jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_inexact_array))


def assert_same(a, b):
    for x, y in zip(arrays(a), arrays(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def test_grad_of_a_module_is_a_module_with_none_for_static_leaves():
    mlp = make_mlp()
    g = scg.grad(loss)(mlp, jax.random.key(0))
    assert g.activation is None and g.final_activation is None
    assert jax.tree_util.tree_structure(eqx.filter(g, eqx.is_array)) == (
        jax.tree_util.tree_structure(eqx.filter(mlp, eqx.is_array))
    )
    # The same as partitioning by hand, and as Equinox's own filtered transformations.
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    for key in keys(8801, 3):
        by_hand = scg.grad(lambda p, k: loss(eqx.combine(p, static), k))(params, key)
        assert_same(scg.grad(loss)(mlp, key), by_hand)
        assert_same(eqx.filter_jit(scg.grad(loss))(mlp, key), by_hand)
        assert_same(eqx.filter_grad(scg.surrogate(loss))(mlp, key), by_hand)
        value, g = scg.value_and_grad(loss)(mlp, key)
        np.testing.assert_allclose(value, loss(mlp, key), rtol=1e-6)
        assert_same(g, by_hand)


def test_grad_of_a_module_is_unbiased():
    mlp = make_mlp()
    estimate = eqx.filter_jit(eqx.filter_vmap(scg.grad(loss), in_axes=(None, 0)))
    grads = estimate(mlp, keys(8802, 20_000))
    exact = eqx.filter_grad(expected_loss)(mlp)
    samples = np.concatenate([np.reshape(x, (20_000, -1)) for x in arrays(grads)], axis=1)
    reference = np.concatenate([np.ravel(x) for x in arrays(exact)])
    assert_mean_close(samples, reference, what="MLP policy gradient")


def test_integer_and_static_leaves_get_no_gradient():
    def f(params, key):
        x = scg.sample(key, D.Bernoulli(logits=params["w"] * params["n"]), name="x")
        return params["scale"](x) * params["w"]

    params = {"w": jnp.float32(0.4), "n": jnp.int32(3), "scale": jnp.square}
    g, aux = scg.grad(lambda p, k: (f(p, k), p["n"]), has_aux=True)(params, jax.random.key(2))
    assert g["n"] is None and g["scale"] is None and int(aux) == 3
    plain = scg.grad(lambda w, k: f({"w": w, "n": 3, "scale": jnp.square}, k))
    np.testing.assert_allclose(g["w"], plain(jnp.float32(0.4), jax.random.key(2)), rtol=1e-6)


def test_grad_and_downstream_costs_of_a_module():
    mlp = make_mlp()
    for key in keys(8803, 2):
        g, costs = scg.grad_and_downstream_costs(loss)(mlp, key)
        assert g.activation is None
        assert_same(g, scg.grad(loss)(mlp, key))
        np.testing.assert_allclose(costs["a"], scg.downstream_costs(loss)(mlp, key)["a"])


def test_graph_of_a_module_argument():
    g = scg.graph(loss)(make_mlp(), jax.random.key(0))
    assert [n.label for n in g.inputs] == ["model"] and g.inputs[0].shape == (4,)
    assert any("Categorical" in n.label or n.distribution == "Categorical" for n in g.sites)
    assert "model" in {a for a, _ in g.edges}


def test_leave_one_out_of_a_module_equals_partitioning_by_hand():
    mlp = make_mlp()
    key = jax.random.key(16120)
    g = scg.baselines.leave_one_out(loss, 4)(mlp, key)
    assert g.activation is None
    params, static = eqx.partition(mlp, eqx.is_inexact_array)
    by_hand = scg.baselines.leave_one_out(lambda p, k: loss(eqx.combine(p, static), k), 4)(
        params, key
    )
    assert_same(g, by_hand)
