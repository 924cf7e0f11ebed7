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
| ``rebar``            | Bernoulli                    | unbiased, first order; learnable  |
|                      |                              | control variate (η, λ)            |
"""

from __future__ import annotations

import dataclasses
import math
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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class REBAR(Branching):
    """REBAR (Tucker et al. 2017) for Bernoulli sites, with a learnable control variate.

    With ``z = θ + logit(u)``, ``b = 1[z > 0]``, ``z̃`` drawn from ``z`` given ``b``
    (reparameterised) and ``σ_λ(x) = sigmoid(x / λ)``, the gradient is
    ``[f(b) − η f(σ_λ(z̃))] ∇ log p(b) + η ∇f(σ_λ(z)) − η ∇f(σ_λ(z̃))``: unbiased at first
    order for any ``η`` and ``λ``, and its variance is lowest where its derivative in
    ``(η, λ)`` vanishes: learn them by descending ``jax.grad`` of the squared estimate (see
    the README). Three branches: ``b`` (the estimate's value is ``f(b)``), ``σ_λ(z)`` and
    ``σ_λ(z̃)``; the costs must accept relaxed values in ``(0, 1)``.

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
        return isinstance(dist, dists.Bernoulli)

    def skeleton(self):
        return REBAR(None, None)

    def branches(self, dist, key):
        logits = jnp.broadcast_to(dist.logits, dist.batch_shape)
        dtype = logits.dtype
        k_u, k_v = jax.random.split(key)
        u = jax.random.uniform(k_u, dist.batch_shape, dtype, minval=1e-6, maxval=1 - 1e-6)
        v = jax.random.uniform(k_v, dist.batch_shape, dtype, minval=1e-6, maxval=1 - 1e-6)
        p = jax.nn.sigmoid(logits)
        z = logits + jnp.log(u) - jnp.log1p(-u)
        b = jax.lax.stop_gradient((z > 0).astype(dtype))
        u_given_b = jnp.where(b > 0, (1 - p) + v * p, v * (1 - p))  # reparameterised in θ
        z_given_b = logits + jnp.log(u_given_b) - jnp.log1p(-u_given_b)
        temperature = jnp.asarray(self.temperature, dtype)
        eta = jnp.asarray(self.eta, dtype)
        log_prob = dist.log_prob(b)
        score = log_prob - jax.lax.stop_gradient(log_prob)
        values = jnp.stack(
            [b, jax.nn.sigmoid(z / temperature), jax.nn.sigmoid(z_given_b / temperature)]
        )
        weights = jnp.stack([jnp.exp(score), jnp.broadcast_to(eta, b.shape), -eta * (1.0 + score)])
        return values, weights


def rebar(eta=1.0, temperature=0.5) -> REBAR:
    """REBAR estimator for Bernoulli sites (unbiased, first order); η and λ may be traced.

    Examples:
      >>> import jax_scg as scg
      >>> scg.estimators.rebar(eta=1.0, temperature=0.5).guarantee
      'first order'
    """
    return REBAR(eta, temperature)


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
