"""``scg.graph``: the graph the rewrite finds. For the paper's Figure 1 graphs the edges and
the cost sets are exactly the paper's (deterministic nodes collapsed into edges)."""

import jax
import jax.numpy as jnp
import matplotlib
import pytest
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D
from jax_scg import examples

matplotlib.use("Agg")

KEY = jax.random.key(0)
FIGURE1_EDGES = {
    # θ → □x → ○y → f
    "graph1": {("theta", "s0"), ("s0", "c0")},
    # θ → ○x → □y → f, and θ → □y
    "graph2": {("theta", "s0"), ("s0", "c0"), ("theta", "c0")},
    # θ → ○x → ○y → f, θ into both, x into f
    "graph3": {("theta", "s0"), ("theta", "s1"), ("s0", "s1"), ("s0", "c0"), ("s1", "c0")},
    # θ → ○x → f and θ → □y → f
    "graph4": {("theta", "s0"), ("s0", "c0"), ("theta", "c0")},
    # x0 → ○x1 → ○x2, θ into both, costs f1(x1) and f2(x1, x2)
    "graph5": {
        ("theta", "s0"),
        ("theta", "s1"),
        ("s0", "s1"),
        ("s0", "c0"),
        ("s0", "c1"),
        ("s1", "c1"),
    },
}


@pytest.mark.parametrize("model", examples.FIGURE1, ids=[m.name for m in examples.FIGURE1])
def test_figure1_graphs_have_the_papers_edges_and_costs(model):
    g = scg.graph(model.fn)(model.theta, KEY)
    assert set(g.edges) == FIGURE1_EDGES[model.name]
    assert [n.id for n in g.inputs] == ["theta"]
    assert all(n.kind == "site" and n.distribution in ("Bernoulli", "Categorical") for n in g.sites)
    assert [s.estimator for s in g.sites] == ["score_function"] * len(g.sites)
    expected_costs = 2 if model.name == "graph5" else 1
    assert len(g.costs) == expected_costs


def test_sites_report_estimator_shape_baseline_and_loops():
    def fn(theta, psi, key):
        k1, k2, k3 = jax.random.split(key, 3)
        z = scg.sample(k1, D.Bernoulli(logits=theta[:3]), name="z", baseline=psi[0])
        y = scg.sample(k2, D.Normal(jnp.sum(z) * theta[3], 1.0), name="y")

        def body(state, k):
            a = scg.sample(
                k, D.Bernoulli(logits=theta[4] + state), name="a", baseline=psi[1] * state
            )
            return state + a, (a - y) ** 2

        rewards = lax.scan(body, 0.0, jax.random.split(k3, 4))[1]
        return jnp.sum(z * theta[:3]) + rewards.sum()

    g = scg.graph(fn, argnums=(0, 1))(jnp.zeros(5), jnp.ones(2), KEY)
    by_label = {s.label: s for s in g.sites}
    assert by_label["z"].shape == (3,) and by_label["z"].baseline == ("psi",)
    assert by_label["y"].estimator == "pathwise" and by_label["y"].baseline is None
    ids = {s.label: s.id for s in g.sites}
    # V(state) reads the state that earlier iterations' actions built: a loop edge.
    assert by_label["a"].in_loop == "scan" and by_label["a"].baseline == ("psi", ids["a"])
    assert (ids["a"], ids["a"]) in g.edges
    assert (ids["z"], ids["y"]) in g.edges and ("theta", ids["a"]) in g.edges
    loop_cost = next(c for c in g.costs if c.in_loop == "scan")
    assert g.parents(loop_cost.id) >= {ids["a"], ids["y"]}


def test_dot_text_figure_and_surrogate_dump():
    model = examples.FIGURE1[4]
    g = scg.graph(model.fn)(model.theta, KEY)
    dot = g.to_dot()
    assert dot.startswith("digraph scg {") and dot.count("shape=circle") == 2
    assert dot.count("shape=box") == 3 and "s0 -> s1;" in dot
    ax = g.draw()
    assert len(ax.patches) == len(g.nodes)
    assert "exp" in g.surrogate_text  # the magic boxes of the rewritten surrogate
    assert "s1" in str(g) and "<- s0, theta" in str(g)


def _rollout(theta, key, dist):
    def step(s, k):
        a = scg.sample(k, dist(theta[0] + theta[1] * s), name="a")
        s = 0.8 * s + a - 0.5
        return s, -((s - 1.0) ** 2)

    return lax.scan(step, 0.0, jax.random.split(key, 5))[1].sum()


def test_each_loop_says_whether_it_is_fissioned():
    theta = jnp.zeros(2)
    fissioned = scg.graph(lambda t, k: _rollout(t, k, lambda z: D.Bernoulli(logits=z)))
    g = fissioned(theta, KEY)
    assert [n.loop for n in g.sites + g.costs] == ["fissioned", "fissioned"]
    assert g.fallbacks == {} and "loop fissioned" in str(g)
    # A pathwise action in the carry: a derivative flows through it, the loop stays as it is.
    kept = scg.graph(lambda t, k: _rollout(t, k, lambda z: D.Normal(z, 1.0)))(theta, KEY)
    for n in kept.sites + kept.costs:
        assert n.loop.startswith("not fissioned: a derivative flows through its carry")
    assert sorted(kept.fallbacks) == sorted(n.id for n in kept.sites + kept.costs)
    assert "not fissioned" in kept.to_dot()


def test_the_picture_shows_every_fallback():
    def model(theta, key):
        kx, kr = jax.random.split(key)
        x = scg.sample(kx, D.Normal(theta[0], 1.0), name="x")
        return jnp.round(x) + _rollout(theta, kr, lambda z: D.Normal(z, 1.0))

    g = scg.graph(model)(jnp.zeros(2), KEY)
    x = next(n for n in g.sites if n.label == "x")
    assert any("cost jumps at `round`" in r for r in g.fallbacks[x.id])
    ax = g.draw()
    dashed = [p for p in ax.patches if p.get_linestyle() not in ("-", "solid")]
    assert len(dashed) == len(g.fallbacks) == 3  # x, the loop's site and its cost
    caption = "\n".join(t.get_text() for t in ax.texts)
    assert "not fissioned" in caption and "cost jumps at `round`" in caption
