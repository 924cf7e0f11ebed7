"""Probability distributions for stochastic computation graphs.

The distribution protocol
-------------------------
``jax_scg`` accepts as a distribution any object that

* is a JAX pytree whose leaves are its array parameters (so distributions can be
  passed through ``jax.jit``, ``jax.vmap`` and ``jax.grad``), and
* has a method ``sample(key) -> Array`` returning one draw with the
  distribution's full ``batch_shape + event_shape``. ``key`` may be a typed key
  (``jax.random.key``) or a raw ``uint32[2]`` key (``jax.random.PRNGKey``);
* has a method ``log_prob(value) -> Array`` returning the log density (or log
  mass) of ``value``, with the broadcast batch shape (event dims summed out);
* has a class attribute ``is_reparameterized: bool`` that is ``True`` when
  gradients of ``sample(key)`` with respect to the parameters are the correct
  pathwise (reparameterisation) gradients.

Optionally, ``parameter_checks() -> [(bool array, description), ...]`` lists conditions
that valid parameters meet; ``scg.grad(fn, validate=True)`` checks them at run time.

The built-in distributions below additionally provide ``batch_shape`` and
``event_shape`` (tuples), ``mean`` where it is cheap, and, for finite supports
(:class:`Bernoulli`, :class:`Categorical`, :class:`OneHotCategorical`),
``support_size`` and ``enumerate_support()``. The latter returns every support
value along a new leading axis, broadcast to the batch shape, i.e. an array of
shape ``(support_size,) + batch_shape + event_shape``.

Parameters are stored exactly as given (Python scalars included) and converted
lazily inside methods. The floating dtype of samples and log-probabilities is
``jnp.result_type(*params, float)``, so it follows the parameters and respects
``jax_enable_x64``.

Subclassing :class:`Distribution` registers the subclass as a pytree
automatically: list the parameter attribute names in ``_params`` (the pytree
children, in order) and any hashable static configuration in ``_static``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import betaln, gammaln, xlog1py, xlogy

Array = jax.Array

__all__ = [
    "Autoregressive",
    "Distribution",
    "Normal",
    "Bernoulli",
    "Categorical",
    "OneHotCategorical",
    "Poisson",
    "Gamma",
    "Beta",
    "Dirichlet",
    "Uniform",
    "Exponential",
]


def _softplus(x: Array) -> Array:
    """``log(1 + exp(x))``, stable, with exact derivatives of every order everywhere.

    One exponential and one ``log1p`` per element (as NumPyro's), on ``s = -|x|`` written as
    ``where(x > 0, -x, x)``: its derivative is -1 or 1, never the 0 that ``abs`` has at 0.
    So each side is an exact analytic form of softplus, ``x + log1p(exp(-x))`` for x > 0 and
    ``log1p(exp(x))`` for x <= 0, and derivatives at x = 0 are softplus's own (1/2, 1/4, 0,
    ...); ``exp(s) <= 1`` never overflows. (``max(x, 0) + log1p(exp(-abs(x)))`` has the right
    first derivative at 0 but a second derivative of 0 there, since ``abs`` has derivative 0
    at 0.) ``jax.nn.softplus`` is avoided on purpose: its custom JVP gives wrong second
    derivatives (reverse mode inside ``lax.scan``) on JAX 0.10-0.11.
    """
    positive = x > 0
    return jnp.where(positive, x, 0) + jnp.log1p(jnp.exp(jnp.where(positive, -x, x)))


def _safe_xlogy(x: Array, y: Array, log=jnp.log) -> Array:
    """``x * log(y)``, equal to 0 with zero gradient where the data ``x`` is 0."""
    nonzero = x != 0
    return jnp.where(nonzero, x * log(jnp.where(nonzero, y, 1)), 0)


def _safe_log(p: Array) -> Array:
    """``log(p)`` that is ``-inf`` (with zero, not NaN, gradient) where ``p == 0``."""
    positive = p > 0
    return jnp.where(positive, jnp.log(jnp.where(positive, p, 1)), -jnp.inf)


def _support_axis(values: Array, batch_shape: tuple[int, ...], event_ndims: int) -> Array:
    """Broadcasts support ``values`` (leading axis, then event dims) over ``batch_shape``."""
    n = values.shape[0]
    event_shape = values.shape[1:]
    values = values.reshape((n,) + (1,) * len(batch_shape) + event_shape)
    return jnp.broadcast_to(values, (n,) + tuple(batch_shape) + event_shape[:event_ndims])


class Distribution:
    """Base class: immutable pytree whose children are the attributes named in ``_params``.

    Subclasses are registered with ``jax.tree_util`` automatically. Unflattening
    bypasses ``__init__`` and only sets attributes, so leaves may be arbitrary
    placeholders or tracers.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> d = Normal(jnp.zeros(2), 1.0)
      >>> isinstance(d, Distribution), len(jax.tree_util.tree_leaves(d))
      (True, 2)
    """

    is_reparameterized: ClassVar[bool] = False
    _params: ClassVar[tuple[str, ...]] = ()  # pytree children, in this order
    _static: ClassVar[tuple[str, ...]] = ()  # hashable aux data
    _param_event_ndims: ClassVar[int] = 0  # trailing parameter axes that are not batch axes
    _constraints: ClassVar[dict[str, str]] = {}  # parameter name -> "positive", "unit", ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_pytree_node(cls, cls._tree_flatten, cls._tree_unflatten)

    def _tree_flatten(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        children = tuple(getattr(self, name) for name in self._params)
        return children, tuple(getattr(self, name) for name in self._static)

    @classmethod
    def _tree_unflatten(cls, aux: tuple[Any, ...], children: tuple[Any, ...]) -> Distribution:
        self = object.__new__(cls)
        self._set(**dict(zip(cls._static, aux, strict=True)))
        self._set(**dict(zip(cls._params, children, strict=True)))
        return self

    def _set(self, **attrs: Any) -> None:
        for name, value in attrs.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; cannot set {name!r}.")

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self._repr_items())
        return f"{type(self).__name__}({items})"

    def _repr_items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self._params]

    def _param_values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._params)

    @property
    def _dtype(self) -> Any:
        """Floating dtype of samples and log-probabilities."""
        return jnp.result_type(*self._param_values(), float)

    def _cast(self, *xs: Any) -> tuple[Array, ...]:
        return tuple(jnp.asarray(x, self._dtype) for x in xs)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Broadcast shape of the parameters (excluding their event axes)."""
        k = self._param_event_ndims
        return jnp.broadcast_shapes(
            *(jnp.shape(p)[: jnp.ndim(p) - k] for p in self._param_values())
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of a single event (``()`` for scalar distributions)."""
        return ()

    def parameter_checks(self) -> list[tuple[Array, str]]:
        """Boolean arrays that must all be true for valid parameters, with what they check.

        Used by the opt-in runtime validation (``scg.grad(fn, validate=True)``).
        """
        checks = []
        for name, value in self._check_items():
            value = jnp.asarray(value)
            kind = self._constraints.get(name, "real")
            if kind == "positive":
                checks.append((value > 0, f"{name} must be > 0"))
            elif kind == "nonnegative":
                checks.append((value >= 0, f"{name} must be >= 0"))
            elif kind == "unit":
                checks.append(((value >= 0) & (value <= 1), f"{name} must be in [0, 1]"))
            else:
                checks.append((~jnp.isnan(value), f"{name} must not be NaN"))
        return checks

    def _check_items(self) -> list[tuple[str, Any]]:
        return self._repr_items()

    def sample(self, key: Array) -> Array:
        """Draws one sample of shape ``batch_shape + event_shape``."""
        raise NotImplementedError

    def log_prob(self, value: Any) -> Array:
        """Log density/mass of ``value``, with event dims summed out."""
        raise NotImplementedError


class Normal(Distribution):
    """Normal distribution, reparameterised as ``loc + scale * eps``.

    Args:
        loc: Mean.
        scale: Standard deviation (positive).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Normal(jnp.zeros(3), 1.0)
        >>> d.batch_shape, d.sample(jax.random.key(0)).shape
        ((3,), (3,))
        >>> print(d.log_prob(0.0)[0] == -0.5 * jnp.log(2 * jnp.pi))
        True
    """

    is_reparameterized = True
    _params = ("loc", "scale")
    _constraints = {"scale": "positive"}

    def __init__(self, loc: Any, scale: Any):
        self._set(loc=loc, scale=scale)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(*self._cast(self.loc), self.batch_shape)

    def sample(self, key: Array) -> Array:
        loc, scale = self._cast(self.loc, self.scale)
        return loc + scale * jax.random.normal(key, self.batch_shape, self._dtype)

    def log_prob(self, value: Any) -> Array:
        x, loc, scale = self._cast(value, self.loc, self.scale)
        z = (x - loc) / scale
        return -0.5 * z**2 - jnp.log(scale) - 0.5 * math.log(2 * math.pi)


class _LogitsOrProbs(Distribution):
    """Shared storage for distributions given by exactly one of ``logits``/``probs``."""

    _params = ("_param",)
    _static = ("_kind",)
    _constraints = {"probs": "unit"}

    def __init__(self, logits: Any = None, probs: Any = None):
        if (logits is None) == (probs is None):
            which = "neither" if logits is None else "both"
            raise ValueError(
                f"{type(self).__name__} requires exactly one of `logits` or `probs`; got {which}."
            )
        kind = "logits" if probs is None else "probs"
        self._set(_param=logits if probs is None else probs, _kind=kind)

    def _repr_items(self) -> list[tuple[str, Any]]:
        return [(self._kind, self._param)]


class Bernoulli(_LogitsOrProbs):
    """Bernoulli distribution over ``{0., 1.}`` (samples are floats; not reparameterised).

    Args:
        logits: Log-odds ``log(p / (1 - p))``. Exactly one of ``logits``/``probs``.
        probs: Probability of 1.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Bernoulli(logits=jnp.zeros(2))
        >>> d.sample(jax.random.key(0)).shape, d.enumerate_support().shape
        ((2,), (2, 2))
        >>> print(Bernoulli(probs=0.25).log_prob(1.0) == jnp.log(0.25))
        True
    """

    support_size: ClassVar[int] = 2

    @property
    def logits(self) -> Array:
        (p,) = self._cast(self._param)
        return p if self._kind == "logits" else jnp.log(p) - jnp.log1p(-p)

    @property
    def probs(self) -> Array:
        (p,) = self._cast(self._param)
        return jax.nn.sigmoid(p) if self._kind == "logits" else p

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(self.probs, self.batch_shape)

    def sample(self, key: Array) -> Array:
        return jax.random.bernoulli(key, self.probs, self.batch_shape).astype(self._dtype)

    def log_prob(self, value: Any) -> Array:
        x, p = self._cast(value, self._param)
        if self._kind == "logits":
            return x * p - _softplus(p)
        return _safe_xlogy(x, p) + _safe_xlogy(1 - x, -p, jnp.log1p)

    def enumerate_support(self) -> Array:
        """Returns ``[0., 1.]`` broadcast to shape ``(2,) + batch_shape``."""
        return _support_axis(jnp.arange(2, dtype=self._dtype), self.batch_shape, 0)


class Categorical(_LogitsOrProbs):
    """Categorical distribution over ``{0, ..., K-1}`` (last parameter axis); integer samples.

    ``-inf`` logits (or zero probs) mask categories out. Probabilities need not be
    normalised. Not reparameterised.

    Args:
        logits: Unnormalised log-probabilities, shape ``batch_shape + (K,)``.
        probs: Non-negative (unnormalised) probabilities, shape ``batch_shape + (K,)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Categorical(logits=jnp.array([0.0, -jnp.inf, 0.0]))
        >>> d.batch_shape, d.support_size, d.sample(jax.random.key(0)).shape
        ((), 3, ())
        >>> print(d.log_prob(jnp.arange(3)) == jnp.log(jnp.array([0.5, 0.0, 0.5])))
        [ True  True  True]
    """

    _param_event_ndims = 1

    @property
    def support_size(self) -> int:
        return jnp.shape(self._param)[-1]

    @property
    def logits(self) -> Array:
        """Logits as given, or ``log(probs)``."""
        (p,) = self._cast(self._param)
        return p if self._kind == "logits" else _safe_log(p)

    @property
    def log_probs(self) -> Array:
        """Normalised log-probabilities, shape ``batch_shape + (K,)``."""
        return jax.nn.log_softmax(self.logits, axis=-1)

    @property
    def probs(self) -> Array:
        """Normalised probabilities, shape ``batch_shape + (K,)``."""
        return jnp.exp(self.log_probs)

    def sample(self, key: Array) -> Array:
        return jax.random.categorical(key, self.logits, axis=-1, shape=self.batch_shape)

    def log_prob(self, value: Any) -> Array:
        index = jnp.asarray(value).astype(int)
        shape = jnp.broadcast_shapes(index.shape, self.batch_shape)
        log_probs = jnp.broadcast_to(self.log_probs, shape + (self.support_size,))
        index = jnp.broadcast_to(index, shape)[..., None]
        return jnp.take_along_axis(log_probs, index, axis=-1)[..., 0]

    def enumerate_support(self) -> Array:
        """Returns ``arange(K)`` broadcast to shape ``(K,) + batch_shape``."""
        return _support_axis(jnp.arange(self.support_size), self.batch_shape, 0)


class OneHotCategorical(Categorical):
    """Categorical distribution whose samples are one-hot float vectors (event shape ``(K,)``).

    Args:
        logits: Unnormalised log-probabilities, shape ``batch_shape + (K,)``.
        probs: Non-negative (unnormalised) probabilities, shape ``batch_shape + (K,)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = OneHotCategorical(probs=jnp.array([0.25, 0.75]))
        >>> d.event_shape, d.sample(jax.random.key(0)).shape, d.enumerate_support().shape
        ((2,), (2,), (2, 2))
        >>> round(float(d.log_prob(jnp.array([0.0, 1.0]))), 4)  # log(0.75)
        -0.2877
    """

    @property
    def event_shape(self) -> tuple[int, ...]:
        return (self.support_size,)

    @property
    def mean(self) -> Array:
        return self.probs

    def sample(self, key: Array) -> Array:
        return jax.nn.one_hot(super().sample(key), self.support_size, dtype=self._dtype)

    def log_prob(self, value: Any) -> Array:
        (x,) = self._cast(value)
        # Masked (-inf) categories contribute 0 when their indicator is 0, without NaNs.
        log_probs = jnp.where(x != 0, self.log_probs, 0)
        return jnp.sum(x * log_probs, axis=-1)

    def enumerate_support(self) -> Array:
        """Returns ``eye(K)`` broadcast to shape ``(K,) + batch_shape + (K,)``."""
        return _support_axis(jnp.eye(self.support_size, dtype=self._dtype), self.batch_shape, 1)


class Poisson(Distribution):
    """Poisson distribution with integer samples; not reparameterised.

    Args:
        rate: Mean number of events (positive).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Poisson(jnp.array([1.0, 1e4]))
        >>> d.sample(jax.random.key(0)).shape
        (2,)
        >>> round(float(Poisson(2.0).log_prob(0)), 4)  # log(exp(-2))
        -2.0
    """

    _params = ("rate",)
    _constraints = {"rate": "nonnegative"}

    def __init__(self, rate: Any):
        self._set(rate=rate)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(*self._cast(self.rate), self.batch_shape)

    def sample(self, key: Array) -> Array:
        return jax.random.poisson(key, *self._cast(self.rate), self.batch_shape)

    def log_prob(self, value: Any) -> Array:
        x, rate = self._cast(value, self.rate)
        valid = (x >= 0) & (x == jnp.floor(x))
        x = jnp.where(valid, x, 0)
        return jnp.where(valid, xlogy(x, rate) - rate - gammaln(x + 1), -jnp.inf)


class Gamma(Distribution):
    """Gamma distribution (shape/rate); reparameterised via implicit gradients.

    Args:
        concentration: Shape parameter ``alpha`` (positive).
        rate: Rate parameter ``beta`` (positive); the mean is ``alpha / beta``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Gamma(jnp.ones(3), 2.0)
        >>> d.sample(jax.random.key(0)).shape, d.mean.tolist()
        ((3,), [0.5, 0.5, 0.5])
    """

    is_reparameterized = True
    _params = ("concentration", "rate")
    _constraints = {"concentration": "positive", "rate": "positive"}

    def __init__(self, concentration: Any, rate: Any = 1.0):
        self._set(concentration=concentration, rate=rate)

    @property
    def mean(self) -> Array:
        a, b = self._cast(self.concentration, self.rate)
        return jnp.broadcast_to(a / b, self.batch_shape)

    def sample(self, key: Array) -> Array:
        a, b = self._cast(self.concentration, self.rate)
        return jax.random.gamma(key, a, self.batch_shape, self._dtype) / b

    def log_prob(self, value: Any) -> Array:
        x, a, b = self._cast(value, self.concentration, self.rate)
        lp = a * jnp.log(b) + xlogy(a - 1, x) - b * x - gammaln(a)
        return jnp.where(x >= 0, lp, -jnp.inf)


class Beta(Distribution):
    """Beta distribution on ``[0, 1]``; reparameterised via implicit gradients.

    Args:
        concentration1: ``alpha``, the exponent of ``x`` (positive).
        concentration0: ``beta``, the exponent of ``1 - x`` (positive).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Beta(1.0, jnp.array([1.0, 3.0]))
        >>> d.sample(jax.random.key(0)).shape, d.mean.tolist()
        ((2,), [0.5, 0.25])
    """

    is_reparameterized = True
    _params = ("concentration1", "concentration0")
    _constraints = {"concentration1": "positive", "concentration0": "positive"}

    def __init__(self, concentration1: Any, concentration0: Any):
        self._set(concentration1=concentration1, concentration0=concentration0)

    @property
    def mean(self) -> Array:
        a, b = self._cast(self.concentration1, self.concentration0)
        return jnp.broadcast_to(a / (a + b), self.batch_shape)

    def sample(self, key: Array) -> Array:
        a, b = self._cast(self.concentration1, self.concentration0)
        return jax.random.beta(key, a, b, self.batch_shape, self._dtype)

    def log_prob(self, value: Any) -> Array:
        x, a, b = self._cast(value, self.concentration1, self.concentration0)
        lp = xlogy(a - 1, x) + xlog1py(b - 1, -x) - betaln(a, b)
        return jnp.where((x >= 0) & (x <= 1), lp, -jnp.inf)


class Dirichlet(Distribution):
    """Dirichlet distribution on the simplex (event shape ``(K,)``); reparameterised.

    Args:
        concentration: Positive concentrations, shape ``batch_shape + (K,)``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Dirichlet(jnp.array([1.0, 3.0]))
        >>> d.event_shape, d.sample(jax.random.key(0)).shape, d.mean.tolist()
        ((2,), (2,), [0.25, 0.75])
    """

    is_reparameterized = True
    _params = ("concentration",)
    _constraints = {"concentration": "positive"}
    _param_event_ndims = 1

    def __init__(self, concentration: Any):
        self._set(concentration=concentration)

    @property
    def event_shape(self) -> tuple[int, ...]:
        return jnp.shape(self.concentration)[-1:]

    @property
    def mean(self) -> Array:
        (a,) = self._cast(self.concentration)
        return a / jnp.sum(a, axis=-1, keepdims=True)

    def sample(self, key: Array) -> Array:
        (a,) = self._cast(self.concentration)
        return jax.random.dirichlet(key, a, self.batch_shape, self._dtype)

    def log_prob(self, value: Any) -> Array:
        x, a = self._cast(value, self.concentration)
        norm = gammaln(jnp.sum(a, axis=-1)) - jnp.sum(gammaln(a), axis=-1)
        return jnp.sum(xlogy(a - 1, x), axis=-1) + norm


class Uniform(Distribution):
    """Uniform distribution on ``[low, high)``, reparameterised as ``low + (high - low) * u``.

    Args:
        low: Lower bound (inclusive).
        high: Upper bound (exclusive).

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Uniform(0.0, jnp.array([2.0, 4.0]))
        >>> d.sample(jax.random.key(0)).shape, d.log_prob(1.0).tolist()
        ((2,), [-0.6931471824645996, -1.3862943649291992])
    """

    is_reparameterized = True
    _params = ("low", "high")

    def __init__(self, low: Any, high: Any):
        self._set(low=low, high=high)

    @property
    def mean(self) -> Array:
        low, high = self._cast(self.low, self.high)
        return jnp.broadcast_to((low + high) / 2, self.batch_shape)

    def sample(self, key: Array) -> Array:
        low, high = self._cast(self.low, self.high)
        return low + (high - low) * jax.random.uniform(key, self.batch_shape, self._dtype)

    def parameter_checks(self) -> list[tuple[Array, str]]:
        low, high = self._cast(self.low, self.high)
        return [*super().parameter_checks(), (low < high, "low must be < high")]

    def log_prob(self, value: Any) -> Array:
        x, low, high = self._cast(value, self.low, self.high)
        return jnp.where((x >= low) & (x < high), -jnp.log(high - low), -jnp.inf)


class Exponential(Distribution):
    """Exponential distribution, reparameterised as ``E / rate`` with ``E ~ Exp(1)``.

    Args:
        rate: Rate (positive); the mean is ``1 / rate``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> d = Exponential(jnp.array([1.0, 4.0]))
        >>> d.sample(jax.random.key(0)).shape, d.mean.tolist()
        ((2,), [1.0, 0.25])
    """

    is_reparameterized = True
    _params = ("rate",)
    _constraints = {"rate": "positive"}

    def __init__(self, rate: Any):
        self._set(rate=rate)

    @property
    def mean(self) -> Array:
        return jnp.broadcast_to(1 / self._cast(self.rate)[0], self.batch_shape)

    def sample(self, key: Array) -> Array:
        (rate,) = self._cast(self.rate)
        return jax.random.exponential(key, self.batch_shape, self._dtype) / rate

    def log_prob(self, value: Any) -> Array:
        x, rate = self._cast(value, self.rate)
        return jnp.where(x >= 0, jnp.log(rate) - rate * x, -jnp.inf)


def _is_array(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


class Autoregressive(Distribution):
    """A sequence ``p(x) = Π_t p(x_t | x_<t)`` given by a sampler and a parallel scorer.

    The form in which autoregressive models are fine-tuned with reinforcement learning:
    ``sample_fn`` generates (a ``lax.scan`` with a KV cache, say) and is never
    differentiated; ``log_prob_fn`` scores every position of a given sequence in one
    parallel (teacher-forced) pass of the same model, and carries the score function's
    derivatives. Nobody differentiates through the generation loop.

    The site is *causal* (``causal = True``): position ``t``'s log-probability is
    ``log p(x_t | x_<t)``, so a cost at position ``t`` takes the score of positions ``≤ t``
    only (the box of ``Σ_{s≤t} log p(x_s | x_<s)``), and a cost of the whole sequence the
    score of all of them. Costs computed elementwise from the tokens get this per-position
    credit from the dataflow; costs computed through another pass of a model over the
    sequence (a per-token KL penalty to a reference model) mix positions as far as the
    dataflow can tell, and are declared causal with :func:`jax_scg.causal`.

    Args:
      params: the model's parameters, any pytree (an ``equinox.Module``, a dict of arrays):
        its array leaves are the distribution's parameters (differentiated), its other
        leaves static.
      sample_fn: ``sample_fn(params, key) -> tokens`` of shape ``batch + (T,)``.
      log_prob_fn: ``log_prob_fn(params, tokens) -> log-probabilities`` of the same shape:
        ``log p(x_t | x_<t)`` at every position ``t`` (the last axis).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> def sample_fn(w, key):  # each token repeats the previous one with probability σ(w)
      ...     def step(prev, k):
      ...         x = jnp.where(jax.random.bernoulli(k, jax.nn.sigmoid(w)), prev, 1 - prev)
      ...         return x, x
      ...     return jax.lax.scan(step, 0, jax.random.split(key, 4))[1]
      >>> def log_prob_fn(w, x):
      ...     same = x == jnp.concatenate([jnp.zeros(1, x.dtype), x[:-1]])
      ...     return jnp.where(same, jax.nn.log_sigmoid(w), jax.nn.log_sigmoid(-w))
      >>> d = Autoregressive(jnp.asarray(2.0), sample_fn, log_prob_fn)
      >>> x = d.sample(jax.random.key(0))
      >>> x.shape, d.log_prob(x).shape, d.batch_shape
      ((4,), (4,), (4,))
    """

    causal: ClassVar[bool] = True
    _params = ("_arrays",)
    _static = ("_structure", "sample_fn", "log_prob_fn")

    def __init__(self, params: Any, sample_fn, log_prob_fn):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        arrays = tuple(leaf for leaf in leaves if _is_array(leaf))
        statics = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
        self._set(
            _arrays=arrays,
            _structure=(treedef, statics),
            sample_fn=sample_fn,
            log_prob_fn=log_prob_fn,
        )

    @property
    def params(self) -> Any:
        """The model's parameters, as given."""
        treedef, statics = self._structure
        arrays = iter(self._arrays)
        positions = dict(statics)
        leaves = [
            positions[i] if i in positions else next(arrays)
            for i in range(len(statics) + len(self._arrays))
        ]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    @property
    def _dtype(self) -> Any:
        return jnp.result_type(*self._arrays, float)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The shape of one sequence (batch axes, then positions)."""
        shape = jax.eval_shape(self.sample_fn, self.params, jax.random.key(0)).shape
        return tuple(shape)

    def sample(self, key: Array) -> Array:
        return lax.stop_gradient(self.sample_fn(self.params, key))

    def log_prob(self, value: Any) -> Array:
        log_probs = self.log_prob_fn(self.params, value)
        if jnp.shape(log_probs) != jnp.shape(value):
            raise ValueError(
                f"Autoregressive: log_prob_fn returned shape {jnp.shape(log_probs)} for tokens "
                f"of shape {jnp.shape(value)}; it must return log p(x_t | x_<t) at every "
                "position, of the tokens' shape (do not sum over positions, keep the first)"
            )
        return log_probs

    def _repr_items(self) -> list[tuple[str, Any]]:
        return [("sample_fn", self.sample_fn), ("log_prob_fn", self.log_prob_fn)]

    def _check_items(self) -> list[tuple[str, Any]]:
        return []
