"""Distributions from other libraries, adapted to jax_scg's protocol.

NumPyro distributions are pytrees with ``sample(key)``, ``log_prob(value)`` and a
``has_rsample`` flag; ``scg.sample`` wraps them in ``NumPyroDistribution`` so that
``has_rsample`` gives the reparameterisation and ``enumerate_support`` the finite support.
distrax distributions (keyword-only ``sample(seed=...)``) are wrapped in
``DistraxDistribution``: distrax's own distributions sample by differentiable JAX
transformations (reparameterised where the value is continuous); distributions wrapped from
TensorFlow Probability keep TFP's ``reparameterization_type``. Neither library is imported
here: both are optional dependencies.
"""

from __future__ import annotations

import jax


def _has_base(dist, module_prefix: str) -> bool:
    return any(
        cls.__module__.startswith(module_prefix) and cls.__name__ == "Distribution"
        for cls in type(dist).__mro__
    )


def is_numpyro_distribution(dist) -> bool:
    return _has_base(dist, "numpyro.distributions")


def is_distrax_distribution(dist) -> bool:
    return _has_base(dist, "distrax._src.distributions")


@jax.tree_util.register_pytree_node_class
class NumPyroDistribution:
    """A NumPyro distribution seen through jax_scg's distribution protocol.

    Examples:
      >>> import jax, jax_scg as scg
      >>> import numpyro.distributions as nd
      >>> x = scg.sample(jax.random.key(0), nd.Normal(0.0, 1.0))
      >>> x.shape
      ()
    """

    def __init__(self, dist):
        self.dist = dist

    @property
    def is_reparameterized(self) -> bool:
        return bool(self.dist.has_rsample)

    @property
    def name(self) -> str:
        return type(self.dist).__name__

    def sample(self, key):
        return self.dist.sample(key)

    def log_prob(self, value):
        return self.dist.log_prob(value)

    def __getattr__(self, attr):
        if attr == "enumerate_support" and getattr(self.dist, "has_enumerate_support", False):
            return lambda: self.dist.enumerate_support(expand=True)
        raise AttributeError(attr)

    def tree_flatten(self):
        return (self.dist,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0])


@jax.tree_util.register_pytree_node_class
class DistraxDistribution:
    """A distrax distribution seen through jax_scg's distribution protocol.

    Examples:
      >>> import jax, jax_scg as scg, distrax
      >>> x = scg.sample(jax.random.key(0), distrax.Bernoulli(logits=0.3))
      >>> x.shape
      ()
    """

    def __init__(self, dist):
        self.dist = dist

    @property
    def is_reparameterized(self) -> bool:
        kind = getattr(self.dist, "reparameterization_type", None)
        return True if kind is None else "FULLY_REPARAMETERIZED" in str(kind)

    @property
    def name(self) -> str:
        return type(self.dist).__name__

    def sample(self, key):
        return self.dist.sample(seed=key)

    def log_prob(self, value):
        return self.dist.log_prob(value)

    def tree_flatten(self):
        return (self.dist,), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(children[0])


def adapt(dist):
    """``dist`` itself, or an adapter where it comes from another library."""
    if is_numpyro_distribution(dist):
        return NumPyroDistribution(dist)
    if is_distrax_distribution(dist):
        return DistraxDistribution(dist)
    return dist
