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
