"""Two sites drawing from one key are dependent: refused, with both sites named.

The exact gradient of a program whose two sites share a key is not what an estimator that
treats them as independent returns (the test checks the size of that bias against the exact
answer, so the refusal is not overcautious); splitting the key fixes it.
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

THETA = jnp.array([0.3, -0.5])


def shared(theta, key):
    x = scg.sample(key, D.Bernoulli(logits=theta[0]), name="x")
    y = scg.sample(key, D.Bernoulli(logits=theta[1]), name="y")
    return (x - y) ** 2 + x


def split(theta, key):
    k1, k2 = jax.random.split(key)
    x = scg.sample(k1, D.Bernoulli(logits=theta[0]), name="x")
    y = scg.sample(k2, D.Bernoulli(logits=theta[1]), name="y")
    return (x - y) ** 2 + x


def test_two_sites_on_one_key_are_refused_naming_both():
    with pytest.raises(scg.SiteError, match=r"(?s)site 'x'.*same key as site 'y'.*split the key"):
        scg.grad(shared)(THETA, jax.random.key(0))
    with pytest.raises(scg.SiteError, match="same key"):
        jax.jit(scg.surrogate(shared))(THETA, jax.random.key(0))


def test_the_refused_program_would_have_been_biased():
    # The two uniforms are equal, so y = [u < p1] and x = [u < p0] are dependent: the
    # exact expectation differs from the independent one that an estimator assumes.
    p0, p1 = jax.nn.sigmoid(THETA)
    lo, hi = jnp.minimum(p0, p1), jnp.maximum(p0, p1)
    dependent = (hi - lo) + p0  # E[(x - y)^2] = P(x != y) = |p0 - p1| with shared uniforms
    independent = p0 * (1 - p1) + p1 * (1 - p0) + p0
    assert abs(float(dependent - independent)) > 0.1
    estimates = jax.jit(jax.vmap(split, (None, 0)))(THETA, keys(1200, 20_000))
    assert_mean_close(estimates, independent, what="value with split keys")


def test_a_split_key_is_accepted_and_unbiased():
    def exact(theta):
        p0, p1 = jax.nn.sigmoid(theta)
        return p0 * (1 - p1) + p1 * (1 - p0) + p0

    grads = jax.jit(jax.vmap(scg.grad(split), (None, 0)))(THETA, keys(1201, 20_000))
    assert_mean_close(grads, jax.grad(exact)(THETA))


def test_the_same_element_of_a_key_array_taken_twice_is_one_key():
    def twice(theta, key):
        ks = jax.random.split(key, 2)
        x = scg.sample(ks[0], D.Bernoulli(logits=theta[0]))
        y = scg.sample(ks[0], D.Bernoulli(logits=theta[1]))
        return x + y

    def distinct(theta, key):
        ks = jax.random.split(key, 2)
        return scg.sample(ks[0], D.Bernoulli(logits=theta[0])) + scg.sample(
            ks[1], D.Bernoulli(logits=theta[1])
        )

    with pytest.raises(scg.SiteError, match="same key"):
        scg.grad(twice)(THETA, jax.random.key(0))
    scg.grad(distinct)(THETA, jax.random.key(0))


def test_a_loop_invariant_key_inside_scan_is_refused():
    def rollout(theta, key):
        def body(s, _):
            a = scg.sample(key, D.Bernoulli(logits=theta[0] + theta[1] * s), name="action")
            return 0.5 * s + a, a

        return lax.scan(body, 0.0, None, length=4)[1].sum()

    with pytest.raises(scg.SiteError, match=r"(?s)site 'action'.*same at every iteration"):
        scg.grad(rollout)(THETA, jax.random.key(0))

    def fori(theta, key):
        def body(i, total):
            return total + scg.sample(key, D.Bernoulli(logits=theta[0]))

        return lax.fori_loop(0, 3, body, 0.0)

    with pytest.raises(scg.SiteError, match="same at every iteration"):
        scg.grad(fori)(THETA, jax.random.key(0))


def test_per_iteration_keys_in_loops_are_accepted():
    def scanned(theta, key):
        def body(s, k):
            a = scg.sample(k, D.Bernoulli(logits=theta[0] + theta[1] * s))
            return 0.5 * s + a, a

        return lax.scan(body, 0.0, jax.random.split(key, 4))[1].sum()

    def folded(theta, key):
        def body(i, total):
            k = jax.random.fold_in(key, i)
            return total + scg.sample(k, D.Bernoulli(logits=theta[0]))

        return lax.fori_loop(0, 3, body, 0.0)

    def carried(theta, key):
        def body(carry, _):
            k, total = carry
            k, sub = jax.random.split(k)
            return (k, total + scg.sample(sub, D.Bernoulli(logits=theta[0]))), None

        return lax.scan(body, (key, 0.0), None, length=3)[0][1]

    for fn in (scanned, folded, carried):
        scg.grad(fn)(THETA, jax.random.key(0))
    # a single iteration draws once
    one = lambda theta, key: lax.scan(  # noqa: E731
        lambda c, _: (c + scg.sample(key, D.Bernoulli(logits=theta[0])), None), 0.0, None, 1
    )[0]
    scg.grad(one)(THETA, jax.random.key(0))


def test_exclusive_branches_may_share_a_key():
    def branched(theta, key):
        k1, k2 = jax.random.split(key)
        c = scg.sample(k1, D.Bernoulli(logits=theta[0]))
        return lax.cond(
            c > 0.5,
            lambda: scg.sample(k2, D.Bernoulli(logits=theta[1])),
            lambda: 2.0 * scg.sample(k2, D.Bernoulli(logits=-theta[1])),
        )

    def exact(theta):
        p0, p1 = jax.nn.sigmoid(theta)
        return p0 * p1 + (1 - p0) * 2 * jax.nn.sigmoid(-theta[1])

    grads = jax.jit(jax.vmap(scg.grad(branched), (None, 0)))(THETA, keys(1202, 20_000))
    assert_mean_close(grads, jax.grad(exact)(THETA))


def test_a_key_feeding_a_site_and_a_plain_random_call_warns():
    def correlated(theta, key):
        x = scg.sample(key, D.Bernoulli(logits=theta[0]), name="x")
        noise = jax.random.normal(key)
        return x * noise

    with pytest.warns(scg.FallbackWarning, match=r"(?s)site 'x'.*plain jax.random call"):
        scg.grad(correlated)(THETA, jax.random.key(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scg.grad(split)(THETA, jax.random.key(0))


def test_one_key_feeding_one_vectorised_site_stays_accepted():
    def vector(theta, key):
        z = scg.sample(key, D.Bernoulli(logits=theta * jnp.ones((3, 2))))
        return jnp.sum(z)

    np.testing.assert_equal(np.shape(scg.grad(vector)(THETA, jax.random.key(0))), (2,))


def test_splits_of_one_key_into_different_counts_collide():
    # split(k, 2)[i] and split(k, 4)[i] are the same key (JAX's default threefry), as are
    # split(k, (2, 3))[1, 0] and split(k, 6)[3]; other rows are distinct keys.
    def first_rows(theta, key):
        x = scg.sample(jax.random.split(key, 2)[1], D.Bernoulli(logits=theta[0]), name="x")
        y = scg.sample(jax.random.split(key, 4)[1], D.Bernoulli(logits=theta[1]), name="y")
        return x * y

    def grid(theta, key):
        x = scg.sample(jax.random.split(key, (2, 3))[1, 0], D.Bernoulli(logits=theta[0]), name="x")
        y = scg.sample(jax.random.split(key, 6)[3], D.Bernoulli(logits=theta[1]), name="y")
        return x * y

    def vector_overlap(theta, key):
        draw = lambda k: scg.sample(k, D.Bernoulli(logits=theta[0]), name="x")  # noqa: E731
        x = jax.vmap(draw)(jax.random.split(key, 4)[:3])  # one site, three keys
        y = scg.sample(jax.random.split(key, 8)[2], D.Bernoulli(logits=theta[1]), name="y")
        return x.sum() * y

    def distinct_rows(theta, key):
        ks = jax.random.split(key, 4)
        x = jax.vmap(lambda k: scg.sample(k, D.Bernoulli(logits=theta[0]), name="x"))(ks[:2])
        y = scg.sample(jax.random.split(key, 3)[2], D.Bernoulli(logits=theta[1]), name="y")
        return x.sum() * y

    def folded_twice(theta, key):
        x = scg.sample(jax.random.fold_in(key, 3), D.Bernoulli(logits=theta[0]), name="x")
        y = scg.sample(jax.random.fold_in(key, 3), D.Bernoulli(logits=theta[1]), name="y")
        return x * y

    for fn in (first_rows, grid, vector_overlap, folded_twice):
        with pytest.raises(scg.SiteError, match=r"(?s)site 'x'.*same key as site 'y'"):
            scg.grad(fn)(THETA, jax.random.key(0))
    for row in (0, 1):
        assert np.array_equal(
            jax.random.key_data(jax.random.split(jax.random.key(row), 2)[1]),
            jax.random.key_data(jax.random.split(jax.random.key(row), 4)[1]),
        )

    def exact(theta):
        p0, p1 = jax.nn.sigmoid(theta)
        return 2 * p0 * p1

    grads = jax.jit(jax.vmap(scg.grad(distinct_rows), (None, 0)))(THETA, keys(1203, 20_000))
    assert_mean_close(grads, jax.grad(exact)(THETA))


def test_two_loops_over_the_same_keys_collide():
    def twice(theta, key):
        ks = jax.random.split(key, 3)

        def body(c, k):
            return c + scg.sample(k, D.Bernoulli(logits=theta[0]), name="a"), None

        def other(c, k):
            return c + scg.sample(k, D.Bernoulli(logits=theta[1]), name="b"), None

        return lax.scan(body, 0.0, ks)[0] * lax.scan(other, 0.0, ks)[0]

    with pytest.raises(scg.SiteError, match=r"(?s)site 'a'.*same key as site 'b'"):
        scg.grad(twice)(THETA, jax.random.key(0))

    def folded_with_constant(theta, key):
        def body(c, _):
            k = jax.random.fold_in(key, 7)
            return c + scg.sample(k, D.Bernoulli(logits=theta[0]), name="a"), None

        return lax.scan(body, 0.0, None, length=3)[0]

    with pytest.raises(scg.SiteError, match=r"(?s)site 'a'.*same at every iteration"):
        scg.grad(folded_with_constant)(THETA, jax.random.key(0))


def test_fold_in_a_constant_is_a_row_of_split():
    # JAX's default threefry: fold_in(k, i) == split(k, n)[i] (found by tests/fuzz.py).
    k = jax.random.key(3)
    assert np.array_equal(
        jax.random.key_data(jax.random.fold_in(k, 1)),
        jax.random.key_data(jax.random.split(k, 3)[1]),
    )

    def folded_and_split(theta, key):
        x = scg.sample(jax.random.fold_in(key, 1), D.Bernoulli(logits=theta[0]), name="x")
        y = scg.sample(jax.random.split(key, 2)[1], D.Bernoulli(logits=theta[1]), name="y")
        return x * y

    with pytest.raises(scg.SiteError, match=r"(?s)site 'x'.*same key as site 'y'"):
        scg.grad(folded_and_split)(THETA, jax.random.key(0))

    def distinct(theta, key):
        x = scg.sample(jax.random.fold_in(key, 2), D.Bernoulli(logits=theta[0]), name="x")
        y = scg.sample(jax.random.split(key, 2)[1], D.Bernoulli(logits=theta[1]), name="y")
        return x * y

    scg.grad(distinct)(THETA, jax.random.key(0))


def _many_sites(theta, key, clash):
    ks = jax.random.split(key, 300)
    total = sum(scg.sample(ks[i], D.Bernoulli(logits=theta)) for i in range(300))
    if clash:
        total = total + scg.sample(ks[7], D.Bernoulli(logits=theta), name="again")
    return total


def test_many_sites_on_split_keys_are_checked_without_comparing_pairs(monkeypatch):
    """The shared-key check indexes the keys drawn (linear in the sites), where comparing
    every pair of sites would be quadratic; a clash late in the program is still found."""
    from jax_scg._src import keys as keys_module

    compared = []
    exclusive = keys_module._exclusive
    monkeypatch.setattr(
        keys_module, "_exclusive", lambda a, b: compared.append(1) or exclusive(a, b)
    )
    key = keys(1310, 1)[0]
    scg.grad(_many_sites)(0.3, key, clash=False)
    assert compared == []
    with pytest.raises(scg.SiteError, match=r"(?s)same key as site 'again'.*split the key"):
        scg.grad(_many_sites)(0.3, key, clash=True)
    assert compared == [1]
