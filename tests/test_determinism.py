"""Same key, same estimate: eager, jit and vmap agree to float rounding (relative 1e-6) for
every example model, for the gradient and the Hessian. (One device against many, bitwise:
``test_devices.py``.)"""

import jax
import numpy as np
import pytest
from helpers import keys

import jax_scg as scg
from jax_scg import examples

MODELS = [*examples.FIGURE1, *examples.CONTINUOUS, *examples.MDP]


@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_eager_jit_and_vmap_give_the_same_estimates(model):
    ks = keys(501, 3)
    for transform in (scg.grad(model.fn), jax.hessian(scg.surrogate(model.fn))):
        batched = jax.jit(jax.vmap(transform, (None, 0)))(model.theta, ks)
        for i, key in enumerate(ks):
            eager = transform(model.theta, key)
            jitted = jax.jit(transform)(model.theta, key)
            np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(batched[i], eager, rtol=1e-6, atol=1e-6)
            again = jax.jit(transform)(model.theta, key)  # and the same on a second call
            np.testing.assert_array_equal(again, jitted)
