"""What the rewrite costs while tracing: shapes evaluated once per distinct site, operations
re-emitted through cached calls, the discontinuity pass linear in the number of sites.

Deterministic gates (counts of traced calls and of jaxpr equations), never wall-clock ones;
the timings are in ``benchmarks/rewrite_time.py``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg._src import discontinuities
from jax_scg._src.jaxpr import scope_from_jaxpr


class CountingNormal(D.Normal):
    """A Normal that counts how often its ``sample`` and ``log_prob`` are traced."""

    calls = {"sample": 0, "log_prob": 0}

    def sample(self, key):
        CountingNormal.calls["sample"] += 1
        return super().sample(key)

    def log_prob(self, value):
        CountingNormal.calls["log_prob"] += 1
        return super().log_prob(value)


def _chain(depth, estimator):
    def loss(theta, key):
        x = jnp.tanh(theta)
        for k in jax.random.split(key, depth):
            x = scg.sample(k, CountingNormal(jnp.tanh(x + theta), 0.5), estimator=estimator)
        return jnp.sum(x**2)

    return loss


@pytest.mark.parametrize("estimator", ["pathwise", "score_function"])
def test_sites_of_one_shape_evaluate_their_distribution_once(estimator):
    depth = 12
    CountingNormal.calls.update(sample=0, log_prob=0)
    theta = jnp.linspace(-1.0, 1.0, 3)
    jax.jit(scg.grad(_chain(depth, estimator))).lower(theta, jax.random.key(0))
    # One abstract draw and log-probability for all twelve sites, plus each site's own draw
    # (and, for the score function, its log-probability) in the emitted surrogate. Before the
    # shapes were memoised every site evaluated its distribution five more times.
    assert CountingNormal.calls["sample"] <= depth + 1
    scored = depth if estimator == "score_function" else 0
    assert CountingNormal.calls["log_prob"] <= scored + 1


def test_memoised_shapes_follow_the_dtype_configuration():
    def draw(logits, key):
        return scg.sample(key, D.Categorical(logits=logits))

    logits = jnp.zeros(4, jnp.float32)
    key = jax.random.key(1)
    with jax.enable_x64(True):
        wide = jax.eval_shape(draw, logits, key).dtype
    narrow = jax.eval_shape(draw, logits, key).dtype
    assert (np.dtype(wide).itemsize, np.dtype(narrow).itemsize) == (8, 4)
    with jax.enable_x64(True):
        assert jax.eval_shape(draw, logits, key).dtype == wide


class WithListField(D.Normal):
    """Static configuration that is a list: unhashable by itself, but it compares."""

    _static = ("table",)

    def __init__(self, loc, scale, table):
        super().__init__(loc, scale)
        object.__setattr__(self, "table", list(table))


def test_unhashable_static_fields_work_with_the_memo():
    def loss(theta, key):
        d = WithListField(theta, 1.0, [1.0, 2.0])
        return scg.sample(key, d, estimator="score_function") ** 2

    theta = jnp.asarray(0.3)
    keys = jax.random.split(jax.random.key(2), 20_000)
    for _ in range(2):  # the second call meets the first one's structure in the memo
        grads = jax.jit(jax.vmap(scg.grad(loss), (None, 0)))(theta, keys)
    # d/dθ E[x²] = 2θ for x ~ N(θ, 1)
    assert abs(float(grads.mean()) - 0.6) < 5 * float(grads.std()) / np.sqrt(len(keys))


def test_reemitted_operations_leave_no_calls_behind():
    """The rewrite binds operations through cached ``jit(inline=True)`` calls (as jax.numpy
    does): the surrogate's gradient has the same equations as a hand-written one."""

    def loss(theta, key):
        x = scg.sample(key, D.Normal(jnp.tanh(theta), 0.5))
        return jnp.sum(jnp.sin(x) * x)

    def hand(theta, key):
        x = D.Normal(jnp.tanh(theta), 0.5).sample(key)
        return jnp.sum(jnp.sin(x) * x)

    theta, key = jnp.linspace(0.1, 0.4, 4), jax.random.key(3)
    ours = jax.make_jaxpr(scg.grad(loss))(theta, key)
    theirs = jax.make_jaxpr(jax.grad(hand))(theta, key)

    def names(jaxpr):
        return sorted(e.primitive.name for e in jaxpr.jaxpr.eqns)

    assert "tanh" in names(ours) and "sin" in names(ours)
    assert len(ours.jaxpr.eqns) <= len(theirs.jaxpr.eqns) + 2
    np.testing.assert_allclose(scg.grad(loss)(theta, key), jax.grad(hand)(theta, key), rtol=1e-6)


def test_key_and_integer_operations_are_bound_directly(monkeypatch):
    """Only operations on floating-point values go through the cached calls (a derivative can
    flow only there): a key slice per site would add a cached call per site that
    ``jax.grad`` never reuses, evicting the ones it does."""
    from jax_scg._src import jaxpr as jaxpr_module

    cached = []
    jitted = jaxpr_module._jitted_primitive

    def recording(key):
        cached.append(key[0].name)
        return jitted(key)

    monkeypatch.setattr(jaxpr_module, "_jitted_primitive", recording)

    def loss(theta, key):
        keys = jax.random.split(key, 20)
        return sum(jnp.sin(scg.sample(keys[i], D.Normal(theta, 0.5))) for i in range(20))

    grad = scg.grad(loss)(0.3, jax.random.key(5))
    assert "sin" in cached and not {"slice", "squeeze"} & set(cached)
    keys = jax.random.split(jax.random.key(5), 20)
    hand = jax.grad(lambda t: sum(jnp.sin(D.Normal(t, 0.5).sample(k)) for k in keys))(0.3)
    np.testing.assert_allclose(grad, hand, rtol=1e-5)


def test_discontinuity_pass_is_linear_in_the_sites():
    """Each value's marks are three sets, so following them is a few set unions per
    equation: a 300-site chain flags exactly the site whose value is rounded."""

    def loss(theta, key):
        x = theta
        for i, k in enumerate(jax.random.split(key, 300)):
            x = scg.sample(k, D.Normal(jnp.tanh(x), 0.1))
            if i == 150:
                x = x + jnp.round(x)
        return jnp.sum(x)

    closed = jax.make_jaxpr(loss)(jnp.zeros(2), jax.random.key(4))
    scope = scope_from_jaxpr(closed.jaxpr, closed.consts)
    jumps = discontinuities.find_jumps(scope)
    # the rounded site and every site before it (their values reach the round) jump
    sites = [e.uid for e in scope.eqns if e.is_site]
    assert sorted(jumps) == sorted(sites[:151])


def _transposes_feeding_two_products(jaxpr) -> int:
    """Transposed values that more than one dot_general reads (in the top-level jaxpr)."""
    made = {e.outvars[0] for e in jaxpr.eqns if e.primitive.name == "transpose"}
    reads: dict = {}
    for e in jaxpr.eqns:
        if e.primitive.name == "dot_general":
            for v in e.invars:
                if v in made:
                    reads[v] = reads.get(v, 0) + 1
    return sum(n > 1 for n in reads.values())


@pytest.mark.parametrize("jit", [False, True])
def test_a_transposed_weight_is_transposed_per_product(jit):
    # Per-element credit through c * (z @ w.T) emits the product twice (value and
    # surrogate). A shared transpose makes jax.grad add the two cotangents in the transposed
    # layout, which XLA:CPU compiles into a product on a transposed operand (1.6x slower on
    # the sigmoid belief net); one transpose per product, as hand-written, lets each cancel.
    def loss(params, key, product=lambda z, w: z @ w.T):
        z = scg.sample(key, D.Bernoulli(logits=params["a"]))
        return jnp.sum(params["c"] * product(z, params["w"]))

    params = {
        "a": jnp.linspace(-1.0, 1.0, 4),
        "w": jnp.arange(12.0).reshape(3, 4) / 10,
        "c": jnp.array([1.0, -2.0, 0.5]),
    }
    surrogate = scg.surrogate(loss)
    surrogate = jax.jit(surrogate) if jit else surrogate
    jaxpr = jax.make_jaxpr(surrogate)(params, jax.random.key(0)).jaxpr
    while len(jaxpr.eqns) == 1 and "jaxpr" in jaxpr.eqns[0].params:  # the jit's body
        jaxpr = jaxpr.eqns[0].params["jaxpr"].jaxpr
    assert sum(e.primitive.name == "dot_general" for e in jaxpr.eqns) == 2
    assert _transposes_feeding_two_products(jaxpr) == 0
    # Key by key the gradient of the same product written without a transpose.
    untransposed = functools.partial(
        loss, product=lambda z, w: jax.lax.dot_general(z, w, (((0,), (1,)), ((), ())))
    )
    grad = jax.jit(scg.grad(loss)) if jit else scg.grad(loss)
    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.vmap(grad, in_axes=(None, 0))(params, keys)
    for i, key in enumerate(keys):
        want = scg.grad(untransposed)(params, key)
        for a, b, c in zip(jax.tree.leaves(grad(params, key)), jax.tree.leaves(want),
                           jax.tree.leaves(batched)):  # fmt: skip
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(c[i], b, rtol=1e-6, atol=1e-7)
        # second order: the Hessian in the logits, the same with and without the transpose
        hessian = [
            jax.hessian(lambda a, f=f, k=key: scg.surrogate(f)({**params, "a": a}, k))(params["a"])
            for f in (loss, untransposed)
        ]
        np.testing.assert_allclose(hessian[0], hessian[1], rtol=1e-6, atol=1e-7)
