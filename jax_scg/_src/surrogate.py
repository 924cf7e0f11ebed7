"""The public transformations: ``surrogate``, ``grad`` and ``value_and_grad``."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jax_scg._src import discontinuities, interpreter, primitive, unscored
from jax_scg._src.jaxpr import is_differentiated, scope_from_jaxpr


def _function_name(fn) -> str:
    return getattr(fn, "__qualname__", getattr(fn, "__name__", repr(fn)))


def _is_jax_value(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, bool, int, float, complex))


def _is_float_value(x) -> bool:
    return _is_jax_value(x) and jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def _dynamic_leaves(args) -> list:
    """The leaves of the positional arguments that JAX traces: arrays and numbers. Others
    (a model's activation functions, flags inside a module) are static, as for Equinox."""
    return [leaf for leaf in jax.tree_util.tree_leaves(args) if _is_jax_value(leaf)]


def over_array_leaves(fn, args):
    """``fn`` as a function of the leaves of ``args`` that JAX traces (``_dynamic_leaves``),
    and those leaves; the other leaves (a model's activation functions) are fixed."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    dynamic = [_is_jax_value(leaf) for leaf in leaves]

    def over_arrays(*values):
        it = iter(values)
        full = [next(it) if d else leaf for leaf, d in zip(leaves, dynamic)]
        return fn(*jax.tree_util.tree_unflatten(tree, full))

    return over_arrays, [leaf for leaf, d in zip(leaves, dynamic) if d]


# While a jax_scg transformation traces a user's program (``_trace``): a list, to which the
# derivative rule of every jax_scg surrogate differentiated inside that program appends.
_DERIVATIVES_TRACED = contextvars.ContextVar("jax_scg_derivatives_traced", default=None)


def _trace(fn, args, kwargs):
    """``fn``'s program over its positional arguments: ``(scope, output shape, flat args,
    nests)``, ``nests`` telling whether the program computes a jax_scg derivative itself
    (``scg.grad`` of a function that calls ``scg.grad``).

    Keyword arguments are fixed, not traced, as ``jax.grad`` passes them through without
    differentiating them (they may be Python values such as sizes or flags). Leaves of the
    positional arguments that are not arrays or numbers are fixed too (``_dynamic_leaves``).
    """
    traced = functools.partial(fn, **kwargs) if kwargs else fn
    over_dynamic, flat_args = over_array_leaves(traced, args)
    token = _DERIVATIVES_TRACED.set([])
    try:
        closed, out_shape = primitive.tracing_for_sites(
            getattr(fn, "__name__", _function_name(fn)),
            lambda: jax.make_jaxpr(over_dynamic, return_shape=True)(*flat_args),
        )
        nests = bool(_DERIVATIVES_TRACED.get())
    finally:
        _DERIVATIVES_TRACED.reset(token)
    scope = scope_from_jaxpr(closed.jaxpr, closed.consts)
    discontinuities.mark_discontinuous_sites(scope)
    return scope, out_shape, flat_args, nests


def _differentiate(f, argnums, has_aux: bool, with_value: bool):
    """``jax.grad`` (or ``jax.value_and_grad``) of ``f``, where the differentiated arguments
    may be models: pytrees with leaves that are not floating-point arrays (an Equinox or Flax
    NNX module's functions, an optax state's integer step count). Then every leaf that is not
    a floating-point array gets None, as with ``equinox.filter_grad``; an argument that is a
    single array or number follows ``jax.grad``'s rules (an integer one is an error)."""
    transform = jax.value_and_grad if with_value else jax.grad
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def run(*args, **kwargs):
        parts = [jax.tree_util.tree_flatten(args[i]) for i in positions]
        if all(jax.tree_util.treedef_is_leaf(tree) for _, tree in parts):
            # One array each: jax.grad's own rules (an integer argument is an error, not None).
            return transform(f, argnums=argnums, has_aux=has_aux)(*args, **kwargs)
        masks = [[_is_float_value(leaf) for leaf in leaves] for leaves, _ in parts]
        diff = [[x for x, m in zip(leaves, mask) if m] for (leaves, _), mask in zip(parts, masks)]

        def rebuild(values, fill=None):
            trees = []
            for (leaves, tree), mask, vals in zip(parts, masks, values):
                it = iter(vals)
                full = [next(it) if m else (leaf if fill is None else None) for leaf, m in
                        zip(leaves, mask)]  # fmt: skip
                trees.append(jax.tree_util.tree_unflatten(tree, full))
            return trees

        def inner(diff_values):
            full = list(args)
            for i, value in zip(positions, rebuild(diff_values)):
                full[i] = value
            return f(*full, **kwargs)

        out = transform(inner, has_aux=has_aux)(diff)
        grads_at = (lambda o: o[1]) if with_value else (lambda o: o[0] if has_aux else o)
        grads = rebuild(grads_at(out), fill="none")
        grads = grads[0] if isinstance(argnums, int) else tuple(grads)
        if with_value:
            return out[0], grads
        return (grads, out[1]) if has_aux else grads

    return run


def _check_objective(fn, shape):
    leaves = jax.tree_util.tree_leaves(shape)
    ok = (
        len(leaves) == 1
        and not isinstance(shape, (tuple, list, dict))
        and leaves[0].shape == ()
        and jnp.issubdtype(leaves[0].dtype, jnp.inexact)
    )
    if not ok:
        got = jax.tree_util.tree_map(lambda s: f"{s.dtype}{list(s.shape)}", shape)
        raise TypeError(
            f"jax_scg: {_function_name(fn)} must return a scalar float objective (the cost to "
            f"differentiate in expectation), got {got}.\n  What to do: reduce it to one number "
            "(e.g. .sum() or .mean()); to get per-example gradients, jax.vmap the transformed "
            "function; to return other values too, use has_aux=True and return (objective, aux)."
        )


def _options(validate, baselines, fission, **more) -> interpreter.Options:
    if not (fission is True or fission is False or fission == "auto"):
        raise ValueError(
            f"jax_scg: fission={fission!r} is not one of True, False and 'auto'.\n  What to "
            "do: leave it at 'auto' (the default), or pass True or False to force a strategy."
        )
    names = types.MappingProxyType(dict(baselines or {}))
    return interpreter.Options(validate=validate, baselines=names, fission=fission, **more)


def surrogate(
    fn,
    *,
    has_aux: bool = False,
    validate: bool = False,
    baselines=None,
    fission: bool | str = "auto",
):
    """Turns ``fn`` into a surrogate objective whose derivatives estimate those of E[fn].

    ``fn`` is traced to a jaxpr; its ``scg.sample`` sites, its cost nodes (the summands of the
    returned objective, found from its additive structure) and the influence between them
    are read from the dataflow, and the surrogate

        L = sum over cost nodes c of  magic_box(sum of log p(w) for score-function sites w
                                                 that influence c) * c

    is evaluated on the same random draws. Its value equals ``fn``'s value; its derivatives
    of every order are unbiased estimators of the derivatives of E[fn] (DiCE, Foerster et al.
    2018; per-cost causality as in Schulman et al. 2015). It composes with ``jax.jit``,
    ``jax.vmap`` and any JAX differentiation.

    Args:
      fn: a function of arrays (pytrees allowed) returning a scalar float, or a pair
        ``(scalar, aux)`` when ``has_aux`` is true.
      has_aux: whether ``fn`` returns ``(objective, aux)``; ``aux`` is returned unchanged.
      validate: add runtime checks (``jax.experimental.checkify``) that every site's
        parameters are valid and its drawn value has a finite log-probability. Off by
        default. Under ``jit``, wrap the transformed function with ``checkify.checkify`` and
        call ``err.throw()``; eagerly, a failed check raises at once.
      baselines: optional ``{site name: baseline}`` for named score-function sites, used as
        if passed to ``sample(..., baseline=...)`` (see ``jax_scg.baselines``).
      fission: how derivatives treat ``lax.scan`` loops whose carries carry no derivative
        (rollouts whose dynamics do not depend on the parameters). ``True``: split them, so
        that log-probabilities, baselines, costs and magic boxes are computed after the
        loop, vectorised over iterations: derivatives of any order then need no backward
        pass through the loop. ``False``: keep every loop as written. ``"auto"`` (the
        default): split them for derivatives that are differentiated again (Hessians,
        look-ahead gradients) and for every derivative on GPU and TPU; a first-order
        derivative on CPU keeps the loop as written, which is faster there. Values and
        derivatives are the same in every case (up to float rounding); see the README's
        "Loops" section.

    Returns:
      A function with the same signature returning the surrogate (and ``aux``).

    Examples:
      >>> import jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=theta))
      ...     return (x - 0.25) ** 2
      >>> key = jax.random.key(0)
      >>> bool(scg.surrogate(f)(0.3, key) == f(0.3, key))
      True
    """

    return _surrogate(fn, has_aux, _options(validate, baselines, fission))


def _surrogate(fn, has_aux: bool, options: interpreter.Options):
    """``surrogate`` for a given ``interpreter.Options`` value."""

    @functools.wraps(fn)
    def surrogate_fn(*args, **kwargs):
        scope, out_shape, flat_args, nests = _trace(fn, args, kwargs)
        if has_aux:
            if not (isinstance(out_shape, (tuple, list)) and len(out_shape) == 2):
                raise TypeError(
                    f"jax_scg: {_function_name(fn)} was given has_aux=True, so it must return "
                    "a pair (objective, aux)."
                )
            _check_objective(fn, out_shape[0])
        else:
            _check_objective(fn, out_shape)
        if options.fit_baselines and not scope.has_baselines():
            raise ValueError(
                f"jax_scg: critic_argnums was given for {_function_name(fn)}, but none of its "
                "sample calls has a baseline= to fit.\n  What to do: pass baseline=V(state) "
                "computed from the critic's parameters to the sites it should serve, or drop "
                "critic_argnums."
            )
        if options.baselines:
            _check_baseline_names(fn, scope, options.baselines)
        differentiated = [is_differentiated(a) for a in flat_args]
        unscored.warn_unscored_draws(scope, differentiated, _function_name(fn))
        named = {*options.baselines, *options.log_prob_offsets}
        if named:
            discontinuities.unsplit_named_sites(scope, named)
        objective, outputs = _evaluate(scope, flat_args, _nested(options, nests))
        if not has_aux:
            return objective
        aux_tree = jax.tree_util.tree_structure(out_shape[1])
        return objective, jax.tree_util.tree_unflatten(aux_tree, outputs[1:])

    return surrogate_fn


def _has_loop(scope) -> bool:
    return any(eqn.name == "scan" or any(map(_has_loop, eqn.subs)) for eqn in scope.eqns)


def fissioned_derivative(fission, platform: str, differentiated: bool) -> bool:
    """Whether a derivative of a surrogate with loops uses the fissioned rewrite.

    Args:
      fission: the user's setting: ``True``, ``False`` or ``"auto"``.
      platform: the default backend (``"cpu"``, ``"gpu"``, ``"tpu"``).
      differentiated: whether the surrogate's inputs are themselves being differentiated
        (the derivative asked for is part of one of order two or more: a Hessian, a
        look-ahead gradient).

    Returns:
      For ``"auto"``: the fissioned rewrite for every derivative off CPU (it loops over time
      once, where the loop as written needs a second, backward loop) and, on CPU, for the
      derivatives that will be differentiated again (no nested backward loops); a
      first-order derivative on CPU differentiates the loop as written, which is faster
      there for rollouts with a cheap step (``benchmarks/RESULTS.md``). Values are equal
      either way.
    """
    if fission == "auto":
        return platform != "cpu" or differentiated
    return bool(fission)


# True while a fissioned derivative is being traced: the surrogates evaluated inside its
# program (the outer objective of a look-ahead that ``_nested`` fissioned) are fissioned too.
_INSIDE_FISSIONED_DERIVATIVE = contextvars.ContextVar("jax_scg_inside_fissioned", default=False)


def _nested(options: interpreter.Options, nests: bool) -> interpreter.Options:
    """``options`` for a program that computes jax_scg derivatives itself (``nests``): with
    ``fission="auto"``, all of its derivatives fissioned too (the LOLA-DiCE update,
    ``benchmarks/lola.py``: with its outer derivative taken through the episodes as written
    it took 1.2x the time and 1.26x the memory of the fissioned program at one look-ahead)."""
    if nests and options.fission == "auto":
        return dataclasses.replace(options, fission=True)
    return options


def _evaluate(scope, flat_args, options: interpreter.Options):
    """``interpreter.evaluate_surrogate``; with fission, the loops as written give the value
    and the fissioned rewrite gives the derivatives (a ``custom_jvp``) that
    ``fissioned_derivative`` picks, so a forward pass alone costs what the unfissioned
    surrogate costs."""
    if not (options.fission and _has_loop(scope)):
        return interpreter.evaluate_surrogate(scope, flat_args, options)
    # Arrays the options carry (baselines and offsets by name, possibly traced and
    # differentiated) enter the custom_jvp as arguments, never as closed-over values.
    carried = (dict(options.baselines), dict(options.log_prob_offsets))
    carried_leaves, carried_tree = jax.tree_util.tree_flatten(carried)
    carried_leaves = [jnp.asarray(x) for x in carried_leaves]
    n = len(flat_args)

    def flat(fission: bool):
        def run(*args):
            baselines, offsets = jax.tree_util.tree_unflatten(carried_tree, args[n:])
            opts = dataclasses.replace(
                options,
                fission=fission,
                baselines=types.MappingProxyType(baselines),
                log_prob_offsets=types.MappingProxyType(offsets),
            )
            objective, outputs = interpreter.evaluate_surrogate(scope, list(args[:n]), opts)
            return (objective, *outputs)

        return run

    def derivative(primals, tangents):
        # Differentiated again: by an enclosing jvp/grad, or by the jax_scg rewrite whose
        # program is being traced (``scg.grad`` of a function that calls ``scg.grad``).
        traced_by_a_rewrite = _DERIVATIVES_TRACED.get()
        if traced_by_a_rewrite is not None:
            traced_by_a_rewrite.append(True)
        again = (
            is_differentiated(primals)
            or traced_by_a_rewrite is not None
            or _INSIDE_FISSIONED_DERIVATIVE.get()
        )
        fissioned = fissioned_derivative(options.fission, jax.default_backend(), again)
        token = _INSIDE_FISSIONED_DERIVATIVE.set(fissioned)
        try:
            return jax.jvp(flat(fissioned), primals, tangents)
        finally:
            _INSIDE_FISSIONED_DERIVATIVE.reset(token)

    value = jax.custom_jvp(flat(False))
    value.defjvp(derivative)
    objective, *outputs = value(*flat_args, *carried_leaves)
    return objective, outputs


def _check_baseline_names(fn, scope, baselines):
    names = {eqn.params["site"].name for eqn in scope.sites()}
    unknown = sorted(set(baselines) - names)
    if unknown:
        known = sorted(n for n in names if n is not None)
        raise ValueError(
            f"jax_scg: baselines were given for {unknown}, but {_function_name(fn)} has no "
            f"sample call with {'that name' if len(unknown) == 1 else 'those names'} (named "
            f"sites: {known}).\n  What to do: pass name=... to the sample calls, or fix the "
            "names."
        )


def grad(
    fn,
    argnums=0,
    *,
    has_aux: bool = False,
    validate: bool = False,
    baselines=None,
    critic_argnums=None,
    fission: bool | str = "auto",
):
    """An unbiased estimator of the gradient of E[fn]; conventions of ``jax.grad``.

    ``validate``, ``baselines`` and ``fission`` are as in ``surrogate``.

    Args:
      fn: as in ``surrogate``.
      argnums: which positional arguments to differentiate, as in ``jax.grad``. They may be
        models (an Equinox or Flax NNX module, an optax state, any pytree): then every leaf
        that is not a floating-point array (activation functions, integer arrays) gets
        ``None`` as its gradient, as with ``equinox.filter_grad``, where ``jax.grad`` would
        refuse the argument. An argument that is one array or number follows ``jax.grad``
        (an integer one is an error).
      has_aux: as in ``jax.grad``.
      validate: as in ``surrogate``.
      baselines: as in ``surrogate``.
      fission: as in ``surrogate``.
      critic_argnums: optional positional argument(s) holding a learned baseline's (a
        critic's) parameters, used by ``sample(..., baseline=V(params, state))`` calls. Then
        the result is a pair ``(gradient, critic_gradient)``: ``gradient`` is the usual
        estimate for ``argnums`` (unchanged by this option), and ``critic_gradient`` is the
        gradient, with respect to ``critic_argnums``, of the critic's squared error
        ``½ Σ_sites Σ_elements (b − Q̂)²`` against each site's downstream cost ``Q̂`` (held
        fixed): descend it to fit the baselines. Both come from the same draws; an
        actor-critic update is one call. With ``has_aux=True`` as well, the result is
        ``((gradient, critic_gradient), aux)``, as ``jax.grad`` nests its auxiliary data.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda mu, key: scg.sample(key, D.Normal(mu, 1.0)) ** 2
      >>> g = scg.grad(f)(1.5, jax.random.key(0))
      >>> g.shape
      ()

      With a learned constant baseline ``psi`` for a site whose downstream cost is 0 or 2 (the
      constant 1 is a cost node of its own, which the site does not influence):

      >>> def loss(theta, psi, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=theta), baseline=psi)
      ...     return 1.0 + 2.0 * x
      >>> g, g_critic = scg.grad(loss, critic_argnums=1)(0.0, 0.5, jax.random.key(1))
      >>> float(g_critic) in (0.5 - 0.0, 0.5 - 2.0)  # b - Q̂
      True
    """
    if critic_argnums is not None:
        value_and_grads = value_and_grad(
            fn,
            argnums,
            has_aux=has_aux,
            validate=validate,
            baselines=baselines,
            critic_argnums=critic_argnums,
            fission=fission,
        )

        def grads_only(*args, **kwargs):
            value, grads = value_and_grads(*args, **kwargs)
            return (grads, value[1]) if has_aux else grads

        return grads_only
    options = _options(validate, baselines, fission)
    return _at_call_time(
        lambda opts: _differentiate(_surrogate(fn, has_aux, opts), argnums, has_aux, False),
        options,
        fn,
    )


def value_and_grad(
    fn,
    argnums=0,
    *,
    has_aux: bool = False,
    validate: bool = False,
    baselines=None,
    critic_argnums=None,
    fission: bool | str = "auto",
):
    """The value of ``fn`` and an unbiased estimate of the gradient of E[fn].

    Same conventions as ``jax.value_and_grad``; the value is ``fn``'s value on the same key.
    With ``critic_argnums`` (see ``grad``) the gradient is the pair
    ``(gradient, critic_gradient)``. ``validate``, ``baselines`` and ``fission`` are as in
    ``surrogate``.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> f = lambda mu, key: scg.sample(key, D.Normal(mu, 1.0)) ** 2
      >>> value, g = scg.value_and_grad(f)(1.5, jax.random.key(0))
      >>> value.shape, g.shape
      ((), ())
    """
    options = _options(validate, baselines, fission)

    def gradient(opts):
        return _differentiate(_surrogate(fn, has_aux, opts), argnums, has_aux, True)

    if critic_argnums is None:
        return _at_call_time(gradient, options, fn)
    _check_disjoint(fn, argnums, critic_argnums)

    def with_critic(opts):
        fit = _surrogate(fn, has_aux, dataclasses.replace(opts, fit_baselines=True))
        fit_gradient = _differentiate(fit, critic_argnums, has_aux, False)

        def both(*args, **kwargs):
            value, grads = gradient(opts)(*args, **kwargs)
            fitted = fit_gradient(*args, **kwargs)
            fitted = fitted[0] if has_aux else fitted
            critic = jax.tree_util.tree_map(jnp.negative, fitted)
            return value, (grads, critic)

        return both

    return _at_call_time(with_critic, options, fn)


def _check_disjoint(fn, argnums, critic_argnums):
    as_set = lambda a: {a} if isinstance(a, int) else set(a)  # noqa: E731
    overlap = as_set(argnums) & as_set(critic_argnums)
    if overlap:
        raise ValueError(
            f"jax_scg: argnums and critic_argnums of {_function_name(fn)} share {sorted(overlap)}."
            "\n  What to do: keep the critic's parameters in an argument of their own."
        )


def _at_call_time(make_gradient, options: interpreter.Options, fn):
    """``make_gradient(options)`` applied to the call's arguments, with the options completed
    by what only the call shows: whether this gradient is itself reverse-differentiated."""

    @functools.wraps(fn)
    def gradient(*args, **kwargs):
        trace = jex_core.find_top_trace(jax.tree_util.tree_leaves((args, kwargs)))
        outer_reverse = type(trace).__name__ == "LinearizeTrace"
        opts = dataclasses.replace(options, reverse_over_reverse=outer_reverse)
        return make_gradient(opts)(*args, **kwargs)

    return gradient


def grad_and_downstream_costs(
    fn,
    argnums=0,
    *,
    has_aux: bool = False,
    validate: bool = False,
    baselines=None,
    fission: bool | str = "auto",
):
    """``scg.grad`` and ``scg.downstream_costs`` from one trace and the same draws.

    What a baseline update needs beside the estimate: e.g. the downstream costs that update
    a moving average (``jax_scg.baselines.moving_average``) of the baselines passed by name.
    The gradient equals ``scg.grad(fn, argnums, ...)`` on the same arguments; the costs are
    ``{name: Q̂}`` for every named score-function site at the top level, as
    ``scg.downstream_costs`` returns them (values, no gradient; baselines do not change them).

    Args:
      fn: as in ``surrogate``.
      argnums: as in ``grad``.
      has_aux: as in ``grad``.
      validate: as in ``surrogate``.
      baselines: as in ``surrogate``.
      fission: as in ``surrogate``.

    Returns:
      A function with ``fn``'s signature returning ``(gradient, costs)``, or
      ``((gradient, costs), aux)`` with ``has_aux``.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=theta), name="x")
      ...     return 1.0 + 2.0 * x
      >>> g, costs = scg.grad_and_downstream_costs(f)(0.0, jax.random.key(0))
      >>> g.shape, sorted(costs), float(costs["x"]) in (0.0, 2.0)
      ((), ['x'], True)
    """
    options = _options(validate, baselines, fission)
    positions = (argnums,) if isinstance(argnums, int) else tuple(argnums)

    def make(opts):
        def both(*args, **kwargs):
            scope, out_shape, _, nests = _trace(fn, args, kwargs)
            _check_objective(fn, out_shape[0] if has_aux else out_shape)
            shapes = interpreter.named_score_sites(scope)
            if not shapes:
                raise ValueError(_NO_NAMED_SITES.format(name=_function_name(fn)))
            if opts.baselines:
                _check_baseline_names(fn, scope, opts.baselines)
            discontinuities.unsplit_named_sites(scope, {*opts.baselines, *shapes})

            def objective(*call_args):  # fn's arguments, then the offsets
                *user_args, offsets = call_args
                with_offsets = dataclasses.replace(_nested(opts, nests), log_prob_offsets=offsets)
                value, outputs = _evaluate(scope, _dynamic_leaves(user_args), with_offsets)
                aux_tree = jax.tree_util.tree_structure(out_shape[1]) if has_aux else None
                aux = jax.tree_util.tree_unflatten(aux_tree, outputs[1:]) if has_aux else None
                return value, aux

            dtype = jnp.result_type(float)
            zeros = {name: jnp.zeros(shape, dtype) for name, shape in shapes.items()}
            wrt = (*positions, len(args))  # models as arguments too (see grad)
            (*g, costs), aux = _differentiate(objective, wrt, True, False)(*args, zeros)
            g = g[0] if isinstance(argnums, int) else tuple(g)
            result = (g, jax.lax.stop_gradient(costs))
            return (result, aux) if has_aux else result

        return both

    return _at_call_time(make, options, fn)


_NO_NAMED_SITES = (
    "jax_scg: {name} has no named score-function site at its top level, so there are no "
    "downstream costs to report.\n  What to do: pass name=... to the sample calls whose "
    "downstream costs you want."
)


def downstream_costs(fn, *, has_aux: bool = False, stop_gradient: bool = True):
    """The downstream cost Q̂ of every named score-function site: what its score multiplies.

    Q̂ is the sum of the costs (the objective's summands, with their linear coefficients)
    that the site influences, elementwise for a vectorised site with per-element credit. It
    is what a baseline should approximate; ``jax_scg.baselines`` builds on it. Named sites
    inside loops or branches are not reported.

    Args:
      fn: the program, as for ``surrogate``.
      has_aux: whether ``fn`` returns ``(objective, aux)``.
      stop_gradient: return values without a derivative (the default); ``False`` returns
        each Q̂ as a DiCE surrogate of itself, whose derivatives of every order estimate
        those of the site's expected downstream cost.

    Returns:
      A function with ``fn``'s signature returning ``{name: Q̂}``.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     x = scg.sample(key, D.Bernoulli(logits=theta), name="x")
      ...     return 1.0 + 2.0 * x
      >>> costs = scg.downstream_costs(f)(0.0, jax.random.key(0))
      >>> sorted(costs), float(costs["x"]) in (0.0, 2.0)
      (['x'], True)
    """

    def costs_fn(*args, **kwargs):
        scope, out_shape, flat_args, _ = _trace(fn, args, kwargs)
        _check_objective(fn, out_shape[0] if has_aux else out_shape)
        shapes = interpreter.named_score_sites(scope)

        def objective(offsets):
            options = interpreter.Options(log_prob_offsets=offsets)
            return interpreter.evaluate_surrogate(scope, flat_args, options, with_baselines=False)[
                0
            ]

        if not shapes:
            raise ValueError(_NO_NAMED_SITES.format(name=_function_name(fn)))
        dtype = jnp.result_type(float)
        zeros = {name: jnp.zeros(shape, dtype) for name, shape in shapes.items()}
        costs = jax.grad(objective)(zeros)
        return jax.lax.stop_gradient(costs) if stop_gradient else costs

    return costs_fn
