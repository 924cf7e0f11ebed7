"""Plain ``jax.random`` draws of differentiated parameters: warned, naming the operation.

``jax.random.bernoulli(key, p)`` has derivative zero in ``p``; inside a jax_scg objective it
silently drops the draw's score term. These tests check that such draws get an
``UnscoredDrawWarning`` (under ``jit``, ``vmap``, loops, branches and second order) and that
the many legitimate uses of plain randomness (noise of fixed distribution, reparameterised
noise used continuously, stopped parameters, data that is not differentiated, draws the
objective does not depend on) get none.
"""

import warnings

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

K = jax.random.key(0)
sig = jax.nn.sigmoid


def caught_warnings(call):
    """Runs ``call``; returns the ``UnscoredDrawWarning``s it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, scg.UnscoredDrawWarning)]


def bernoulli_loss(theta, key):
    return 2.0 * jax.random.bernoulli(key, sig(theta)) + theta


def categorical_loss(theta, key):
    return jnp.float32(jax.random.categorical(key, jnp.stack([theta, -theta]))) ** 2


def reparameterised_step_loss(theta, key):
    x = theta + jax.random.normal(key)  # continuous in theta, but then a step
    return jnp.where(x > 0.0, 1.0, 0.0)


def choice_loss(theta, key):
    i = jax.random.choice(key, 3, p=jax.nn.softmax(jnp.stack([theta, 0.0, -theta])))
    return jnp.float32(i)


def scan_loss(theta, key):
    def step(total, k):
        return total + jax.random.bernoulli(k, sig(theta)), None

    total, _ = lax.scan(step, 0.0, jax.random.split(key, 3))
    return total


def cond_loss(theta, key):
    k1, k2 = jax.random.split(key)
    z = scg.sample(k1, D.Bernoulli(logits=theta))
    return lax.cond(z > 0, lambda: jnp.float32(jax.random.bernoulli(k2, sig(theta))), lambda: 0.0)


def feeds_a_site_loss(theta, key):
    k1, k2 = jax.random.split(key)
    u = jax.random.bernoulli(k1, sig(theta))
    return scg.sample(k2, D.Bernoulli(logits=theta * u))


def floor_loss(theta, key):
    return jnp.floor(theta + jax.random.uniform(key))


FLAGGED = {
    "bernoulli": (bernoulli_loss, "`lt`"),
    "categorical": (categorical_loss, "`argmax`"),
    "reparameterised then a step": (reparameterised_step_loss, "`gt`"),
    "choice with p": (choice_loss, ""),  # the operation differs between JAX versions
    "inside lax.scan": (scan_loss, "`lt`"),
    "inside lax.cond": (cond_loss, "`lt`"),
    "feeding a site's parameters": (feeds_a_site_loss, "`lt`"),
    "floor": (floor_loss, "`floor`"),
}


@pytest.mark.parametrize("name", list(FLAGGED))
@pytest.mark.parametrize("jit", [False, True])
def test_an_unscored_draw_is_warned(name, jit):
    loss, operation = FLAGGED[name]
    grad = scg.grad(loss)
    grad = jax.jit(grad) if jit else grad
    found = caught_warnings(lambda: grad(jnp.float32(0.3), K))
    assert len(found) == 1, name
    message = str(found[0].message)
    assert loss.__name__ in message and operation in message and "test_unscored.py:" in message
    assert "score term is missing" in message and "scg.sample" in message
    assert "stop_gradient" in message  # what to do when it is meant
    assert found[0].filename == __file__  # the warning points at the user's call


def test_the_warning_names_the_line_of_the_draw():
    (warning,) = caught_warnings(lambda: scg.grad(bernoulli_loss)(jnp.float32(0.3), K))
    line = bernoulli_loss.__code__.co_firstlineno + 1
    assert f"test_unscored.py:{line}" in str(warning.message)


def test_warned_under_vmap_and_at_second_order():
    keys = jax.random.split(jax.random.key(1), 4)
    batched = jax.vmap(scg.grad(bernoulli_loss), in_axes=(None, 0))
    assert len(caught_warnings(lambda: batched(jnp.float32(0.3), keys))) == 1
    hessian = jax.hessian(scg.surrogate(bernoulli_loss))
    assert len(caught_warnings(lambda: hessian(jnp.float32(0.3), K))) >= 1
    forward = jax.jacfwd(scg.grad(bernoulli_loss))
    assert len(caught_warnings(lambda: forward(jnp.float32(0.3), K))) >= 1


def dropout_loss(theta, key):
    keep = jax.random.bernoulli(key, 0.9, (4,))  # a fixed rate: nothing to score
    return jnp.sum(jnp.where(keep, theta, 0.0) ** 2)


def stopped_loss(theta, key):
    # straight-through, on purpose: the parameters stopped in the draw
    p = sig(theta)
    z = jax.random.bernoulli(key, lax.stop_gradient(p)).astype(jnp.float32)
    return (z + p - lax.stop_gradient(p)) ** 2


def reparameterised_loss(theta, key):
    x = theta + jax.random.normal(key, (3,))
    leaky = jnp.where(x > 0, x, 0.1 * x)  # picks among values continuous in x
    return jnp.sum(leaky) + x[jnp.argmax(x)] + jnp.sum(jax.nn.relu(x))


def site_loss(theta, key):
    k1, k2 = jax.random.split(key)
    z = scg.sample(k1, D.Bernoulli(logits=theta))
    noise = jax.random.uniform(k2)  # independent of theta
    return z * theta + jnp.where(noise < 0.5, 1.0, -1.0) * z


def data_loss(theta, key, grey):
    k1, k2 = jax.random.split(key)
    pixels = jax.random.bernoulli(k1, grey).astype(jnp.float32)  # dynamic binarisation
    z = scg.sample(k2, D.Bernoulli(logits=theta))
    return jnp.sum((pixels - sig(theta) * z) ** 2)


def environment_noise_loss(theta, key):
    k1, k2 = jax.random.split(key)
    action = scg.sample(k1, D.Normal(theta, 1.0))  # a reparameterised site
    position = action + 0.1 * jax.random.normal(k2)  # noise of a fixed distribution
    return jnp.where(position > 0.0, 1.0, 0.0) + action**2  # the site's jump: its score


def aux_loss(theta, key):
    k1, k2 = jax.random.split(key)
    z = scg.sample(k1, D.Bernoulli(logits=theta))
    greedy = jax.random.bernoulli(k2, sig(theta))  # a statistic, not the objective
    return z * theta, greedy


def test_plain_randomness_that_needs_no_score_is_not_warned():
    theta = jnp.float32(0.3)
    calls = {
        "dropout": lambda: scg.grad(dropout_loss)(jnp.ones(4), K),
        "stopped": lambda: scg.grad(stopped_loss)(theta, K),
        "reparameterised": lambda: scg.grad(reparameterised_loss)(theta, K),
        "independent noise": lambda: jax.jit(scg.grad(site_loss))(theta, K),
        "data": lambda: scg.grad(data_loss)(theta, K, jnp.full(5, 0.4)),
        "environment noise": lambda: scg.grad(environment_noise_loss)(theta, K),
        "aux": lambda: scg.grad(aux_loss, has_aux=True)(theta, K),
        "no derivative": lambda: scg.surrogate(bernoulli_loss)(theta, K),
    }
    for name, call in calls.items():
        assert caught_warnings(call) == [], name


def test_the_warning_can_be_silenced_by_class():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=scg.UnscoredDrawWarning)
        scg.grad(bernoulli_loss)(jnp.float32(0.3), K)


def test_noise_after_a_reparameterised_site_is_unbiased_without_a_warning():
    """Fixed noise added to a pathwise site's value, then a step: the site's score covers the
    jump (``discontinuities.py``). E = Φ(θ / √1.01) + θ² + 1."""
    from helpers import assert_mean_close, mc

    theta = jnp.float32(0.3)
    estimates = mc(scg.grad(environment_noise_loss), theta, seed=31710, n=40_000)
    exact = jax.grad(lambda t: jax.scipy.stats.norm.cdf(t / jnp.sqrt(1.01)) + t**2)(theta)
    assert_mean_close(estimates, exact)


def test_the_suggested_fix_is_unbiased():
    """The same loss with the draw as a site: mean of the estimates = d/dθ (2σ(θ) + θ)."""
    from helpers import assert_mean_close, mc

    def fixed(theta, key):
        return 2.0 * scg.sample(key, D.Bernoulli(probs=sig(theta))) + theta

    theta = jnp.float32(0.3)
    estimates = mc(scg.grad(fixed), theta, seed=31700, n=20_000)
    exact = jax.grad(lambda t: 2.0 * sig(t) + t)(theta)
    assert_mean_close(estimates, exact)
    assert caught_warnings(lambda: scg.grad(fixed)(theta, K)) == []
