"""Bad input gets a clear error that names the site and says what to do."""

import jax
import jax.numpy as jnp
import pytest
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

KEY = jax.random.key(0)
HERE = r"test_errors\.py:\d+"


def bernoulli_loss(theta, key):
    x = scg.sample(key, D.Bernoulli(logits=theta))
    return (x - 0.3) ** 2


def test_non_scalar_objective():
    fn = lambda theta, key: scg.sample(key, D.Normal(theta, 1.0)) * jnp.ones(3)
    with pytest.raises(TypeError, match=r"(?s)must return a scalar float.*float32\[3\].*\.sum\(\)"):
        scg.grad(fn)(0.5, KEY)


def test_integer_objective():
    fn = lambda theta, key: scg.sample(key, D.Categorical(logits=jnp.zeros(3) + theta))
    with pytest.raises(TypeError, match="scalar float"):
        scg.surrogate(fn)(0.5, KEY)


def test_has_aux_needs_a_pair():
    with pytest.raises(TypeError, match=r"(?s)has_aux=True.*pair"):
        scg.grad(bernoulli_loss, has_aux=True)(0.5, KEY)


def test_vmap_with_unbatched_key_and_batched_parameters():
    def fn(theta, key):
        xs = jax.vmap(lambda logit: scg.sample(key, D.Bernoulli(logits=logit)))(theta)
        return xs.sum()

    with pytest.raises(
        scg.SiteError, match=rf"(?s)Bernoulli at {HERE}.*unbatched key.*split the key"
    ):
        scg.grad(fn)(jnp.zeros(3), KEY)
    with pytest.raises(scg.SiteError, match="unbatched key"):
        fn(jnp.zeros(3), KEY)  # refused outside the transforms too


def test_dist_that_is_not_a_distribution():
    with pytest.raises(TypeError, match=rf"(?s)tuple at {HERE}.*must be a distribution.*log_prob"):
        scg.sample(KEY, (0.0, 1.0))


def test_pathwise_on_a_discrete_distribution():
    with pytest.raises(scg.SiteError, match=rf"(?s)Bernoulli at {HERE}.*not reparameterised"):
        scg.sample(KEY, D.Bernoulli(logits=0.0), estimator="pathwise")


def test_pathwise_on_a_reparameterised_distribution_with_integer_values():
    class IntegerNormal(D.Normal):
        is_reparameterized = True

        def sample(self, key):
            return jnp.round(super().sample(key)).astype(jnp.int32)

    with pytest.raises(scg.SiteError, match="needs a continuous value.*int32"):
        scg.sample(KEY, IntegerNormal(0.0, 1.0), estimator="pathwise", name="rounded")


def test_unknown_estimator_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"(?s)unknown estimator 'reinforce'.*'score_function'"):
        scg.sample(KEY, D.Normal(0.0, 1.0), estimator="reinforce")


@pytest.mark.parametrize(
    "bad_key", [1.5, jnp.zeros(3), jnp.zeros(2, jnp.float32), jax.random.split(KEY, 2)]
)
def test_key_that_is_not_a_key(bad_key):
    with pytest.raises(TypeError, match=rf"(?s)Normal at {HERE}.*(PRNG key|one key)"):
        scg.sample(bad_key, D.Normal(0.0, 1.0))


def test_plain_jax_grad_through_a_score_function_site():
    with pytest.raises(scg.SiteError, match=rf"(?s)Bernoulli at {HERE}.*wrong.*scg\.grad"):
        jax.grad(bernoulli_loss)(0.5, KEY)


def test_plain_jax_grad_through_a_pathwise_site_is_fine():
    g = jax.grad(lambda mu, key: scg.sample(key, D.Normal(mu, 1.0)))(0.5, KEY)
    assert float(g) == 1.0


def test_reverse_mode_through_a_site_in_while_loop():
    def fn(theta, key):
        def body(c):
            i, total = c
            x = scg.sample(jax.random.fold_in(key, i), D.Bernoulli(logits=theta), name="step")
            return i + 1, total + x

        return lax.while_loop(lambda c: c[0] < 3, body, (0, 0.0))[1]

    with pytest.raises(scg.SiteError, match=r"(?s)'step'.*while_loop.*(fori_loop|scan)"):
        scg.grad(fn)(0.5, KEY)
    jax.jvp(scg.surrogate(fn), (0.5, KEY), (1.0, jnp.zeros((), jax.dtypes.float0)))


def test_site_inside_custom_jvp_function():
    @jax.custom_jvp
    def noisy(theta, key):
        return scg.sample(key, D.Bernoulli(logits=theta), name="inner")

    noisy.defjvp(lambda p, t: (noisy(*p), t[0]))
    with pytest.raises(scg.SiteError, match=r"(?s)'inner'.*inside `custom_jvp_call`.*outside"):
        scg.grad(lambda th, k: noisy(th, k) ** 2)(0.5, KEY)


def test_site_inside_custom_vjp_function():
    @jax.custom_vjp
    def noisy(theta, key):
        return scg.sample(key, D.Bernoulli(logits=theta))

    noisy.defvjp(lambda th, k: (noisy(th, k), None), lambda r, g: (g, None))
    with pytest.raises(scg.SiteError, match=rf"(?s)Bernoulli at {HERE}.*inside `custom_vjp"):
        scg.grad(lambda th, k: noisy(th, k) ** 2)(0.5, KEY)


def test_the_same_name_twice():
    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        x = scg.sample(k1, D.Bernoulli(logits=theta), name="x")
        y = scg.sample(k2, D.Bernoulli(logits=theta), name="x")
        return x + y

    with pytest.raises(scg.SiteError, match=r"(?s)'x'.*two sample calls.*own name"):
        scg.grad(fn)(0.5, KEY)


def test_named_site_in_a_jitted_function_called_twice():
    site = jax.jit(lambda k, logit: scg.sample(k, D.Bernoulli(logits=logit), name="coin"))

    def fn(theta, key):
        k1, k2 = jax.random.split(key)
        return site(k1, theta) + site(k2, theta)

    with pytest.raises(scg.SiteError, match="'coin'.*called twice"):
        scg.grad(fn)(0.5, KEY)


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match="name= must be a string"):
        scg.sample(KEY, D.Normal(0.0, 1.0), name=3)


def test_site_in_while_cond_fun():
    def fn(theta, key):
        cond = lambda c: scg.sample(key, D.Bernoulli(logits=theta + c)) > 0.5
        return lax.while_loop(cond, lambda c: c + 1.0, 0.0)

    with pytest.raises(scg.SiteError, match="cond_fun"):
        scg.grad(fn)(0.5, KEY)


def _validated(fn):
    from jax.experimental import checkify

    return jax.jit(checkify.checkify(scg.grad(fn, validate=True)))


def test_runtime_validation_reports_invalid_parameters_under_jit():
    fn = lambda scale, key: scg.sample(key, D.Normal(0.0, scale), name="noise") ** 2
    err, _ = _validated(fn)(-1.0, KEY)
    assert "'noise'" in err.get() and "scale must be > 0" in err.get()
    err, g = _validated(fn)(2.0, KEY)
    assert err.get() is None and jnp.isfinite(g)


def test_runtime_validation_reports_bad_probs_and_nan():
    fn = lambda p, key: scg.sample(key, D.Bernoulli(probs=p)) * p
    err, _ = _validated(fn)(1.5, KEY)
    assert "probs must be in [0, 1]" in err.get() and "Bernoulli at test_errors.py" in err.get()
    fn2 = lambda logit, key: scg.sample(key, D.Bernoulli(logits=logit)) * logit
    err, _ = _validated(fn2)(jnp.nan, KEY)
    assert "logits must not be NaN" in err.get()


def test_runtime_validation_inside_scan_and_masked_categories_pass():
    def fn(theta, key):
        logits = jnp.array([0.0, -jnp.inf, 1.0]) + theta

        def body(c, k):
            i = scg.sample(k, D.Categorical(logits=logits))
            return c + i.astype(theta.dtype) * theta, None

        return lax.scan(body, 0.0, jax.random.split(key, 4))[0]

    err, g = _validated(fn)(jnp.asarray(0.3), KEY)
    assert err.get() is None and jnp.isfinite(g)


def test_validation_is_off_by_default():
    fn = lambda scale, key: scg.sample(key, D.Normal(0.0, scale)) ** 2
    assert not jnp.isfinite(scg.grad(fn)(jnp.nan, KEY))


def test_grad_of_grad_through_implicit_gamma_gradients_explains_and_suggests_hessian():
    fn = lambda a, key: scg.sample(key, D.Gamma(a, 1.0), name="g") ** 2
    with pytest.raises(scg.SiteError, match=r"(?s)'g'.*implicit.*jax\.hessian"):
        jax.grad(scg.grad(fn))(2.0, KEY)
    assert jnp.isfinite(jax.hessian(scg.surrogate(fn))(2.0, KEY))
    assert jnp.isfinite(jax.jacfwd(scg.grad(fn))(2.0, KEY))


def _branchy(theta, key):
    kx, ky = jax.random.split(key)
    x = scg.sample(kx, D.Bernoulli(logits=theta), name="x")
    if x > 0:  # Python control flow on a sample: the line the message must name
        return theta**2
    return scg.sample(ky, D.Normal(theta, 1.0), name="y")


@pytest.mark.parametrize(
    "transform",
    [
        lambda f: scg.grad(f),
        lambda f: scg.value_and_grad(f),
        lambda f: scg.surrogate(f),
        lambda f: jax.jit(scg.grad(f)),
        lambda f: scg.graph(f),
    ],
)
def test_python_control_flow_on_a_sample_names_the_site_and_the_line(transform):
    with pytest.raises(TypeError) as info:
        transform(_branchy)(0.3, jax.random.key(0))
    message = str(info.value)
    assert "site 'x' was drawn before it" in message.lower()
    assert "test_errors.py" in message and "if x > 0" in message
    assert "trace _branchy" in message and "jnp.where" in message and "lax.cond" in message
    assert isinstance(info.value.__cause__, jax.errors.TracerBoolConversionError)


def test_int_of_a_traced_argument_says_the_function_is_traced():
    def loss(theta, key):
        n = int(theta)  # not a sample: no site to name, the line and the reason still
        return scg.sample(key, D.Bernoulli(logits=theta), name="x") * n

    with pytest.raises(TypeError, match=r"(?s)int\(theta\).*trace loss.*lax.cond") as info:
        scg.grad(loss)(0.3, jax.random.key(0))
    assert "drawn before" not in str(info.value)


def _fft_credit(theta, key):
    z = scg.sample(key, D.Bernoulli(logits=theta))
    return jnp.sum(jnp.fft.fft(z).real)  # no per-element rule: whole-site credit


def _pathwise_round(theta, key):
    return jnp.round(scg.sample(key, D.Normal(theta, 1.0), estimator="pathwise"))


def _shared_key(theta, key):
    return scg.sample(key, D.Bernoulli(logits=theta)) + jax.random.normal(key)


@pytest.mark.parametrize(
    "fn, theta", [(_fft_credit, jnp.zeros(4)), (_pathwise_round, 0.3), (_shared_key, 0.3)]
)
def test_every_warning_points_at_the_users_call(fn, theta):
    """Warnings name the line that called jax_scg, not a frame inside jax_scg or JAX."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scg.grad(fn)(theta, KEY)
    assert [w.category for w in caught] == [scg.FallbackWarning]
    assert caught[0].filename == __file__
