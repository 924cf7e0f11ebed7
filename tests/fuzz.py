"""Random stochastic computation graphs checked against exact answers.

A program is a random DAG of sites (Bernoulli, 3-way Categorical, a 2-vector of Bernoullis
drawn under ``jax.vmap`` inside the program, Normal with score-function or pathwise
estimator), random costs of them (some inside ``lax.cond`` on a sample, some under a nested
``jax.jit``), and optionally a ``lax.scan`` policy whose actions depend on a site: 2 or 3
steps, one environment or two stepped together (a vector site per step), rewards stacked or
summed in the carry, forward or reversed, with or without a baseline, with dynamics that do
or do not depend on the parameters (loop fission applies only where they do not).

Exact references never use jax_scg: the expectation is enumerated over the discrete values
(probabilities written with ``jax.nn``) and over Gauss-Hermite nodes for the Normal sites
(costs are polynomials of degree <= 4 in Normal values, so 6 nodes are exact even for the
second-order score-function terms), and differentiated with ``jax.grad``/``jax.hessian``.

Two checks per program:

* **Monte Carlo**: the mean of ``scg.grad`` (and of ``jax.hessian(scg.surrogate)``) over many
  keys is within z standard errors of the exact gradient (Hessian), z Bonferroni-corrected
  over all programs and coordinates.
* **Fission on and off** (programs with a loop): the estimates with and without loop fission
  are equal key by key at orders 1, 2 and 3.
* **Exact, no noise** (programs without loops or pathwise sites): with ``scg.condition``
  planting every site's value, the estimate for each joint value equals a hand-written causal
  DiCE estimator built from the generator's own DAG (so the variance equals the causal
  estimator's exactly), and the probability-weighted sum of estimates equals the exact
  gradient and Hessian.

A second family, *edge programs* (``generate_edge``), puts piecewise operations (steps and
kinks) on reparameterised sites and draws the sites from keys split and folded in ways that
may collide; see the section below.

Run ``python tests/fuzz.py --programs 1000`` for a long run (and 250 edge programs); it prints
how many passed.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import random
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jax_scg as scg
from jax_scg import distributions as D

GH_T, GH_W = np.polynomial.hermite.hermgauss(6)  # ∫ e^{-t²} g(t) dt ≈ Σ w g(t)
KINDS = ("bern", "cat", "vec", "normal")


@dataclasses.dataclass(frozen=True)
class Site:
    kind: str
    parents: tuple  # indices of earlier discrete sites
    slot: int  # first theta slot used
    alpha: tuple  # coefficient per parent
    estimator: str  # "score_function" or "auto" (pathwise, for Normal)

    @property
    def name(self) -> str:
        return f"s{self.slot}"


@dataclasses.dataclass(frozen=True)
class Cost:
    sites: tuple
    form: int
    beta: tuple
    slot: int
    wrap: str  # "", "jit" or "cond"
    pred: int  # site index of the cond predicate (discrete), or -1


@dataclasses.dataclass(frozen=True)
class Loop:
    parent: int  # the site whose value shifts the policy's logits
    steps: int
    envs: int  # environments stepped together; 1: a scalar site per step
    carried: bool  # rewards summed in the carry (else stacked by the scan)
    reverse: bool
    baseline: bool
    param_dynamics: bool  # the dynamics depend on theta: a derivative flows through the carry


@dataclasses.dataclass(frozen=True)
class Program:
    sites: tuple
    costs: tuple
    loop: Loop | None
    theta_dim: int
    seed: int

    @property
    def scan_parent(self) -> int:
        return -1 if self.loop is None else self.loop.parent

    @property
    def has_pathwise(self) -> bool:
        return any(s.kind == "normal" and s.estimator != "score_function" for s in self.sites)


def generate(seed: int) -> Program:
    rng = random.Random(seed)
    sites, slot = [], 0
    for _ in range(rng.randint(1, 3)):
        kind = rng.choice(KINDS)
        discrete = [i for i, s in enumerate(sites) if s.kind != "normal"]
        parents = tuple(sorted(rng.sample(discrete, k=min(len(discrete), rng.randint(0, 2)))))
        alpha = tuple(round(rng.uniform(-1.5, 1.5), 2) for _ in parents)
        estimator = rng.choice(["score_function", "auto"]) if kind == "normal" else "score_function"
        sites.append(Site(kind, parents, slot, alpha, estimator))
        slot += 3 if kind == "cat" else 2
    costs = []
    discrete = [i for i, s in enumerate(sites) if s.kind != "normal"]
    for _ in range(rng.randint(1, 3)):
        used = tuple(sorted(rng.sample(range(len(sites)), k=rng.randint(1, min(2, len(sites))))))
        wrap = rng.choice(["", "", "jit", "cond"]) if discrete else rng.choice(["", "jit"])
        pred = rng.choice(discrete) if wrap == "cond" else -1
        beta = tuple(round(rng.uniform(-1.0, 1.0), 2) for _ in range(4))
        costs.append(Cost(used, rng.randint(0, 3), beta, slot, wrap, pred))
        slot += 1
    scan_parent = rng.choice([-1, -1, *discrete]) if discrete else -1
    loop = None
    if scan_parent >= 0:
        flags = [rng.random() < 0.5 for _ in range(3)]
        steps, envs = rng.choice([(2, 1), (3, 1), (2, 2)])
        loop = Loop(scan_parent, steps, envs, *flags, param_dynamics=rng.random() < 0.3)
    theta_dim = slot + (2 if loop is not None else 0)
    return Program(tuple(sites), tuple(costs), loop, theta_dim, seed)


def theta_for(program: Program):
    rng = np.random.default_rng(program.seed)
    return jnp.asarray(rng.uniform(-1.0, 1.0, program.theta_dim), jnp.float32)


# -- the program, written once for both modes ---------------------------------------------


def summary(kind, value):
    """A scalar summary of a site's value, used by children and costs."""
    return jnp.sum(value).astype(jnp.float32) if kind == "vec" else value.astype(jnp.float32)


def site_params(site: Site, theta, values, sites):
    """Distribution parameters of a site given its parents' values."""
    shift = sum(
        (a * summary(sites[p].kind, values[p]) for p, a in zip(site.parents, site.alpha)), 0.0
    )
    t = theta[site.slot :]
    if site.kind == "cat":
        return t[:3] + jnp.array([shift, 0.0, -0.5 * shift])
    if site.kind == "normal":
        return t[0] + shift, jnp.exp(0.3 * t[1])
    if site.kind == "vec":
        return jnp.stack([t[0] + shift, t[1] - shift])
    return t[0] + shift


def cost_value(cost: Cost, theta, values, sites):
    """One cost: a polynomial of degree <= 2 in any Normal value, else a random smooth form."""
    xs = [summary(sites[i].kind, values[i]) for i in cost.sites]
    b0, b1, b2, b3 = cost.beta
    lin = b0 + theta[cost.slot] + sum((b * x for b, x in zip((b1, b2), xs)), 0.0)
    vec_terms = [
        jnp.sum((b3 + values[i].astype(jnp.float32) * jnp.array([b1, b2])) ** 2)
        for i in cost.sites
        if sites[i].kind == "vec"
    ]
    smooth = any(sites[i].kind == "normal" for i in cost.sites)
    # Each form is one cost node (nonlinear at the top), so the hand-written causal estimator
    # below has the same cost nodes as the rewrite finds.
    forms = [
        lambda: lin**2,
        lambda: (lin * theta[cost.slot] + b3) ** 2,
        lambda: jnp.sin(lin) if not smooth else 0.5 * (lin - b3) ** 2,
        lambda: jnp.exp(0.3 * lin) if not smooth else (lin + b3) ** 2,
    ]
    form = forms[cost.form]
    value = sum(vec_terms, 0.0)
    if cost.wrap == "jit":
        value = value + jax.jit(lambda: form())()
    elif cost.wrap == "cond":
        p = summary(sites[cost.pred].kind, values[cost.pred])
        value = value + lax.cond(p > 0.5, form, lambda: forms[(cost.form + 1) % 4]())
    else:
        value = value + form()
    return value


def scan_costs(program: Program, theta, values, actions=None, key=None):
    """A policy: a_t ~ Bernoulli(θ₀ + 0.8 carry + parent), reward (a_t − 0.4 carry)² + θ₁ a_t.

    With ``key``, the jax_scg program; with ``actions`` (steps × envs values, in the loop's
    order), the rewards' total and the actions' log-probability, for enumeration.
    """
    loop = program.loop
    if loop is None:
        return 0.0
    t = theta[program.theta_dim - 2 :]
    parent = summary(program.sites[loop.parent].kind, values[loop.parent])

    def logit(carry):
        return t[0] + 0.8 * carry + 0.5 * parent

    def reward(carry, a):
        return (a - 0.4 * carry) ** 2 + t[1] * a

    def dynamics(carry, a):
        return 0.5 * carry + a + (0.3 * t[1] * a if loop.param_dynamics else 0.0)

    start = jnp.zeros(()) if loop.envs == 1 else jnp.zeros(loop.envs)
    if key is not None:

        def body(state, k):
            carry, total = state if loop.carried else (state, None)
            kw = dict(baseline=0.3 * carry + 0.1) if loop.baseline else {}
            a = scg.sample(k, D.Bernoulli(logits=logit(carry)), **kw)
            carry, r = dynamics(carry, a), reward(carry, a)
            return ((carry, total + r), None) if loop.carried else (carry, r)

        init = (start, jnp.zeros_like(start)) if loop.carried else start
        keys = jax.random.split(key, loop.steps)
        final, rewards = lax.scan(body, init, keys, reverse=loop.reverse)
        return jnp.sum(final[1]) if loop.carried else jnp.sum(rewards)
    total, log_p, carry = 0.0, 0.0, start
    for step in range(loop.steps):
        a = jnp.reshape(
            jnp.asarray(actions[step * loop.envs : (step + 1) * loop.envs]), start.shape
        )
        log_p = log_p + jnp.sum(bernoulli_logp(a, logit(carry)))
        total = total + jnp.sum(reward(carry, a))
        carry = dynamics(carry, a)
    return total, log_p


def make_fn(program: Program):
    """``fn(theta, key)``: the program with jax_scg sites."""

    def fn(theta, key):
        keys = jax.random.split(key, len(program.sites) + 1)
        values = []
        for i, site in enumerate(program.sites):
            params = site_params(site, theta, values, program.sites)
            kw = dict(estimator=site.estimator, name=site.name)
            if site.kind == "bern":
                v = scg.sample(keys[i], D.Bernoulli(logits=params), **kw)
            elif site.kind == "cat":
                v = scg.sample(keys[i], D.Categorical(logits=params), **kw)
            elif site.kind == "normal":
                v = scg.sample(keys[i], D.Normal(*params), **kw)
            else:  # a vector site drawn under vmap inside the program
                draw = lambda k, logit: scg.sample(k, D.Bernoulli(logits=logit))  # noqa: E731
                v = jax.vmap(draw)(jax.random.split(keys[i], 2), params)
            values.append(v)
        total = sum((cost_value(c, theta, values, program.sites) for c in program.costs), 0.0)
        return total + scan_costs(program, theta, values, key=keys[-1])

    return fn


def make_planted_fn(program: Program):
    """Like ``make_fn`` but the vector site is one named site (plantable): same estimator."""

    def fn(theta, key):
        keys = jax.random.split(key, len(program.sites))
        values = []
        for i, site in enumerate(program.sites):
            params = site_params(site, theta, values, program.sites)
            kw = dict(estimator=site.estimator, name=site.name)
            if site.kind in ("bern", "vec"):
                v = scg.sample(keys[i], D.Bernoulli(logits=params), **kw)
            elif site.kind == "cat":
                v = scg.sample(keys[i], D.Categorical(logits=params), **kw)
            else:
                v = scg.sample(keys[i], D.Normal(*params), **kw)
            values.append(v)
        return sum((cost_value(c, theta, values, program.sites) for c in program.costs), 0.0)

    return fn


# -- exact references, independent of jax_scg ------------------------------------------------


def bernoulli_logp(x, logit):
    return x * jax.nn.log_sigmoid(logit) + (1 - x) * jax.nn.log_sigmoid(-logit)


def support(site: Site, params, fixed_nodes=False):
    """All values of a site, stacked, with their log-weights (Gauss-Hermite for a Normal)."""
    if site.kind == "bern":
        values = jnp.array([0.0, 1.0])
        return values, bernoulli_logp(values, params)
    if site.kind == "cat":
        return jnp.arange(3, dtype=jnp.int32), jax.nn.log_softmax(params)
    if site.kind == "vec":
        values = jnp.array(list(itertools.product((0.0, 1.0), repeat=2)))
        return values, jnp.sum(bernoulli_logp(values, params), axis=1)
    mu, sigma = params
    if fixed_nodes:  # nodes at the given theta, as constants: estimates at planted values
        mu, sigma = lax.stop_gradient(mu), lax.stop_gradient(sigma)
    log_w = jnp.asarray(np.log(GH_W / math.sqrt(math.pi)), jnp.float32)
    return mu + sigma * math.sqrt(2) * jnp.asarray(GH_T, jnp.float32), log_w


SUPPORT_SIZE = {"bern": 2, "cat": 3, "vec": 4, "normal": len(GH_T)}


def combinations(program: Program):
    """Index table of every joint value: shape (number of joint values, number of sites)."""
    sizes = [SUPPORT_SIZE[s.kind] for s in program.sites]
    return jnp.asarray(list(itertools.product(*(range(k) for k in sizes))), jnp.int32)


def joint_value(program: Program, theta, index, fixed_nodes=False):
    """The joint value with index row ``index`` and its log-weight (parents first)."""
    values, log_w = [], 0.0
    for i, site in enumerate(program.sites):
        options, log_ws = support(
            site, site_params(site, theta, values, program.sites), fixed_nodes
        )
        values.append(options[index[i]])
        log_w = log_w + log_ws[index[i]]
    return values, log_w


def exact_expectation(program: Program):
    table = combinations(program)

    def one(theta, index):
        values, log_w = joint_value(program, theta, index)
        costs = sum((cost_value(c, theta, values, program.sites) for c in program.costs), 0.0)
        if program.scan_parent < 0:
            return jnp.exp(log_w) * costs
        total, loop = 0.0, program.loop
        for actions in itertools.product((0.0, 1.0), repeat=loop.steps * loop.envs):
            rewards, log_p = scan_costs(program, theta, values, actions=actions)
            total = total + jnp.exp(log_w + log_p) * (costs + rewards)
        return total

    return lambda theta: jnp.sum(jax.vmap(one, (None, 0))(theta, table))


def site_logp(site: Site, params, value):
    if site.kind == "bern":
        return bernoulli_logp(value, params)
    if site.kind == "cat":
        return jax.nn.log_softmax(params)[value]
    if site.kind == "vec":
        return bernoulli_logp(value, params)  # elementwise
    mu, sigma = params
    return -0.5 * ((value - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * math.log(2 * math.pi)


def ancestors(program: Program, index: int) -> set:
    out, stack = set(), [index]
    while stack:
        i = stack.pop()
        if i not in out:
            out.add(i)
            stack.extend(program.sites[i].parents)
    return out


def causal_surrogate(program: Program, values):
    """A hand-written DiCE surrogate with the generator's own influence sets, at given values."""

    def box(tau):
        return jnp.exp(tau - lax.stop_gradient(tau))

    def surrogate(theta):
        log_ps = [
            site_logp(s, site_params(s, theta, values, program.sites), values[i])
            for i, s in enumerate(program.sites)
        ]
        whole = lambda i: jnp.sum(log_ps[i])  # noqa: E731
        total = 0.0
        for cost in program.costs:
            infl = set().union(*(ancestors(program, i) for i in cost.sites))
            if cost.pred >= 0:
                infl |= ancestors(program, cost.pred)
            tau = sum((whole(i) for i in infl), 0.0)
            # Per-element credit: the vector sites' elementwise cost terms get their element.
            vec_terms = 0.0
            for i in cost.sites:
                if program.sites[i].kind != "vec":
                    continue
                upstream = ancestors(program, i) - {i}
                up_tau = sum((whole(j) for j in upstream), 0.0)
                b1, b2, b3 = cost.beta[1], cost.beta[2], cost.beta[3]
                per = (b3 + values[i] * jnp.array([b1, b2])) ** 2
                vec_terms = vec_terms + jnp.sum(box(up_tau + log_ps[i]) * per)
            scalar_cost = cost_value(cost, theta, values, program.sites)
            vec_part = sum(
                (
                    jnp.sum((cost.beta[3] + values[i] * jnp.array(cost.beta[1:3])) ** 2)
                    for i in cost.sites
                    if program.sites[i].kind == "vec"
                ),
                0.0,
            )
            total = total + box(tau) * (scalar_cost - vec_part) + vec_terms
        return total

    return surrogate


# -- the checks ---------------------------------------------------------------------------------


def monte_carlo(program: Program, n: int, seed: int, hessian: bool):
    fn, theta = make_fn(program), theta_for(program)
    keys = jax.random.split(jax.random.key(seed), n)
    grads = jax.jit(jax.vmap(scg.grad(fn), (None, 0)))(theta, keys)
    exact = exact_expectation(program)
    out = {"grad": (np.asarray(grads, np.float64), np.asarray(jax.jit(jax.grad(exact))(theta)))}
    if hessian:
        h_keys = jax.random.split(jax.random.key(seed + 1), n)
        hs = jax.jit(jax.vmap(jax.hessian(scg.surrogate(fn)), (None, 0)))(theta, h_keys)
        exact_h = jax.jit(jax.hessian(exact))(theta)
        out["hessian"] = (np.asarray(hs, np.float64).reshape(n, -1), np.asarray(exact_h).ravel())
    return out


def exact_check(program: Program):
    """Planted estimates equal the hand-written causal ones; their weighted sum is exact."""
    if program.scan_parent >= 0 or program.has_pathwise:
        return None
    fn, theta = make_planted_fn(program), theta_for(program)
    key = jax.random.key(0)  # unused: every site is planted

    def per_value(index):
        values, log_w = joint_value(program, theta, index, fixed_nodes=True)
        planted = {s.name: v for s, v in zip(program.sites, values)}
        conditioned = scg.condition(fn, planted)
        g = scg.grad(conditioned)(theta, key)
        h = jax.hessian(scg.surrogate(conditioned))(theta, key)
        by_hand = jax.grad(causal_surrogate(program, values))(theta)
        return jnp.exp(log_w), g, h, by_hand

    w, g, h, by_hand = jax.jit(jax.vmap(per_value))(combinations(program))
    exact = exact_expectation(program)
    mismatch = jnp.max(jnp.abs(g - by_hand) / (1.0 + jnp.abs(by_hand)))
    return {
        "causal_mismatch": float(mismatch),
        "grad": (np.asarray(jnp.tensordot(w, g, 1)), np.asarray(jax.jit(jax.grad(exact))(theta))),
        "hessian": (
            np.asarray(jnp.tensordot(w, h, 1)),
            np.asarray(jax.jit(jax.hessian(exact))(theta)),
        ),
    }


def fission_mismatch(program: Program) -> float:
    """Largest relative difference between estimates with and without loop fission, over
    three keys at first order and one key at second order, and (every third program, to
    bound the compile time) one key at third order."""
    fn, theta = make_fn(program), theta_for(program)

    def estimates(fission):  # one compiled program per setting (op by op: ~970 compilations)
        surrogate = scg.surrogate(fn, fission=fission)

        @jax.jit
        def run(theta, keys):
            grads = jax.vmap(scg.grad(fn, fission=fission), (None, 0))(theta, keys)
            out = [grads, jax.hessian(surrogate)(theta, keys[0])]
            if program.seed % 3 == 1:
                out.append(jax.jacfwd(jax.hessian(surrogate))(theta, keys[1]))
            return out

        return run(theta, jax.random.split(jax.random.key(program.seed + 7), 3))

    worst = 0.0
    for on, off in zip(estimates(True), estimates(False)):
        worst = max(worst, float(jnp.max(jnp.abs(on - off) / (1.0 + jnp.abs(off)))))
    return worst


# -- edge programs: piecewise operations on reparameterised sites, keys that may collide ---
#
# One Bernoulli site b and one or two Normal sites x_j ~ N(θ + θ' b, exp(0.3 θ'')), drawn from
# keys split or folded in ways that may collide, with costs w f(x_j) (1 + β b) where f is a
# step (round, floor, ceil, sign, x > c, where(x > c, 1, -1), x % 1), a kink (relu, abs,
# clip, maximum) or x². Every f is a piecewise polynomial of degree <= 2, so E[f(x)] is exact
# from the normal CDF and density on each piece. A program whose keys collide must raise a
# SiteError naming both sites; any other must be unbiased ("auto" takes the score function
# for the costs through a step and stays pathwise for the others) and must not warn.
# Hessians are checked where no site meets a kink (a kink's cost stays pathwise even on a
# site whose other costs step, and the pathwise second derivative misses the kink, as
# documented).

STEPS = ("round", "floor", "ceil", "sign", "gt", "where", "mod")
KINKS = ("relu", "abs", "clip", "maximum")
EDGE_FORMS = STEPS + KINKS + ("square",)
_WIDE = 40.0  # the outermost pieces end here (the normal mass beyond is below 1e-300)


@dataclasses.dataclass(frozen=True)
class EdgeTerm:
    site: int  # which Normal site
    form: str
    c: float  # the breakpoint of gt/where/relu/abs/maximum
    w: float
    beta: float


@dataclasses.dataclass(frozen=True)
class EdgeProgram:
    normals: int
    estimators: tuple  # per Normal site: "auto", or "pathwise" where it meets no step
    keying: tuple  # per site (b first): ("split", n, row) or ("fold", c)
    terms: tuple
    seed: int

    @property
    def theta_dim(self) -> int:
        return 1 + 3 * self.normals + len(self.terms)

    def collision(self):
        """The names of two sites that draw from the same key, or None."""
        seen = {}
        for i, k in enumerate(self.keying):
            ident = k[2] if k[0] == "split" else k[1]  # fold_in(key, i) is split(key, n)[i]
            if ident in seen:
                return edge_name(seen[ident]), edge_name(i)
            seen[ident] = i
        return None

    @property
    def hessian_ok(self) -> bool:
        """No site meets a kink (the costs through a kink are pathwise, also on a site whose
        other costs step: "auto" gives only the costs through a step the score function)."""
        return all(t.form not in KINKS for t in self.terms)


def edge_name(i: int) -> str:
    return "b" if i == 0 else f"x{i}"


def generate_edge(seed: int) -> EdgeProgram:
    rng = random.Random(10_000_019 * (seed + 1))
    normals = rng.randint(1, 2)
    terms = tuple(
        EdgeTerm(
            rng.randrange(normals),
            rng.choice(EDGE_FORMS),
            round(rng.uniform(-0.8, 0.8), 2),
            round(rng.choice([-1, 1]) * rng.uniform(0.5, 1.5), 2),
            round(rng.uniform(-0.8, 0.8), 2),
        )
        for _ in range(rng.randint(1, 3))
    )
    stepped = {t.site for t in terms if t.form in STEPS}
    estimators = tuple(
        "auto" if j in stepped or rng.random() < 0.6 else "pathwise" for j in range(normals)
    )
    # Each site's key is row r of a split into n >= r + 1 keys, or fold_in(key, r) (the same
    # key as row r); a quarter of the programs give two sites the same r.
    rows = rng.sample(range(5), normals + 1)
    if rng.random() < 0.25:
        first, second = rng.sample(range(normals + 1), 2)
        rows[second] = rows[first]
    keying = [
        ("split", rng.randint(r + 1, 6), r) if rng.random() < 0.6 else ("fold", r) for r in rows
    ]
    return EdgeProgram(normals, estimators, tuple(keying), terms, seed)


def edge_key(key, keying):
    if keying[0] == "split":
        return jax.random.split(key, keying[1])[keying[2]]
    return jax.random.fold_in(key, keying[1])


def edge_f(form: str, x, c):
    return {
        "round": lambda: jnp.round(x),
        "floor": lambda: jnp.floor(x),
        "ceil": lambda: jnp.ceil(x),
        "sign": lambda: jnp.sign(x),
        "gt": lambda: (x > c).astype(x.dtype),
        "where": lambda: jnp.where(x > c, 1.0, -1.0),
        "mod": lambda: x % 1.0,
        "relu": lambda: jax.nn.relu(x - c),
        "abs": lambda: jnp.abs(x - c),
        "clip": lambda: jnp.clip(x, -1.0, 1.0),
        "maximum": lambda: jnp.maximum(x, c),
        "square": lambda: x**2,
    }[form]()


def edge_pieces(form: str, c: float) -> list:
    """``f`` as pieces ``(lo, hi, (a0, a1, a2))``: f(x) = a0 + a1 x + a2 x² on [lo, hi)."""
    integers = range(-15, 16)
    if form == "round":
        return (
            [(-_WIDE, -15.5, (0.0, 1.0, 0.0))]
            + [(k - 0.5, k + 0.5, (float(k), 0.0, 0.0)) for k in integers]
            + [(15.5, _WIDE, (0.0, 1.0, 0.0))]
        )
    if form in ("floor", "ceil", "mod"):
        out = [(-_WIDE, -15.0, (0.0, 1.0, 0.0) if form != "mod" else (0.5, 0.0, 0.0))]
        for k in integers[:-1]:
            value = {"floor": (k, 0.0), "ceil": (k + 1, 0.0), "mod": (-k, 1.0)}[form]
            out.append((float(k), k + 1.0, (float(value[0]), value[1], 0.0)))
        return out + [(15.0, _WIDE, (0.0, 1.0, 0.0) if form != "mod" else (0.5, 0.0, 0.0))]
    table = {
        "sign": [(-_WIDE, 0.0, (-1.0, 0, 0)), (0.0, _WIDE, (1.0, 0, 0))],
        "gt": [(-_WIDE, c, (0.0, 0, 0)), (c, _WIDE, (1.0, 0, 0))],
        "where": [(-_WIDE, c, (-1.0, 0, 0)), (c, _WIDE, (1.0, 0, 0))],
        "relu": [(-_WIDE, c, (0.0, 0, 0)), (c, _WIDE, (-c, 1.0, 0))],
        "abs": [(-_WIDE, c, (c, -1.0, 0)), (c, _WIDE, (-c, 1.0, 0))],
        "clip": [
            (-_WIDE, -1.0, (-1.0, 0, 0)),
            (-1.0, 1.0, (0.0, 1.0, 0)),
            (1.0, _WIDE, (1.0, 0, 0)),
        ],
        "maximum": [(-_WIDE, c, (c, 0, 0)), (c, _WIDE, (0.0, 1.0, 0))],
        "square": [(-_WIDE, _WIDE, (0.0, 0, 1.0))],
    }
    return table[form]


def normal_piecewise_expectation(pieces, mu, sigma):
    """E[f(x)], x ~ N(mu, sigma²), for f given by ``edge_pieces``: exact, differentiable."""
    from jax.scipy.stats import norm

    total = 0.0
    for lo, hi, (a0, a1, a2) in pieces:
        alpha, beta = (lo - mu) / sigma, (hi - mu) / sigma
        pa, pb = norm.pdf(alpha), norm.pdf(beta)
        m0 = norm.cdf(beta) - norm.cdf(alpha)
        m1 = pa - pb
        m2 = m0 + alpha * pa - beta * pb
        total = total + (a0 + a1 * mu + a2 * mu**2) * m0 + (a1 + 2 * a2 * mu) * sigma * m1
        total = total + a2 * sigma**2 * m2
    return total


def edge_normal_params(program: EdgeProgram, theta, j: int, b):
    t = theta[1 + 3 * j :]
    return t[0] + t[1] * b, jnp.exp(0.3 * t[2])


def make_edge_fn(program: EdgeProgram):
    def fn(theta, key):
        b = scg.sample(
            edge_key(key, program.keying[0]), D.Bernoulli(logits=theta[0]), name=edge_name(0)
        )
        xs = [
            scg.sample(
                edge_key(key, program.keying[1 + j]),
                D.Normal(*edge_normal_params(program, theta, j, b)),
                estimator=program.estimators[j],
                name=edge_name(1 + j),
            )
            for j in range(program.normals)
        ]
        slot = 1 + 3 * program.normals
        return sum(
            (t.w + theta[slot + i]) * edge_f(t.form, xs[t.site], t.c) * (1.0 + t.beta * b)
            for i, t in enumerate(program.terms)
        )

    return fn


def edge_exact(program: EdgeProgram):
    def expectation(theta):
        p = jax.nn.sigmoid(theta[0])
        slot = 1 + 3 * program.normals
        total = 0.0
        for b, pb in ((0.0, 1.0 - p), (1.0, p)):
            for i, t in enumerate(program.terms):
                mu, sigma = edge_normal_params(program, theta, t.site, b)
                ef = normal_piecewise_expectation(edge_pieces(t.form, t.c), mu, sigma)
                total = total + pb * (t.w + theta[slot + i]) * ef * (1.0 + t.beta * b)
        return total

    return expectation


def edge_theta(program: EdgeProgram):
    rng = np.random.default_rng(program.seed + 7)
    return jnp.asarray(rng.uniform(-1.0, 1.0, program.theta_dim), jnp.float32)


def check_edge(program: EdgeProgram, n: int, z: float) -> list:
    """Problems found in one edge program (empty when it passes)."""
    fn, theta = make_edge_fn(program), edge_theta(program)
    collision = program.collision()
    if collision is not None:
        try:
            scg.grad(fn)(theta, jax.random.key(0))
        except scg.SiteError as err:
            names = [f"site '{name}'" for name in collision]
            if not all(name in str(err) for name in names) or "same key" not in str(err):
                return [f"collision {collision} refused with another message: {err}"]
            return []
        return [f"sites {collision} draw from one key and were not refused"]
    problems = []
    exact = edge_exact(program)
    keys = jax.random.split(jax.random.key(20_000 + program.seed), n)
    with warnings.catch_warnings():
        warnings.simplefilter("error", scg.FallbackWarning)
        grads = jax.jit(jax.vmap(scg.grad(fn), (None, 0)))(theta, keys)
        checks = {"grad": (grads, jax.grad(exact)(theta))}
        if program.hessian_ok:
            h_keys = jax.random.split(jax.random.key(30_000 + program.seed), n)
            hs = jax.jit(jax.vmap(jax.hessian(scg.surrogate(fn)), (None, 0)))(theta, h_keys)
            checks["hessian"] = (hs.reshape(n, -1), jax.hessian(exact)(theta).ravel())
    for what, (samples, want) in checks.items():
        samples, want = np.asarray(samples, np.float64), np.asarray(want, np.float64)
        mean, se = samples.mean(0), samples.std(0, ddof=1) / math.sqrt(n)
        if np.any(np.abs(mean - want) > z * se + 1e-4 * (1 + np.abs(want))):
            problems.append(f"MC {what}: mean {mean} exact {want} se {se}")
    return problems


def z_threshold(n_tests: int) -> float:
    return 5.0 + math.sqrt(2.0 * math.log(max(n_tests, 1)))


def check(program: Program, n: int, z: float, hessian: bool) -> list:
    """Problems found in one program (empty when it passes)."""
    problems = []
    for what, (samples, exact) in monte_carlo(program, n, program.seed, hessian).items():
        mean = samples.mean(0)
        se = samples.std(0, ddof=1) / math.sqrt(n)
        tol = z * se + 1e-4 * (1 + np.abs(exact))
        if np.any(np.abs(mean - exact) > tol):
            problems.append(f"MC {what}: mean {mean} exact {exact} se {se}")
    if program.loop is not None:
        mismatch = fission_mismatch(program)
        if mismatch > 1e-4:
            problems.append(f"estimates with and without loop fission differ: {mismatch}")
    exact = exact_check(program)
    if exact is not None:
        if exact["causal_mismatch"] > 1e-4:
            problems.append(
                f"planted estimate differs from causal DiCE: {exact['causal_mismatch']}"
            )
        for what in ("grad", "hessian"):
            got, want = exact[what]
            if not np.allclose(got, want, rtol=1e-3, atol=1e-4):
                problems.append(f"exact {what}: {got} vs {want}")
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description="Fuzz jax_scg against exact answers.")
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--edge-programs", type=int, default=None, help="default: programs/4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=20_000)
    args = parser.parse_args(argv)
    n_edge = args.programs // 4 if args.edge_programs is None else args.edge_programs
    z = z_threshold(args.programs * 50 + n_edge * 60)
    failed = edge_failed = refused = 0
    for i in range(args.programs):
        program = generate(args.seed + i)
        problems = check(program, args.samples, z, hessian=i % 3 == 0)
        if problems:
            failed += 1
            print(f"program {args.seed + i} FAILED: {program}\n  " + "\n  ".join(problems))
        if (i + 1) % 50 == 0:
            print(f"{i + 1 - failed} of {i + 1} programs passed so far", flush=True)
    for i in range(n_edge):
        program = generate_edge(args.seed + i)
        refused += program.collision() is not None
        problems = check_edge(program, args.samples, z)
        if problems:
            edge_failed += 1
            print(f"edge program {args.seed + i} FAILED: {program}\n  " + "\n  ".join(problems))
        if (i + 1) % 50 == 0:
            print(f"{i + 1 - edge_failed} of {i + 1} edge programs passed so far", flush=True)
    print(f"{args.programs - failed} of {args.programs} programs passed")
    print(
        f"{n_edge - edge_failed} of {n_edge} edge programs passed "
        f"({refused} with colliding keys, to be refused)"
    )
    return 1 if failed or edge_failed else 0


if __name__ == "__main__":
    sys.exit(main())
