"""The large programs of ``rewrite_time.py``: a transformer LM and a deep MLP, of any size.

* ``lm_scan``: a small transformer language model (2 heads, width 32, vocabulary 16)
  sampling tokens in ``lax.scan``, a reward per token plus an entropy bonus; its size grows
  with the number of layers (:func:`lm_params`).
* ``lm_unrolled``: the same model, its sampling loop unrolled in Python; its size grows with
  the number of tokens.
* ``mlp``: a deep MLP (width 16) with a Normal site after every layer; its size grows with
  the depth (:func:`mlp_params`).

Each program takes ``draw(key, logits_or_mean, kind)``: :func:`scg_draw` (a jax_scg site) or
:func:`plain_draw` (a plain draw, for the baselines); :func:`program_grad` builds the
gradient function of a program for jax_scg, the plain program or hand-written DiCE. The
other JAX models are in ``models.py`` and ``models_elbo.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

# ------------------------------------------------------------------------------------------
# Language models and a deep MLP (rewrite_time.py)

VOCAB, WIDTH, HEADS, TOKENS = 16, 32, 2, 64
REWARD = np.linspace(-1.0, 1.0, VOCAB).astype(np.float32)
ENTROPY_BONUS = 0.01
MLP_WIDTH, MLP_NOISE = 16, 0.1


# Each program takes ``draw(key, logits_or_mean, kind)``: the site, or a baseline's draw.


def lm_params(layers: int, tokens: int) -> dict:
    keys = iter(jax.random.split(jax.random.key(0), 2 + 6 * layers))
    init = lambda shape: 0.3 * jax.random.normal(next(keys), shape) / np.sqrt(shape[0])
    blocks = [
        {
            n: init(s)
            for n, s in [
                ("q", (WIDTH, WIDTH)),
                ("k", (WIDTH, WIDTH)),
                ("v", (WIDTH, WIDTH)),
                ("o", (WIDTH, WIDTH)),
                ("up", (WIDTH, 4 * WIDTH)),
                ("down", (4 * WIDTH, WIDTH)),
            ]
        }
        for _ in range(layers)
    ]
    return {"embed": init((VOCAB, WIDTH)), "pos": init((tokens + 1, WIDTH)), "blocks": blocks}


def _norm(x):
    x = x - x.mean(-1, keepdims=True)
    return x * lax.rsqrt((x * x).mean(-1, keepdims=True) + 1e-5)


def lm_logits(params, buffer, t):
    """Next-token logits at position ``t`` of the token buffer (causal attention)."""
    n = buffer.shape[0]
    x = params["embed"][buffer] + params["pos"]
    causal = jnp.tril(jnp.ones((n, n), bool))
    for block in params["blocks"]:
        h = _norm(x)
        q, k, v = (jnp.reshape(h @ block[w], (n, HEADS, -1)) for w in "qkv")
        scores = jnp.einsum("qhd,khd->hqk", q, k) / np.sqrt(WIDTH // HEADS)
        attention = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
        x = x + jnp.reshape(jnp.einsum("hqk,khd->qhd", attention, v), (n, WIDTH)) @ block["o"]
        x = x + jax.nn.gelu(_norm(x) @ block["up"]) @ block["down"]
    h = lax.dynamic_index_in_dim(_norm(x), t, keepdims=False)
    return h @ params["embed"].T


def _token_step(params, buffer, t, key, draw):
    """One sampling step: the token at ``t + 1``, its cost, and its log-probability."""
    logits = lm_logits(params, buffer, t)
    token = draw(key, logits, "categorical")
    log_p = jax.nn.log_softmax(logits)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p)
    buffer = lax.dynamic_update_index_in_dim(buffer, token, t + 1, 0)
    return buffer, (jnp.asarray(REWARD)[token], -ENTROPY_BONUS * entropy), log_p[token]


def _dice_cost(tau_before, tau, reward, bonus, dice: bool):
    """The step's cost; hand-written DiCE boxes the reward with every token up to this one,
    the entropy bonus (computed before this token is drawn) with the earlier ones."""
    if not dice:
        return reward + bonus
    return scg.magic_box(tau) * reward + scg.magic_box(tau_before) * bonus


def lm_scan(params, key, draw, dice: bool = False):
    tokens = params["pos"].shape[0] - 1

    def step(carry, xs):
        buffer, tau = carry
        buffer, (reward, bonus), lp = _token_step(params, buffer, xs[0], xs[1], draw)
        return (buffer, tau + lp), _dice_cost(tau, tau + lp, reward, bonus, dice)

    init = (jnp.zeros(tokens + 1, jnp.int32), jnp.zeros(()))
    _, costs = lax.scan(step, init, (jnp.arange(tokens), jax.random.split(key, tokens)))
    return costs.sum()


def lm_unrolled(params, key, draw, dice: bool = False):
    tokens = params["pos"].shape[0] - 1
    keys = jax.random.split(key, tokens)
    buffer, tau, total = jnp.zeros(tokens + 1, jnp.int32), jnp.zeros(()), jnp.zeros(())
    for t in range(tokens):
        buffer, (reward, bonus), lp = _token_step(params, buffer, t, keys[t], draw)
        total = total + _dice_cost(tau, tau + lp, reward, bonus, dice)
        tau = tau + lp
    return total


def mlp_params(depth: int) -> dict:
    keys = jax.random.split(jax.random.key(1), depth)
    return {
        "w": [jax.random.normal(k, (MLP_WIDTH, MLP_WIDTH)) / np.sqrt(MLP_WIDTH) for k in keys],
        "b": [jnp.zeros(MLP_WIDTH) for _ in keys],
    }


def mlp(params, key, draw, dice: bool = False):
    del dice  # pathwise sites: the hand-written surrogate is the plain program
    keys = jax.random.split(key, len(params["w"]))
    x = jnp.linspace(-1.0, 1.0, MLP_WIDTH)
    for w, b, k in zip(params["w"], params["b"], keys):
        x = draw(k, jnp.tanh(x @ w + b), "normal")
    return jnp.sum(jnp.square(x - 0.5))


def _dist(param, kind):
    return D.Categorical(logits=param) if kind == "categorical" else D.Normal(param, MLP_NOISE)


def scg_draw(key, param, kind):
    return scg.sample(key, _dist(param, kind))


def plain_draw(key, param, kind):
    x = _dist(param, kind).sample(key)
    return lax.stop_gradient(x) if kind == "categorical" else x


def program_grad(program: Callable, system: str) -> Callable:
    """A new, un-jitted gradient function of ``(params, key)`` for ``system``."""
    if system == "scg":
        return scg.grad(lambda params, key: program(params, key, scg_draw))
    dice = system == "dice"
    return jax.grad(lambda params, key: program(params, key, plain_draw, dice))
