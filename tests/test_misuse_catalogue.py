"""A catalogue of ways to misuse jax_scg, each with the clear error it must give.

Every entry calls the API wrongly and asserts the exception type and a message that names the
site (``Bernoulli at test_misuse_catalogue.py:<line>`` or its ``name=``) where there is one and
says what to do. More detailed tests of some entries live in ``test_errors.py`` and beside
each feature; the numerically hard but valid cases (logits exactly 0 or ±50, masked ``-inf``
logits, large Poisson rates) are in ``test_numerics.py``.
"""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

K = jax.random.key(0)
HERE = r"Bernoulli at test_misuse_catalogue\.py:\d+"
FIX = r"What to do"


def bern(theta, key, **kw):
    return scg.sample(key, D.Bernoulli(logits=theta), **kw)


def named(theta, key):
    return bern(theta, key, name="x") * 1.0


def scan_of(site_fn):
    def fn(theta, key):
        body = lambda c, k: (c + site_fn(theta, k), None)  # noqa: E731
        return lax.scan(body, 0.0, jax.random.split(key, 2))[0]

    return fn


def custom_jvp_sampler(theta, key):
    @jax.custom_jvp
    def inner(t):
        return bern(t, key)

    inner.defjvp(lambda p, t: (inner(*p), t[0]))
    return inner(theta)


def while_cond_sampler(theta, key):
    cond = lambda c: bern(theta, key) + c < 2.0  # noqa: E731
    return lax.while_loop(cond, lambda c: c + 1.0, 0.0)


def while_body_sampler(theta, key):
    def body(c):
        k, sub = jax.random.split(c[1])
        return c[0] + bern(theta, sub), k

    return lax.while_loop(lambda c: c[0] < 2.0, body, (0.0, key))[0]


def two_sites_one_key(theta, key):
    return bern(theta, key) + bern(-theta, key)


def loop_invariant_key(theta, key):
    body = lambda c, _: (c + bern(theta, key), None)  # noqa: E731
    return lax.scan(body, 0.0, None, length=3)[0]


def key_also_used_by_jax_random(theta, key):
    return bern(theta, key) * jax.random.normal(key)


def rounded_pathwise(mu, key):
    return jnp.round(scg.sample(key, D.Normal(mu, 1.0), estimator="pathwise"))


def gamma_site(a, key):
    return scg.sample(key, D.Gamma(a, 1.0)) ** 2


CATALOGUE = [
    # objectives and transforms
    (
        "non-scalar objective",
        lambda: scg.grad(lambda t, k: bern(t, k) * jnp.ones(3))(0.0, K),
        TypeError,
        r"scalar float.*\.sum\(\)",
    ),
    (
        "integer objective",
        lambda: scg.grad(lambda t, k: scg.sample(k, D.Categorical(logits=jnp.zeros(3) + t)))(
            0.0, K
        ),
        TypeError,
        "scalar float",
    ),
    (
        "tuple objective without has_aux",
        lambda: scg.grad(lambda t, k: (bern(t, k), 1.0))(0.0, K),
        TypeError,
        "has_aux=True",
    ),
    ("has_aux without a pair", lambda: scg.grad(named, has_aux=True)(0.0, K), TypeError, "pair"),
    (
        "vmap inside surrogate (non-scalar)",
        lambda: scg.grad(jax.vmap(named, (None, 0)))(0.0, jax.random.split(K, 3)),
        TypeError,
        "jax.vmap the transformed function",
    ),
    (
        "plain jax.grad through a score site",
        lambda: jax.grad(lambda t: bern(t, K))(0.0),
        scg.SiteError,
        rf"{HERE}.*scg.grad",
    ),
    (
        "integer parameters differentiated",
        lambda: scg.grad(named)(1, K),
        TypeError,
        "real- or complex-valued",
    ),
    # keys
    ("float array as key", lambda: bern(0.0, jnp.zeros(2)), TypeError, rf"{HERE}.*PRNG key"),
    (
        "batch of keys for one site",
        lambda: bern(0.0, jax.random.split(K, 2)),
        TypeError,
        rf"{HERE}.*one key",
    ),
    (
        "unbatched key under vmap",
        lambda: jax.vmap(lambda t: bern(t, K))(jnp.zeros(3)),
        scg.SiteError,
        rf"{HERE}.*split the key",
    ),
    # distributions and estimators
    ("not a distribution", lambda: scg.sample(K, (0.0, 1.0)), TypeError, "must be a distribution"),
    (
        "non-array distribution leaves",
        lambda: scg.sample(K, D.Normal("a", 1.0)),
        TypeError,
        "leaves must be arrays",
    ),
    (
        "parameters that do not broadcast",
        lambda: scg.sample(K, D.Normal(jnp.zeros(3), jnp.ones(2))),
        ValueError,
        "broadcast together",
    ),
    (
        "both logits and probs",
        lambda: D.Bernoulli(logits=0.0, probs=0.5),
        ValueError,
        "exactly one",
    ),
    (
        "unknown estimator",
        lambda: bern(0.0, K, estimator="reinforce"),
        ValueError,
        rf"{HERE}.*unknown estimator.*score_function",
    ),
    (
        "pathwise on a discrete site",
        lambda: bern(0.0, K, estimator="pathwise"),
        scg.SiteError,
        rf"{HERE}.*not reparameterised",
    ),
    (
        "relaxation of a Categorical",
        lambda: scg.sample(K, D.Categorical(logits=jnp.zeros(3)), estimator="gumbel_softmax"),
        scg.SiteError,
        "OneHotCategorical",
    ),
    (
        "relaxation temperature <= 0",
        lambda: scg.estimators.gumbel_softmax(0.0),
        ValueError,
        "temperature must be > 0",
    ),
    (
        "enumerate an infinite support",
        lambda: scg.sample(K, D.Normal(0.0, 1.0), estimator="enumerate"),
        scg.SiteError,
        "finite support",
    ),
    (
        "DisARM on a Normal",
        lambda: scg.sample(K, D.Normal(0.0, 1.0), estimator="disarm"),
        scg.SiteError,
        "needs a Bernoulli",
    ),
    (
        "branching site inside scan",
        lambda: scg.grad(scan_of(lambda t, k: bern(t, k, estimator="arm")))(0.0, K),
        scg.SiteError,
        rf"{HERE}.*outside loops",
    ),
    (
        "enumerated vector site whose elements mix",
        lambda: scg.grad(lambda t, k: jnp.sum(bern(t, k, estimator="enumerate")) ** 2)(
            jnp.zeros(2), K
        ),
        scg.SiteError,
        rf"{HERE}.*per-element",
    ),
    # baselines
    (
        "baseline of the wrong shape",
        lambda: bern(jnp.zeros(3), K, baseline=jnp.zeros(2)),
        ValueError,
        rf"{HERE}.*shape \(2,\)",
    ),
    (
        "baseline on a pathwise site",
        lambda: scg.grad(lambda t, k: scg.sample(k, D.Normal(t, 1.0), baseline=1.0))(0.0, K),
        scg.SiteError,
        "no score term",
    ),
    (
        "baseline on an antithetic site",
        lambda: bern(0.0, K, estimator="disarm", baseline=1.0),
        scg.SiteError,
        "no score term",
    ),
    (
        "baseline by name for an unknown site",
        lambda: scg.grad(named, baselines={"y": 1.0})(0.0, K),
        ValueError,
        r"\['y'\].*named sites: \['x'\]",
    ),
    (
        "baseline by name of the wrong shape",
        lambda: scg.grad(named, baselines={"x": jnp.ones(3)})(0.0, K),
        scg.SiteError,
        r"'x'.*shape \(3,\)",
    ),
    (
        "baseline both inline and by name",
        lambda: scg.grad(lambda t, k: bern(t, k, name="x", baseline=1.0), baselines={"x": 2.0})(
            0.0, K
        ),
        scg.SiteError,
        "both",
    ),
    (
        "leave-one-out with one sample",
        lambda: scg.baselines.leave_one_out(named, 1),
        ValueError,
        "num_samples >= 2",
    ),
    (
        "moving average decay out of range",
        lambda: scg.baselines.moving_average(1.5),
        ValueError,
        "decay",
    ),
    (
        "critic_argnums overlapping argnums",
        lambda: scg.grad(lambda t, p, k: bern(t, k, baseline=p), argnums=(0, 1), critic_argnums=1)(
            0.0, 0.0, K
        ),
        ValueError,
        "share",
    ),
    (
        "critic_argnums without a baseline",
        lambda: scg.grad(lambda t, p, k: bern(t, k) * p, critic_argnums=1)(0.0, 1.0, K),
        ValueError,
        "baseline= to fit",
    ),
    (
        "downstream costs without named sites",
        lambda: scg.downstream_costs(lambda t, k: bern(t, k) * 1.0)(0.0, K),
        ValueError,
        "name=...",
    ),
    # names and conditioning
    (
        "the same name twice",
        lambda: scg.grad(lambda t, k: bern(t, k, name="x") + bern(t, k, name="x"))(0.0, K),
        scg.SiteError,
        "'x'.*own name",
    ),
    ("a name that is not a string", lambda: bern(0.0, K, name=3), TypeError, "str"),
    (
        "conditioning an unknown name",
        lambda: scg.condition(named, {"y": 1.0})(0.0, K),
        ValueError,
        r"\['y'\]",
    ),
    (
        "conditioning with the wrong shape",
        lambda: scg.condition(named, {"x": jnp.zeros(2)})(0.0, K),
        ValueError,
        r"'x'.*shape \(2,\)",
    ),
    # control flow the rewrite cannot handle
    (
        "site inside custom_jvp",
        lambda: scg.grad(custom_jvp_sampler)(0.0, K),
        scg.SiteError,
        rf"{HERE}.*custom_jvp",
    ),
    (
        "site in a while_loop's cond_fun",
        lambda: scg.grad(while_cond_sampler)(0.0, K),
        scg.SiteError,
        rf"{HERE}.*cond_fun",
    ),
    (
        "reverse mode through a site in while_loop",
        lambda: scg.grad(while_body_sampler)(0.0, K),
        scg.SiteError,
        rf"{HERE}.*forward mode",
    ),
    (
        "grad of grad through Gamma's implicit gradient",
        lambda: jax.grad(scg.grad(gamma_site))(2.0, K),
        scg.SiteError,
        "jax.hessian",
    ),
    (
        "two sites drawing from one key",
        lambda: scg.grad(two_sites_one_key)(0.0, K),
        scg.SiteError,
        rf"{HERE}.*same key as site {HERE}.*split the key",
    ),
    (
        "a loop-invariant key inside scan",
        lambda: scg.grad(loop_invariant_key)(0.0, K),
        scg.SiteError,
        rf"{HERE}.*same at every iteration.*jax.random.split",
    ),
    (
        "a key feeding a site and jax.random (warning)",
        lambda: scg.grad(key_also_used_by_jax_random)(0.0, K),
        scg.FallbackWarning,
        rf"{HERE}.*plain jax.random call",
    ),
    (
        "explicit pathwise through round (warning)",
        lambda: scg.grad(rounded_pathwise)(0.0, K),
        scg.FallbackWarning,
        r"Normal at test_misuse_catalogue\.py:\d+.*`round`.*misses the jumps",
    ),
]


@pytest.mark.parametrize(
    ("what", "call", "error", "pattern"), CATALOGUE, ids=[entry[0] for entry in CATALOGUE]
)
def test_misuse_gives_a_clear_error(what, call, error, pattern):
    with pytest.raises(error, match=f"(?s){pattern}") as info:
        call()
    message = str(info.value)
    if "jax_scg" in message:  # our own errors also say what to do
        assert FIX in message or "must" in message or "needs" in message, message


def test_the_catalogue_has_at_least_thirty_entries():
    assert len(CATALOGUE) >= 30
    assert len({entry[0] for entry in CATALOGUE}) == len(CATALOGUE)
