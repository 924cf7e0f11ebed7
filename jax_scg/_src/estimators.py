"""Estimators beyond score function and pathwise.

Each estimator is a small immutable value with the guarantee it gives (its ``guarantee``
attribute). The relaxations are *biased*: they trade bias for low variance, as many users want
(Jang et al. 2017; Maddison et al. 2017; Bengio et al. 2013). The branching estimators run the
downstream code once per branch value and weight the branches' costs.

| estimator            | sites                        | guarantee                         |
|----------------------|------------------------------|-----------------------------------|
| ``score_function``   | any                          | unbiased, every order             |
| ``pathwise``         | reparameterised, continuous  | unbiased, every order             |
| ``gumbel_softmax``   | Bernoulli, OneHotCategorical | biased: the costs see relaxed     |
|                      |                              | values, not samples               |
| ``straight_through`` | Bernoulli, OneHotCategorical | biased: exact samples forward,    |
|                      |                              | the relaxation's gradient back    |
| ``enumerate``        | finite support               | unbiased, every order; exact sum  |
| ``disarm``, ``arm``  | Bernoulli                    | unbiased, first order (antithetic)|
| ``measure_valued``   | Normal                       | unbiased, first order             |
| ``rebar``            | Bernoulli, OneHotCategorical | unbiased, first order; learnable  |
|                      |                              | control variate (η, λ)            |
| ``relax``            | Bernoulli, Categorical,      | unbiased, first order; learnable  |
|                      | OneHotCategorical; LAX for   | control variate c_φ (a function,  |
|                      | reparameterised continuous   | e.g. a small MLP, and its params) |
| ``unordered_set(k)`` | Categorical,                 | unbiased, first order; k distinct |
|                      | OneHotCategorical            | values (without replacement), a   |
|                      |                              | built-in baseline; exact sum when |
|                      |                              | k ≥ the number of categories      |
| ``indecater``        | Bernoulli, Categorical,      | unbiased, first order; D·n values |
|                      | OneHotCategorical (vectors   | (one coordinate changed each); the|
|                      | of D independent coordinates)| costs may mix the coordinates     |
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jax_scg._src import distributions as dists


@dataclasses.dataclass(frozen=True)
class Relaxation:
    """A relaxed (Gumbel-softmax / Concrete) estimator for a Bernoulli or one-hot site.

    Attributes:
      kind: ``"gumbel_softmax"`` (the costs see the relaxed value) or ``"straight_through"``
        (the costs see the exact sample; gradients flow through the relaxation).
      temperature: the relaxation's temperature τ > 0; lower is less biased, noisier.

    Examples:
      >>> Relaxation("gumbel_softmax", 0.5).guarantee
      'biased'
    """

    kind: str
    temperature: float = 1.0
    guarantee = "biased"

    def __post_init__(self):
        if self.kind not in ("gumbel_softmax", "straight_through"):
            raise ValueError(f"unknown relaxation {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"the temperature must be > 0, got {self.temperature}")

    def supports(self, dist) -> bool:
        return isinstance(dist, (dists.Bernoulli, dists.OneHotCategorical))

    def draw(self, dist, key):
        """Relaxed draw sharing its random bits with ``dist.sample(key)``."""
        if isinstance(dist, dists.Bernoulli):
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
            u = jax.random.uniform(key, dist.batch_shape, logits.dtype)
            shifted = logits - (jnp.log(u) - jnp.log1p(-u))  # logits minus logistic noise
            hard = (shifted > 0).astype(logits.dtype)
            relaxed = jax.nn.sigmoid(shifted / self.temperature)
        else:
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape + dist.event_shape)
            shifted = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
            hard = jax.nn.one_hot(jnp.argmax(shifted, -1), logits.shape[-1], dtype=logits.dtype)
            relaxed = jax.nn.softmax(shifted / self.temperature, axis=-1)
        if self.kind == "gumbel_softmax":
            return relaxed
        return hard + relaxed - jax.lax.stop_gradient(relaxed)


def gumbel_softmax(temperature: float = 1.0) -> Relaxation:
    """Gumbel-softmax / Concrete relaxation (biased): the costs see relaxed values.

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.gumbel_softmax(0.5).guarantee
      'biased'
    """
    return Relaxation("gumbel_softmax", temperature)


def straight_through(temperature: float = 1.0) -> Relaxation:
    """Straight-through Gumbel estimator (biased): exact samples forward, relaxed backward.

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.straight_through().kind
      'straight_through'
    """
    return Relaxation("straight_through", temperature)


NAMED = {"gumbel_softmax": gumbel_softmax(), "straight_through": straight_through()}


# --------------------------------------------------------------------------------------------
# Branching estimators: the code downstream of the site runs once per branch value (vectorised
# with vmap), and the branch's costs are multiplied by a weight. Over the branches, the
# weighted costs estimate E[cost] (their derivatives to the order the guarantee says).


@dataclasses.dataclass(frozen=True)
class Branching:
    """Base of the estimators that evaluate the downstream costs at several values of a site.

    A subclass defines ``kind``, ``guarantee`` (``"any order"`` or ``"first order"``),
    ``supports(dist)`` and ``branches(dist, key)``, which returns ``(values, weights)``: the
    ``K`` values the site takes (stacked on a leading axis, like ``dist.sample``'s output) and
    the weight of each branch, shaped like the site's elementwise log-probability. The sum
    over branches of ``weight * cost`` must have the expectation (and derivatives, to the
    guaranteed order) of the cost under the site's distribution. Downstream sites are drawn
    independently in each branch.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> values, weights = Enumerate().branches(D.Bernoulli(probs=0.25), jax.random.key(0))
      >>> values.tolist(), weights.tolist()
      ([0.0, 1.0], [0.75, 0.25])
    """

    centred_branches = ()  # per branch, whether its terms keep only their derivatives

    @property
    def name(self) -> str:
        return self.kind

    def skeleton(self):
        """This estimator without its array parameters (a hashable, static description)."""
        return self


@dataclasses.dataclass(frozen=True)
class Enumerate(Branching):
    """Exact sum over a finite support: branch ``k`` has value ``k`` and weight ``p(k)``.

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda t, k: scg.sample(k, D.Bernoulli(logits=t), estimator="enumerate") * 2.0
      >>> float(scg.surrogate(f)(0.0, jax.random.key(0)))  # E[2x] exactly
      1.0
    """

    kind = "enumerate"
    guarantee = "any order"

    def supports(self, dist) -> bool:
        return callable(getattr(dist, "enumerate_support", None))

    def branches(self, dist, key):
        del key
        values = dist.enumerate_support()
        weights = jnp.exp(jax.vmap(dist.log_prob)(values))
        return values, weights


def _centred(x):
    """``x - stop_gradient(x)``: zero in value, derivative that of ``x``."""
    return x - jax.lax.stop_gradient(x)


@dataclasses.dataclass(frozen=True)
class DisARM(Branching):
    """DisARM (Dong, Mnih & Tucker 2020) for Bernoulli sites: an antithetic pair ``b, b̃``.

    ``b = 1[u < σ(θ)]``, ``b̃ = 1[1 − u < σ(θ)]`` with one uniform ``u``; both are exact
    samples. The gradient in the logits ``θ`` is ``½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|θ|)``,
    and the value ``½ (f(b) + f(b̃))``. Unbiased at first order.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda t, k: scg.sample(k, D.Bernoulli(logits=t), estimator="disarm")
      >>> float(scg.grad(f)(0.0, jax.random.key(0)))  # at θ = 0 the pair always differs: exact
      0.25
    """

    kind = "disarm"
    guarantee = "first order"

    def supports(self, dist) -> bool:
        return isinstance(dist, dists.Bernoulli)

    def branches(self, dist, key):
        logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
        u = jax.random.uniform(key, dist.batch_shape, logits.dtype)
        p = jax.lax.stop_gradient(jax.nn.sigmoid(logits))
        b, b_tilde = (u < p).astype(logits.dtype), (1 - u < p).astype(logits.dtype)
        sign = 1.0 - 2.0 * b_tilde
        slope = jax.lax.stop_gradient(0.5 * sign * (b != b_tilde) * jax.nn.sigmoid(jnp.abs(logits)))
        lift = _centred(logits) * slope
        return jnp.stack([b, b_tilde]), jnp.stack([0.5 + lift, 0.5 - lift])


@dataclasses.dataclass(frozen=True)
class ARM(Branching):
    """ARM (Yin & Zhou 2019) for Bernoulli sites: ``(f(b₁) − f(b₂)) (u − ½)`` in the logits.

    ``b₁ = 1[u > σ(−θ)]`` is an exact sample (the estimate's value is ``f(b₁)``); ``b₂ =
    1[u < σ(−θ)]`` is its antithetic partner. Unbiased at first order.

    Examples:
      >>> ARM().guarantee
      'first order'
    """

    kind = "arm"
    guarantee = "first order"

    def supports(self, dist) -> bool:
        return isinstance(dist, dists.Bernoulli)

    def branches(self, dist, key):
        logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
        u = jax.random.uniform(key, dist.batch_shape, logits.dtype)
        threshold = jax.lax.stop_gradient(jax.nn.sigmoid(-logits))
        b1, b2 = (u > threshold).astype(logits.dtype), (u < threshold).astype(logits.dtype)
        lift = _centred(logits) * (u - 0.5)
        return jnp.stack([b1, b2]), jnp.stack([1.0 + lift, -lift])


@dataclasses.dataclass(frozen=True)
class MeasureValued(Branching):
    """Measure-valued derivatives for Normal sites (Mohamed et al. 2020, section 6).

    ``∂/∂μ E f(x) = E[f(μ + σW) − f(μ − σW)] / (σ√(2π))`` with ``W ~ Weibull(√2, 2)``, and
    ``∂/∂σ E f(x) = E[f(μ + σM) − f(x)] / σ`` with ``M`` double-sided Maxwell. Four branches:
    the sample ``x`` (the estimate's value is ``f(x)``), ``μ + σM``, ``μ ± σW``. The costs
    need not be differentiable in ``x``. Unbiased at first order.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> values, weights = MeasureValued().branches(D.Normal(0.0, 1.0), jax.random.key(0))
      >>> values.shape, weights.tolist()  # the value is f(x): the other weights are 0
      ((4,), [1.0, 0.0, 0.0, -0.0])
    """

    kind = "measure_valued"
    guarantee = "first order"

    def supports(self, dist) -> bool:
        return isinstance(dist, dists.Normal)

    def branches(self, dist, key):
        shape = dist.batch_shape
        loc = jnp.broadcast_to(dist.loc, shape).astype(dist._dtype)
        scale = jnp.broadcast_to(dist.scale, shape).astype(dist._dtype)
        k_x, k_w, k_m, k_sign = jax.random.split(key, 4)
        fixed_loc, fixed_scale = jax.lax.stop_gradient(loc), jax.lax.stop_gradient(scale)
        x = fixed_loc + fixed_scale * jax.random.normal(k_x, shape, loc.dtype)
        weibull = jnp.sqrt(-2.0 * jnp.log1p(-jax.random.uniform(k_w, shape, loc.dtype)))
        chi3 = jnp.sqrt(jnp.sum(jax.random.normal(k_m, (3, *shape), loc.dtype) ** 2, axis=0))
        maxwell = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), chi3, -chi3)
        values = jnp.stack(
            [
                x,
                fixed_loc + fixed_scale * maxwell,
                fixed_loc + fixed_scale * weibull,
                fixed_loc - fixed_scale * weibull,
            ]
        )
        d_scale = _centred(scale) / fixed_scale
        d_loc = _centred(loc) / (fixed_scale * math.sqrt(2 * math.pi))
        return values, jnp.stack([1.0 - d_scale, d_scale, d_loc, -d_loc])


def _open_uniform(key, shape, dtype):
    """Uniforms in the open interval (0, 1), so that logs and logits stay finite."""
    return jax.random.uniform(key, shape, dtype, minval=jnp.finfo(dtype).tiny, maxval=1.0)


def _gumbel_given_argmax(logits, index, v):
    """``logits + Gumbel noise`` conditioned on its argmax being ``index``, reparameterised.

    The maximum of independent Gumbels located at ``logits`` is a Gumbel located at
    ``logsumexp(logits)``, independent of where it is; given the maximum ``M``, every other
    coordinate ``k`` is a Gumbel located at ``logits[k]`` truncated below ``M``, drawn by
    inverting its distribution function: ``−log(e^{−M} − log(v_k) e^{−logits[k]})`` (Tucker
    et al. 2017, appendix; Grathwohl et al. 2018). ``v`` holds uniforms in (0, 1) shaped like
    ``logits``; ``index`` one category per batch element.
    """
    at = jax.nn.one_hot(index, logits.shape[-1], dtype=bool)
    exponential = -jnp.log(v)
    top = jax.nn.logsumexp(logits, axis=-1, keepdims=True) - jnp.log(
        jnp.sum(jnp.where(at, exponential, 0.0), axis=-1, keepdims=True)
    )
    others = -jnp.logaddexp(-top, jnp.log(exponential) - logits)
    return jnp.where(at, top, others)


def gumbel_given_argmax(key, logits, index):
    """A draw of ``logits + Gumbel noise`` conditioned on its argmax being ``index``.

    What RELAX and categorical REBAR use for ``z̃ ~ p(z | b)``; reparameterised in ``logits``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> z = gumbel_given_argmax(jax.random.key(0), jnp.zeros(3), jnp.asarray(2))
      >>> int(jnp.argmax(z))
      2
    """
    logits = jnp.asarray(logits)
    return _gumbel_given_argmax(logits, index, _open_uniform(key, logits.shape, logits.dtype))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class REBAR(Branching):
    """REBAR (Tucker et al. 2017) for Bernoulli and OneHotCategorical sites.

    Bernoulli: with ``z = θ + logit(u)``, ``b = 1[z > 0]``, ``z̃`` drawn from ``z`` given
    ``b`` (reparameterised) and ``σ_λ(x) = sigmoid(x / λ)``, the gradient is
    ``[f(b) − η f(σ_λ(z̃))] ∇ log p(b) + η ∇f(σ_λ(z)) − η ∇f(σ_λ(z̃))``: unbiased at first
    order for any ``η`` and ``λ``, and its variance is lowest where its derivative in
    ``(η, λ)`` vanishes: learn them by descending ``jax.grad`` of the squared estimate (see
    the README). Three branches: ``b`` (the estimate's value is ``f(b)``), ``σ_λ(z)`` and
    ``σ_λ(z̃)``; the costs must accept relaxed values in ``(0, 1)``.

    OneHotCategorical: the same with ``z = logits + Gumbel noise``, ``b = onehot(argmax z)``,
    ``z̃`` the Gumbel vector given its argmax and ``σ_λ(x) = softmax(x / λ)``: the costs
    must accept points of the simplex. Integer ``Categorical`` sites are refused (their costs
    index with the value, so they cannot take a relaxed one): use OneHotCategorical, or
    ``relax``, whose control variate is a function of your own.

    Attributes:
      eta: the control variate's scale ``η`` (an array: it may be traced and differentiated).
      temperature: the relaxation's temperature ``λ > 0`` (an array, likewise).

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(t, eta, key):
      ...     return scg.sample(key, D.Bernoulli(logits=t), estimator=REBAR(eta, 0.5)) ** 2
      >>> jax.grad(lambda eta: scg.grad(f)(0.0, eta, jax.random.key(0)) ** 2)(1.0).shape
      ()
    """

    eta: Any = 1.0
    temperature: Any = 0.5
    kind = "rebar"
    guarantee = "first order"
    centred_branches = (False, True, True)

    def supports(self, dist) -> bool:
        return isinstance(dist, (dists.Bernoulli, dists.OneHotCategorical))

    def skeleton(self):
        return REBAR(None, None)

    def branches(self, dist, key):
        k_u, k_v = jax.random.split(key)
        if isinstance(dist, dists.OneHotCategorical):
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape + dist.event_shape)
            dtype = logits.dtype
            z = logits + jax.random.gumbel(k_u, logits.shape, dtype)
            index = jnp.argmax(z, axis=-1)
            b = jax.lax.stop_gradient(jax.nn.one_hot(index, logits.shape[-1], dtype=dtype))
            z_given_b = _gumbel_given_argmax(logits, index, _open_uniform(k_v, z.shape, dtype))
            relaxed = lambda x: jax.nn.softmax(x / temperature[..., None], axis=-1)  # noqa: E731
        else:
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
            dtype = logits.dtype
            u = jax.random.uniform(k_u, dist.batch_shape, dtype, minval=1e-6, maxval=1 - 1e-6)
            v = jax.random.uniform(k_v, dist.batch_shape, dtype, minval=1e-6, maxval=1 - 1e-6)
            p = jax.nn.sigmoid(logits)
            z = logits + jnp.log(u) - jnp.log1p(-u)
            b = jax.lax.stop_gradient((z > 0).astype(dtype))
            u_given_b = jnp.where(b > 0, (1 - p) + v * p, v * (1 - p))  # reparameterised in θ
            z_given_b = logits + jnp.log(u_given_b) - jnp.log1p(-u_given_b)
            relaxed = lambda x: jax.nn.sigmoid(x / temperature)  # noqa: E731
        log_prob = dist.log_prob(b)
        temperature = jnp.broadcast_to(jnp.asarray(self.temperature, dtype), log_prob.shape)
        eta = jnp.broadcast_to(jnp.asarray(self.eta, dtype), log_prob.shape)
        score = log_prob - jax.lax.stop_gradient(log_prob)
        values = jnp.stack([b, relaxed(z), relaxed(z_given_b)])
        weights = jnp.stack([jnp.exp(score), eta, -eta * (1.0 + score)])
        return values, weights


def rebar(eta=1.0, temperature=0.5) -> REBAR:
    """REBAR for Bernoulli and OneHotCategorical sites (unbiased, first order).

    ``η`` and ``λ`` may be traced arrays (learned by descending the squared estimate).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.rebar(eta=1.0, temperature=0.5).guarantee
      'first order'
    """
    return REBAR(eta, temperature)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RELAX:
    """RELAX and LAX (Grathwohl et al. 2018) with a control variate ``c_φ`` of your own.

    Discrete sites (Bernoulli, Categorical, OneHotCategorical): with ``z`` the site's noise
    on the logit scale, ``b = H(z)`` the sample and ``z̃ ~ p(z | b)`` (reparameterised), the
    gradient is ``[f(b) − c_φ(z̃)] ∇ log p(b) + ∇c_φ(z) − ∇c_φ(z̃)``. The costs run at
    ``b`` only, as with the score function (``c_φ`` is not the cost: the costs need accept
    nothing relaxed); the site's value is the sample ``dist.sample(key)``, and
    ``z`` shares its random bits. ``c_φ`` receives:

    * Bernoulli: ``z = logits − logit(u)`` (``u`` the uniform that drew ``b = 1[z > 0]``),
      shaped like the sample;
    * Categorical and OneHotCategorical: ``z = logits + Gumbel noise`` (``b = argmax z``, as
      ``jax.random.categorical`` draws it), shaped ``batch_shape + (K,)`` for both;
    * reparameterised continuous sites (LAX): the sample itself, ``z = b``, differentiated
      along its reparameterisation (``z̃ = b`` held fixed), so the gradient is
      ``[f(b) − c_φ(b)] ∇ log p(b) + ∇c_φ(b)``.

    Unbiased at first order for any ``c_φ`` and ``φ``; its variance is lowest where the
    derivative of ``E[ĝ²]`` in ``φ`` vanishes: learn ``φ`` by descending ``jax.grad`` of
    the squared estimate (see the README). The added terms are zero in value: the
    estimate's value is the loss on the sample. A ``baseline=`` acts on ``f(b)``'s score as
    for the score function. Sites outside ``lax.scan``/``cond``/``while_loop`` bodies only;
    ``scg.condition`` cannot plant their values.

    Attributes:
      control_variate: ``c(control_params, z, *site_parameters)``, a pure JAX function whose
        output is summed to a scalar. ``site_parameters``: the logits (broadcast like ``z``)
        for the discrete sites, the distribution's array leaves (e.g. ``loc, scale``)
        otherwise; gradients flow through them too.
      control_params: a pytree of float arrays ``φ`` (it may be traced and differentiated).

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def c(phi, z, logits):  # a learnable scale of a relaxed cost
      ...     return phi[0] * (jax.nn.sigmoid(z / phi[1]) - 0.45) ** 2
      >>> def loss(theta, phi, key):
      ...     estimator = scg.estimators.relax(c, phi)
      ...     return (scg.sample(key, D.Bernoulli(logits=theta), estimator=estimator) - 0.45) ** 2
      >>> squared = lambda phi, key: scg.grad(loss)(0.0, phi, key) ** 2
      >>> jax.grad(squared)(jnp.array([1.0, 0.5]), jax.random.key(0)).shape  # to descend
      (2,)
    """

    control_variate: Callable = dataclasses.field(metadata={"static": True})
    control_params: Any = None
    kind = "relax"
    guarantee = "first order"

    @property
    def name(self) -> str:
        return self.kind

    def supports(self, dist) -> bool:
        discrete = isinstance(dist, (dists.Bernoulli, dists.Categorical))
        return discrete or bool(getattr(dist, "is_reparameterized", False))

    def skeleton(self):
        """This estimator without its array parameters (a hashable, static description)."""
        return RELAX(self.control_variate, None)

    def control_term(self, dist, key):
        """The surrogate term that adds the control variate: zero in value.

        ``−c(z̃)·Σ(log p(b) − ⊥log p(b)) + (c(z) − ⊥c(z)) − (c(z̃) − ⊥c(z̃))`` with ``⊥``
        ``stop_gradient``: its derivative is ``−c(z̃) ∇ log p(b) + ∇c(z) − ∇c(z̃)``, which is
        added to the site's score-function surrogate; that derivative's own derivative in
        ``φ`` is kept (no ``⊥`` on the first ``c(z̃)``), for learning ``φ``.
        """
        stop = jax.lax.stop_gradient
        if isinstance(dist, dists.Categorical):  # OneHotCategorical too
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape + (dist.support_size,))
            z = logits + jax.random.gumbel(key, logits.shape, logits.dtype)
            index = stop(jnp.argmax(z, axis=-1))
            b = index
            if isinstance(dist, dists.OneHotCategorical):
                b = jax.nn.one_hot(index, logits.shape[-1], dtype=logits.dtype)
            v = _open_uniform(jax.random.fold_in(key, 1), logits.shape, logits.dtype)
            z_given_b, parameters = _gumbel_given_argmax(logits, index, v), (logits,)
        elif isinstance(dist, dists.Bernoulli):
            logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
            probs = jnp.broadcast_to(dist.probs, dist.batch_shape)
            u = jax.random.uniform(key, dist.batch_shape, probs.dtype)  # as jax.random.bernoulli
            b = stop((u < probs).astype(dist.sample(key).dtype))
            tiny = jnp.finfo(probs.dtype).tiny
            u = jnp.clip(u, tiny, 1 - jnp.finfo(probs.dtype).epsneg)
            v = _open_uniform(jax.random.fold_in(key, 1), dist.batch_shape, probs.dtype)
            u_given_b = jnp.where(b > 0, v * probs, probs + v * (1 - probs))
            logit = lambda x: jnp.log(x) - jnp.log1p(-x)  # noqa: E731
            z, z_given_b = logits - logit(u), logits - logit(u_given_b)
            parameters = (logits,)
        else:  # LAX: the sample is reparameterised; given b, z̃ = b does not move with θ
            z = dist.sample(key)
            b = z_given_b = stop(z)
            parameters = tuple(jax.tree_util.tree_leaves(dist))
        log_prob = jnp.sum(dist.log_prob(b))
        c = lambda x: jnp.sum(self.control_variate(self.control_params, x, *parameters))  # noqa: E731
        c_z, c_given_b = c(z), c(z_given_b)
        score = log_prob - stop(log_prob)  # zero, so c(z̃) needs no stop_gradient: it keeps
        return -c_given_b * score + _centred(c_z) - _centred(c_given_b)  # its φ-derivative


def relax(control_variate: Callable, control_params: Any = None) -> RELAX:
    """RELAX (LAX on continuous sites) with control variate ``control_variate`` (unbiased).

    Args:
      control_variate: ``c(control_params, z, *site_parameters)``: a pure function, e.g. a
        small MLP of the relaxed value ``z`` (see ``RELAX`` for what ``z`` is per site).
      control_params: its parameters ``φ``, a pytree of float arrays; pass them as an
        argument of the loss (they may be traced, jitted and differentiated).

    Returns:
      The estimator, for ``scg.sample(..., estimator=...)``.

    Examples:
      >>> import jax.numpy as jnp, jax_scg as scg
      >>> cv = lambda phi, z, logits: phi * jnp.tanh(z)
      >>> scg.estimators.relax(cv, jnp.ones(())).guarantee
      'first order'
    """
    return RELAX(control_variate, control_params)


def enumerate_support() -> Enumerate:
    """Exact enumeration of a finite support (any order; zero variance from the site itself).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.enumerate_support().guarantee
      'any order'
    """
    return Enumerate()


def disarm() -> DisARM:
    """DisARM antithetic estimator for Bernoulli sites (unbiased, first order).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.disarm().guarantee
      'first order'
    """
    return DisARM()


def arm() -> ARM:
    """ARM antithetic estimator for Bernoulli sites (unbiased, first order).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.arm().kind
      'arm'
    """
    return ARM()


def measure_valued() -> MeasureValued:
    """Measure-valued derivative for Normal sites (unbiased, first order).

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.measure_valued().kind
      'measure_valued'
    """
    return MeasureValued()


NAMED.update(
    {
        "enumerate": enumerate_support(),
        "disarm": disarm(),
        "arm": arm(),
        "measure_valued": measure_valued(),
        "rebar": rebar(),
    }
)
