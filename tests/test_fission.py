"""Loop fission: rollouts differentiate without a backward pass through time.

A scan whose carries carry no derivative is split: the loop draws and steps the dynamics;
scores, baselines, costs and magic boxes are computed after it, vectorised over iterations.
Checked here: the compiled gradient and Hessian of a 64-step rollout loop over time only
once (the forward loop), where the unfissioned rewrite has a backward loop too; values and
derivatives of orders 1 to 3 equal the unfissioned rewrite's (float64, rtol 1e-6) for every
loop form fission applies to, and for those it must leave alone.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import keys
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

T = 64


def policy(theta, s):
    return theta[0] + theta[1] * s + theta[2] * jnp.tanh(s)


def stacked(theta, key):
    """Rewards stacked by the scan, summed after it."""

    def body(s, k):
        a = scg.sample(k, D.Bernoulli(logits=policy(theta, s)))
        s = 0.9 * s + a - 0.5
        return s, (s - 1.0) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, T))[1].sum()


def carried(theta, key):
    """The running reward in the carry (an accumulator: total + r_t)."""

    def body(carry, k):
        s, total = carry
        a = scg.sample(k, D.Bernoulli(logits=policy(theta, s)))
        s = 0.9 * s - 0.5 + a
        return (s, total - (s - 1.0) ** 2), None

    return lax.scan(body, (0.0, 1.0), jax.random.split(key, T))[0][1]


def trip_counts(fn, *args):
    """The known trip counts of the compiled program's while loops."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return sorted(int(n) for n in re.findall(r'known_trip_count":\{"n":"(\d+)"', text))


@pytest.mark.parametrize("model", [stacked, carried], ids=["stacked", "carried"])
def test_derivatives_loop_over_time_only_forward(model):
    theta, key = jnp.array([0.1, -0.2, 0.3]), jax.random.key(0)
    forward = trip_counts(model, theta, key).count(T)
    assert forward == 1
    derivatives = {
        "gradient": lambda fission: scg.grad(model, fission=fission),
        "Hessian": lambda fission: jax.hessian(scg.surrogate(model, fission=fission)),
        "look-ahead": lambda fission: jax.grad(
            lambda th, k: scg.surrogate(model, fission=fission)(
                th - 0.1 * scg.grad(model, fission=fission)(th, k), jax.random.fold_in(k, 1)
            )
        ),
    }
    for name, make in derivatives.items():
        fissioned = trip_counts(make(True), theta, key).count(T)
        in_loop = trip_counts(make(False), theta, key).count(T)
        rollouts = 2 if name == "look-ahead" else 1
        assert fissioned == rollouts, (name, fissioned)
        assert in_loop > fissioned, (name, in_loop)


@pytest.mark.parametrize("model", [stacked, carried], ids=["stacked", "carried"])
def test_auto_fissions_the_derivatives_that_are_differentiated_again(model):
    # "auto" (the default): on CPU a first-order derivative differentiates the loop as
    # written (fission=False's program: a forward and a backward loop); wherever the
    # surrogate's inputs are themselves being differentiated, the fissioned rewrite (one
    # loop). Off CPU every derivative is fissioned.
    theta, key, many = jnp.array([0.1, -0.2, 0.3]), jax.random.key(2), keys(930, 3)
    surrogate = scg.surrogate(model)
    first = {
        "grad": (scg.grad(model), (theta, key)),
        "value_and_grad": (scg.value_and_grad(model), (theta, key)),
        "vmap(grad)": (jax.vmap(scg.grad(model), (None, 0)), (theta, many)),
    }
    on_cpu = jax.default_backend() == "cpu"
    for name, (fn, args) in first.items():
        assert trip_counts(fn, *args).count(T) == (2 if on_cpu else 1), name
    chosen = False if on_cpu else True
    for derivative in (
        scg.grad,
        lambda f, fission="auto": jax.jacfwd(scg.surrogate(f, fission=fission)),
    ):
        assert hlo_ops(derivative(model), theta, key) == hlo_ops(
            derivative(model, fission=chosen), theta, key
        )
    higher = {
        "hessian": (jax.hessian(surrogate), (theta, key)),
        "grad of grad": (jax.grad(lambda t, k: scg.grad(model)(t, k).sum()), (theta, key)),
        "jacfwd(vmap(jacrev))": (
            jax.jacfwd(jax.vmap(jax.jacrev(surrogate), (None, 0))),
            (theta, many),
        ),
        "vmap(hessian)": (jax.vmap(jax.hessian(surrogate), (None, 0)), (theta, many)),
    }
    for name, (fn, args) in higher.items():
        assert trip_counts(fn, *args).count(T) == 1, name

    # A look-ahead gradient: the inner gradient is differentiated again (fissioned, one
    # loop), the outer surrogate only once (as written on CPU: two).
    def lookahead(t, k):
        return surrogate(t - 0.1 * scg.grad(model)(t, k), jax.random.fold_in(k, 1))

    assert trip_counts(jax.grad(lookahead), theta, key).count(T) == (3 if on_cpu else 2)
    # The same through scg.grad (LOLA-DiCE): the inner gradient is traced into the program
    # that the outer rewrite differentiates, and a program that computes jax_scg derivatives
    # itself has all its derivatives fissioned: two loops, as with fission=True.
    assert trip_counts(scg.grad(lookahead), theta, key).count(T) == 2


@pytest.mark.parametrize(
    "setting, platform, differentiated, fissioned",
    [
        ("auto", "cpu", False, False),
        ("auto", "cpu", True, True),
        ("auto", "gpu", False, True),
        ("auto", "tpu", False, True),
        (True, "cpu", False, True),
        (False, "gpu", True, False),
    ],
)
def test_which_derivatives_are_fissioned(setting, platform, differentiated, fissioned):
    from jax_scg._src.surrogate import fissioned_derivative

    assert fissioned_derivative(setting, platform, differentiated) is fissioned


def test_a_fission_setting_other_than_true_false_auto_is_refused():
    with pytest.raises(ValueError, match=r"fission='always' is not one of True, False and 'auto'"):
        scg.grad(stacked, fission="always")


def assert_same_at_three_orders(fn, theta, key, rtol=1e-6, settings=(True,)):
    """``fn``'s surrogate with each fission setting equals the unfissioned one at orders 0-3."""
    off = scg.surrogate(fn, fission=False)
    for setting in settings:
        on = scg.surrogate(fn, fission=setting)
        np.testing.assert_allclose(on(theta, key), off(theta, key), rtol=rtol)
        for derivative in (jax.grad, jax.hessian, lambda f: jax.jacfwd(jax.hessian(f))):
            np.testing.assert_allclose(
                derivative(on)(theta, key), derivative(off)(theta, key), rtol=rtol, atol=1e-9
            )


# --- the loop forms, each with or without fission -------------------------------------------

B, SHORT = 3, 6  # not 5: the threefry hash loops 5 times on CPU


def batched_with_baseline(theta, key):
    """B environments in one scan, a state-dependent baseline, stacked rewards, reversed."""

    def body(s, k):
        a = scg.sample(k, D.Bernoulli(logits=policy(theta, s)), baseline=0.2 * s)
        s = 0.8 * s + a - 0.5
        return s, -((s - 1.0) ** 2)

    _, r = lax.scan(body, jnp.zeros(B), jax.random.split(key, SHORT), reverse=True)
    return jnp.sum(0.9 ** jnp.arange(SHORT) @ r) / B


def categorical_two_sites(theta, key):
    """Two sites per step, a Categorical and a Bernoulli that only feeds the step's cost."""

    def body(carry, k):
        s, total = carry
        k1, k2 = jax.random.split(k)
        logits = jnp.stack([theta[0] * s, theta[1] + 0 * s, -theta[2] * s], -1)
        a = scg.sample(k1, D.Categorical(logits=logits))
        bonus = scg.sample(k2, D.Bernoulli(logits=theta[2] - s))
        s = 0.5 * s + (a - 1.0)
        return (s, total + jnp.sum(s**2 + bonus * s)), jnp.sum(jnp.sin(s))

    (_, total), r = lax.scan(body, (jnp.zeros(B), 0.0), jax.random.split(key, SHORT))
    return total + r.sum()


def pathwise_inside(theta, key):
    """A pathwise (Normal) site per step feeding only that step's cost: fissioned too."""

    def body(s, k):
        k1, k2 = jax.random.split(k)
        a = scg.sample(k1, D.Bernoulli(logits=policy(theta, s)))
        noise = scg.sample(k2, D.Normal(theta[2] * s, 1.0))
        return 0.7 * s + a, (s - noise) ** 2

    return lax.scan(body, 0.3, jax.random.split(key, SHORT))[1].sum()


def parameter_dynamics(theta, key):
    """Dynamics that depend on theta: the carry carries a derivative (not fissioned)."""

    def body(s, k):
        a = scg.sample(k, D.Bernoulli(logits=policy(theta, s)))
        s = 0.8 * s + theta[2] * a
        return s, (s - 1.0) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, SHORT))[1].sum()


def pathwise_action(theta, key):
    """A reparameterised action steering the state (not fissioned)."""

    def body(s, k):
        a = scg.sample(k, D.Normal(policy(theta, s), 0.5))
        s = 0.5 * s + a
        return s, (s - 1.0) ** 2

    return lax.scan(body, 0.0, jax.random.split(key, SHORT))[1].sum()


def discounted_carry(theta, key):
    """A cost carry that is not an accumulator (G = 0.9 G + r): not fissioned."""

    def body(carry, k):
        s, g = carry
        a = scg.sample(k, D.Bernoulli(logits=policy(theta, s)))
        s = 0.8 * s + a - 0.5
        return (s, 0.9 * g + (s - 1.0) ** 2), None

    return lax.scan(body, (0.0, 0.0), jax.random.split(key, SHORT))[0][1]


def carried_key(theta, key):
    """The key is carried and split every step; no xs and nothing stacked for the costs."""

    def body(carry, _):
        k, total = carry
        k, sub = jax.random.split(k)
        return (k, total + scg.sample(sub, D.Bernoulli(logits=theta[0]))), None

    return lax.scan(body, (key, 0.0), None, length=SHORT)[0][1]


def single_iteration(theta, key):
    """One iteration, nothing scanned over and nothing stacked: the loop's length alone sizes
    the vectorised costs."""

    def body(total, _):
        return total + scg.sample(key, D.Bernoulli(logits=theta[0])), None

    return lax.scan(body, 0.0, None, length=1)[0]


FORMS = [
    stacked,
    carried,
    batched_with_baseline,
    categorical_two_sites,
    pathwise_inside,
    parameter_dynamics,
    pathwise_action,
    discounted_carry,
    carried_key,
    single_iteration,
]


@pytest.mark.parametrize("fn", FORMS, ids=[f.__name__ for f in FORMS])
def test_values_and_derivatives_equal_with_and_without_fission(fn):
    with jax.enable_x64(True):
        theta = jnp.array([0.3, -0.4, 0.2])
        first, second = keys(900 + FORMS.index(fn), 2)
        assert_same_at_three_orders(fn, theta, first, settings=(True, "auto"))
        assert_same_at_three_orders(fn, theta, second)


@pytest.mark.parametrize(
    "fn, fissioned",
    [
        (batched_with_baseline, True),
        (categorical_two_sites, True),
        (pathwise_inside, True),
        (parameter_dynamics, False),
        (pathwise_action, False),
        (discounted_carry, False),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_fission_applies_exactly_where_no_derivative_reaches_the_carry(fn, fissioned):
    theta, key = jnp.array([0.3, -0.4, 0.2]), jax.random.key(1)
    gradient_loops = trip_counts(scg.grad(fn, fission=True), theta, key).count(SHORT)
    assert gradient_loops == (1 if fissioned else 2)


def test_fission_under_jit_and_vmap_equals_eager():
    theta, many = jnp.array([0.3, -0.4, 0.2]), keys(910, 4)
    for setting in (True, "auto"):
        grad = scg.grad(batched_with_baseline, fission=setting)
        batched = jax.jit(jax.vmap(grad, in_axes=(None, 0)))(theta, many)
        for key, estimate in zip(many, batched):
            np.testing.assert_allclose(
                estimate,
                scg.grad(batched_with_baseline, fission=False)(theta, key),
                rtol=1e-5,
                atol=1e-6,
            )


def hlo_ops(fn, *args) -> int:
    """Instructions in the compiled program (parameters and constants left out)."""
    text = jax.jit(fn).lower(*args).compile().as_text()
    return len(re.findall(r"^\s+(?:ROOT )?%\S+ = (?!.*\b(?:parameter|constant)\()", text, re.M))


@pytest.mark.parametrize("model", [stacked, carried], ids=["stacked", "carried"])
def test_forward_only_costs_what_the_loop_as_written_costs(model):
    # The value alone comes from the loop as written; derivatives from the fissioned one.
    theta, many = jnp.array([0.1, -0.2, 0.3]), keys(920, 8)
    value = lambda fission: jax.vmap(scg.surrogate(model, fission=fission), (None, 0))  # noqa: E731
    assert hlo_ops(value(True), theta, many) == hlo_ops(value(False), theta, many)
    np.testing.assert_allclose(value(True)(theta, many), value(False)(theta, many), rtol=1e-6)
    values, grads = jax.vmap(scg.value_and_grad(model, fission=True), (None, 0))(theta, many)
    np.testing.assert_allclose(values, value(False)(theta, many), rtol=1e-6)
    gradient = jax.vmap(scg.grad(model, fission=True), (None, 0))
    assert trip_counts(gradient, theta, many).count(T) == 1


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("n", [1, 3, 4, 5, 16, 17, 150])
def test_blocked_cumulative_sum_equals_cumsum(n, reverse):
    from jax_scg._src.loops import cumulative_sum

    x = jax.random.normal(jax.random.key(n), (n, 3))
    np.testing.assert_allclose(
        cumulative_sum(x, reverse), lax.cumsum(x, axis=0, reverse=reverse), rtol=1e-5, atol=1e-5
    )
