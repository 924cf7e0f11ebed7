"""Pathwise through a discontinuity: ``estimator="auto"`` stays unbiased.

``round(x)`` of a reparameterised ``x`` has derivative zero almost everywhere, so the pathwise
estimator returns zero where the expectation's derivative is not; every other
discontinuous operation misses its jumps the same way. Under ``"auto"`` the costs through
such an operation take the site's score function (with its value stopped in them) and its
other costs stay pathwise; where that split does not apply, the whole site takes the score
function. An explicit ``"pathwise"`` warns; continuous piecewise forms stay pathwise.

Exact references: E[h(x)] for x ~ Normal(mu, s) by quadrature on a fixed grid of x (the
density is differentiated, never h), so jumps are counted exactly up to the grid spacing.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_mean_close, keys
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D


def exact(h, derivative=jax.grad):
    """``derivative`` of E[h(x, theta)] at THETA, x ~ Normal(theta[0], exp(theta[1])), by
    quadrature in float64 (the density is differentiated; h is only evaluated)."""

    def expectation(theta):
        x = jnp.linspace(-12.0, 12.0, 480_001)  # spacing 5e-5
        density = jax.scipy.stats.norm.pdf(x, theta[0], jnp.exp(theta[1]))
        return jnp.sum(jax.vmap(h, (0, None))(x, theta) * density) * (x[1] - x[0])

    with jax.enable_x64(True):
        return np.asarray(derivative(expectation)(jnp.asarray(THETA, jnp.float64)))


def normal_model(h, estimator="auto"):
    def model(theta, key):
        x = scg.sample(key, D.Normal(theta[0], jnp.exp(theta[1])), name="x", estimator=estimator)
        return h(x, theta)

    return model


THETA = jnp.array([0.3, -0.2])

# Each operation the issue lists, as a cost of x (and theta, for a direct derivative too).
DISCONTINUOUS = {
    "round": lambda x, th: jnp.round(x),
    "floor": lambda x, th: jnp.floor(2.0 * x) + th[0],
    "ceil": lambda x, th: jnp.ceil(x) * th[1],
    "sign": lambda x, th: jnp.sign(x - 0.5),
    "rem": lambda x, th: x % 1.0,
    "float_to_int": lambda x, th: (3.0 * x).astype(jnp.int32) * 0.5,
    "comparison_as_number": lambda x, th: (x > 0.5).astype(x.dtype),
    "step_with_where": lambda x, th: jnp.where(x > 0.0, 1.0, -1.0),
    "argmax_as_value": lambda x, th: jnp.argmax(jnp.stack([x, 0.2 - x])).astype(x.dtype),
    "argmax_as_index": lambda x, th: jnp.array([1.0, -2.0])[jnp.argmax(jnp.stack([x, -x]))],
    "cond_step": lambda x, th: lax.cond(x > 0.1, lambda: 2.0, lambda: 0.0),
    "mixed_with_continuous": lambda x, th: x**2 + jnp.round(x) * x,
}


@pytest.mark.parametrize("name", list(DISCONTINUOUS))
def test_auto_is_unbiased_through_each_discontinuous_operation(name):
    h = DISCONTINUOUS[name]
    model = normal_model(h)
    reference = exact(h)
    seed = 1300 + list(DISCONTINUOUS).index(name)
    grads = jax.jit(jax.vmap(scg.grad(model), (None, 0)))(THETA, keys(seed, 40_000))
    assert_mean_close(grads, reference, what=name)
    node = scg.graph(model)(THETA, jax.random.key(0)).sites[0]
    # A jump inside a branch switches the whole site; elsewhere only the costs through it.
    assert node.estimator == ("score_function" if name == "cond_step" else "pathwise")
    assert "cost jumps at" in node.note and "test_discontinuities.py" in node.note


def test_the_pathwise_derivative_really_was_biased_there():
    h = DISCONTINUOUS["round"]
    reference = exact(h)
    pathwise = scg.grad(normal_model(h, "pathwise"))
    with pytest.warns(scg.FallbackWarning):
        grads = jax.jit(jax.vmap(pathwise, (None, 0)))(THETA, keys(1320, 1000))
    np.testing.assert_allclose(grads, 0.0)  # round's derivative is zero everywhere it exists
    assert abs(float(reference[0])) > 0.5


def test_second_order_through_a_step():
    h = DISCONTINUOUS["step_with_where"]
    model = normal_model(h)
    reference = exact(h, jax.hessian)
    hessians = jax.jit(jax.vmap(jax.hessian(scg.surrogate(model)), (None, 0)))(
        THETA, keys(1321, 40_000)
    )
    assert_mean_close(hessians.reshape(-1, 4), reference.reshape(4), what="Hessian")


def test_eager_equals_jit():
    model = normal_model(DISCONTINUOUS["round"])
    for key in keys(1322, 3):
        np.testing.assert_allclose(
            scg.grad(model)(THETA, key), jax.jit(scg.grad(model))(THETA, key), rtol=1e-6
        )


def test_explicit_pathwise_warns_naming_site_operation_and_line():
    model = normal_model(DISCONTINUOUS["comparison_as_number"], "pathwise")
    with pytest.warns(
        scg.FallbackWarning,
        match=r"(?s)site 'x'.*convert_element_type.*test_discontinuities.py.*jumps",
    ):
        scg.grad(model)(THETA, jax.random.key(0))


def test_a_site_inside_a_scan_whose_costs_step():
    def rollout(theta, key):
        def body(total, k):
            x = scg.sample(k, D.Normal(theta[0], jnp.exp(theta[1])))
            return total + jnp.round(x), None

        return lax.scan(body, 0.0, jax.random.split(key, 3))[0]

    reference = 3 * exact(DISCONTINUOUS["round"])
    grads = jax.jit(jax.vmap(scg.grad(rollout), (None, 0)))(THETA, keys(1323, 40_000))
    assert_mean_close(grads, reference, what="scan")


# Continuous piecewise forms: pathwise is right there, and stays chosen (no warning).
CONTINUOUS = {
    "relu": lambda x, th: jax.nn.relu(x - 0.2),
    "leaky_relu": lambda x, th: jax.nn.leaky_relu(x, 0.1),
    "maximum": lambda x, th: jnp.maximum(x, th[1]),
    "abs": lambda x, th: jnp.abs(x),
    "clip": lambda x, th: jnp.clip(x, -0.5, 0.5),
    "safe_log": lambda x, th: jnp.where(jnp.abs(x) > 1e-3, jnp.log(jnp.abs(x)), jnp.log(1e-3)),
    "zero_guard": lambda x, th: jnp.where(x == 0, 0.0, x * jnp.sin(x)),
    "sort_values": lambda x, th: jnp.sort(jnp.stack([x, 0.1 - x, 2 * x]))[1],
    "top_k_values": lambda x, th: lax.top_k(jnp.stack([x, 0.1 - x, 2 * x]), 2)[0].sum(),
    "gather_own_argmax": lambda x, th: (v := jnp.stack([x, -x]))[jnp.argmax(v)],
    "straight_through": lambda x, th: x + lax.stop_gradient(jnp.round(x) - x),
    "select_between_values": lambda x, th: jnp.where(x > 0, x + 1.0, 1.0 + x),
}


@pytest.mark.parametrize("name", list(CONTINUOUS))
def test_continuous_piecewise_forms_stay_pathwise(name):
    model = normal_model(CONTINUOUS[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scg.grad(normal_model(CONTINUOUS[name], "pathwise"))(THETA, jax.random.key(0))
        graph = scg.graph(model)(THETA, jax.random.key(0))
    node = graph.sites[0]
    assert node.estimator == "pathwise" and node.note is None


@pytest.mark.parametrize("name", ["relu", "clip", "safe_log", "sort_values"])
def test_continuous_forms_are_unbiased_pathwise(name):
    h = CONTINUOUS[name]
    reference = exact(h)
    seed = 1330 + list(CONTINUOUS).index(name)
    grads = jax.jit(jax.vmap(scg.grad(normal_model(h)), (None, 0)))(THETA, keys(seed, 20_000))
    assert_mean_close(grads, reference, what=name)


def test_a_discontinuity_only_in_an_auxiliary_output_changes_nothing():
    def model(theta, key, estimator="auto"):
        x = scg.sample(key, D.Normal(theta[0], jnp.exp(theta[1])), estimator=estimator)
        return x**2, jnp.round(x)

    for key in keys(1340, 3):
        g, aux = scg.grad(model, has_aux=True)(THETA, key)
        pathwise, _ = scg.grad(model, has_aux=True)(THETA, key, estimator="pathwise")
        np.testing.assert_allclose(g, pathwise, rtol=1e-6)
        assert np.shape(aux) == ()


# The per-cost split: only the costs through a jump take the score function.


def split_reference(h_jump, h_smooth):
    """A hand-written surrogate of E[h_jump(x) + h_smooth(x)]: the score function with the
    value stopped for the jumping cost, pathwise for the smooth one (same draw)."""

    def surrogate(theta, key):
        dist = D.Normal(theta[0], jnp.exp(theta[1]))
        x = dist.sample(key)
        stopped = lax.stop_gradient(x)
        return scg.magic_box(dist.log_prob(stopped)) * h_jump(stopped, theta) + h_smooth(x, theta)

    return surrogate


SPLITS = {
    "round_plus_square": (lambda x, th: jnp.round(x), lambda x, th: x**2),
    "product_with_the_value": (lambda x, th: jnp.round(x) * x, lambda x, th: jnp.sin(x) * th[1]),
    "step_and_quadratic": (
        lambda x, th: 3.0 * jnp.where(x > 0.2, 1.0, 0.0),
        lambda x, th: (x - th[0] * th[1]) ** 2,
    ),
}


@pytest.mark.parametrize("name", list(SPLITS))
def test_costs_away_from_the_jump_stay_pathwise_key_by_key(name):
    h_jump, h_smooth = SPLITS[name]
    model = normal_model(lambda x, th: h_jump(x, th) + h_smooth(x, th))
    hand = jax.grad(split_reference(h_jump, h_smooth))
    for key in keys(1350 + list(SPLITS).index(name), 4):
        for transform in (lambda f: f, jax.jit):
            np.testing.assert_allclose(
                transform(scg.grad(model))(THETA, key), hand(THETA, key), rtol=1e-5, atol=1e-6
            )
    assert "pathwise for the others" in scg.graph(model)(THETA, jax.random.key(0)).sites[0].note


@pytest.mark.parametrize("name", list(SPLITS))
def test_the_split_is_unbiased_and_beats_the_whole_site_score(name):
    h_jump, h_smooth = SPLITS[name]

    def h(x, th):
        return h_jump(x, th) + h_smooth(x, th)

    reference = exact(h)
    ks = keys(1360 + list(SPLITS).index(name), 40_000)
    split = jax.jit(jax.vmap(scg.grad(normal_model(h)), (None, 0)))(THETA, ks)
    whole = jax.jit(jax.vmap(scg.grad(normal_model(h, "score_function")), (None, 0)))(THETA, ks)
    assert_mean_close(split, reference, what=name)
    assert_mean_close(whole, reference, what=f"{name}, whole site")
    if name != "product_with_the_value":  # there the jumping cost dominates both
        ratio = np.var(split, 0) / np.var(whole, 0)
        assert np.all(ratio < 0.8), ratio


def test_split_hessian_is_unbiased():
    h_jump, h_smooth = SPLITS["round_plus_square"]

    def h(x, th):
        return h_jump(x, th) + h_smooth(x, th)

    hessians = jax.jit(jax.vmap(jax.hessian(scg.surrogate(normal_model(h))), (None, 0)))(
        THETA, keys(1370, 40_000)
    )
    assert_mean_close(hessians.reshape(-1, 4), exact(h, jax.hessian).reshape(4), what="Hessian")


def test_a_jump_times_another_sites_value():
    """``round(x) * y`` with y a score-function site: the jump is a coefficient of y's cost,
    so that cost takes both scores (the cost tree stops at the jump)."""

    def model(theta, key):
        kx, ky = jax.random.split(key)
        x = scg.sample(kx, D.Normal(theta[0], jnp.exp(theta[1])), name="x")
        y = scg.sample(ky, D.Bernoulli(logits=theta[1] - 0.4), name="y")
        return jnp.round(x) * y + x**2

    def expectation_given_x(x, theta):
        return jnp.round(x) * jax.nn.sigmoid(theta[1] - 0.4) + x**2

    reference = exact(expectation_given_x)
    grads = jax.jit(jax.vmap(scg.grad(model), (None, 0)))(THETA, keys(1371, 40_000))
    assert_mean_close(grads, reference, what="round(x) * y")


def test_vectorised_site_split():
    def model(theta, key):
        x = scg.sample(key, D.Normal(theta[0] * jnp.arange(1.0, 4.0), jnp.exp(theta[1])))
        return jnp.sum(jnp.floor(x)) + jnp.sum(x**2) / 3.0

    def expectation(theta):
        x = jnp.linspace(-14.0, 14.0, 280_001)
        total = 0.0
        for i in range(1, 4):
            density = jax.scipy.stats.norm.pdf(x, theta[0] * i, jnp.exp(theta[1]))
            total = total + jnp.sum((jnp.floor(x) + x**2 / 3.0) * density) * (x[1] - x[0])
        return total

    with jax.enable_x64(True):
        reference = np.asarray(jax.grad(expectation)(jnp.asarray(THETA, jnp.float64)))
    grads = jax.vmap(scg.grad(model), (None, 0))(THETA, keys(1372, 40_000))
    assert_mean_close(grads, reference, what="vectorised")
    assert scg.graph(model)(THETA, jax.random.key(0)).sites[0].estimator == "pathwise"


def test_where_the_split_does_not_apply_the_whole_site_switches():
    """The value feeds another site through a jump: that site's score would need the value
    stopped too, so every cost of the site takes the score function."""

    def model(theta, key):
        kx, ky = jax.random.split(key)
        x = scg.sample(kx, D.Normal(theta[0], jnp.exp(theta[1])), name="x")
        y = scg.sample(ky, D.Bernoulli(logits=jnp.round(x)), name="y")
        return y + x**2

    def expectation_given_x(x, theta):
        return jax.nn.sigmoid(jnp.round(x)) + x**2

    node = scg.graph(model)(THETA, jax.random.key(0)).sites[0]
    assert node.estimator == "score_function" and "every cost" in node.note
    grads = jax.jit(jax.vmap(scg.grad(model), (None, 0)))(THETA, keys(1373, 40_000))
    assert_mean_close(grads, exact(expectation_given_x), what="feeds a site")


def test_a_baseline_by_name_gives_the_whole_site_the_score_function():
    """A baseline acts on a score term: a split site given one by name takes the score
    function for every cost, as with ``sample(..., baseline=...)``."""
    h = DISCONTINUOUS["mixed_with_continuous"]
    for key in keys(1374, 3):
        for baseline in (0.7, 0.0):
            got = scg.grad(normal_model(h), baselines={"x": baseline})(THETA, key)
            want = scg.grad(normal_model(h, "score_function"), baselines={"x": baseline})(
                THETA, key
            )
            np.testing.assert_allclose(got, want, rtol=1e-6)


def _deep_chain(theta, key, jump):
    x = theta
    for k in jax.random.split(key, 40):
        x = scg.sample(k, D.Normal(jnp.tanh(x), 0.1))
    return jnp.round(x) if jump else x * x


def test_a_jump_free_deep_chain_skips_the_exact_walk(monkeypatch):
    """In a chain of pathwise sites the exact walk marks each value with every site before
    it (quadratic); it runs only where the linear, over-approximating walk finds a jump."""
    from jax_scg._src import discontinuities

    walks = []

    class Counting(discontinuities._Walker):
        def __init__(self, root, collapsed=False):
            walks.append("collapsed" if collapsed else "exact")
            super().__init__(root, collapsed)

    monkeypatch.setattr(discontinuities, "_Walker", Counting)
    key = keys(1300, 1)[0]
    scg.grad(_deep_chain)(0.3, key, jump=False)
    assert walks == ["collapsed"]
    walks.clear()
    scg.grad(_deep_chain)(0.3, key, jump=True)
    assert walks == ["collapsed", "exact"]


def test_in_a_deep_chain_with_a_jump_only_the_last_site_splits_its_costs():
    """Every site's value reaches ``round`` (pathwise through the sites after it), so all
    take the score where it jumps; the per-cost split applies only to the last one, the
    others feeding another site's parameters."""
    from jax_scg._src import discontinuities
    from jax_scg._src.jaxpr import scope_from_jaxpr

    program = jax.make_jaxpr(lambda t, k: _deep_chain(t, k, jump=True))(0.3, keys(1301, 1)[0])
    scope = scope_from_jaxpr(program.jaxpr, program.consts)
    sites = list(scope.sites())
    found = discontinuities.find_jumps(scope)
    assert set(found) == {eqn.uid for eqn in sites}
    split = [uid for uid, (_, _, points) in found.items() if points]
    assert split == [sites[-1].uid]
