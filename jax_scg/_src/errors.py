"""Error types and the one place where messages about a site are worded."""

from __future__ import annotations

import os
import sys

import jax

_LIBRARY_DIRS = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (sys.modules[__name__.rsplit("._src", 1)[0]], jax)
)


class SiteError(ValueError):
    """A `scg.sample` site was used in a way that would give a wrong or undefined gradient.

    The message names the site (its ``name=``, or its distribution and source line) and says
    what to do instead.

    Examples:
      >>> import jax, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> try:
      ...     scg.sample(jax.random.key(0), D.Bernoulli(logits=0.0), estimator="pathwise", name="x")
      ... except scg.SiteError as err:
      ...     print(str(err).splitlines()[0][:39])
      jax_scg: site 'x': estimator="pathwise"
    """


def user_stacklevel() -> int:
    """The ``stacklevel`` for ``warnings.warn`` that names the first frame of the caller's code
    (outside jax_scg and JAX), so that a warning points at the user's call."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def site_message(label: str, problem: str, fix: str) -> str:
    """Formats an error message about one site: which site, what is wrong, what to do."""
    return f"jax_scg: site {label}: {problem}\n  What to do: {fix}"


class FallbackWarning(UserWarning):
    """The rewrite chose something coarser than the program allows, or than you may expect.

    The estimate stays unbiased; the warning says which site, what was chosen instead and
    why, because the consequence (more variance, or a bias the program itself causes) can
    be large. Each warning is given once per site and trace. Silence a class of them with
    ``warnings.filterwarnings("ignore", category=scg.FallbackWarning)``.

    Examples:
      >>> import warnings, jax, jax.numpy as jnp, jax_scg as scg
      >>> from jax_scg import distributions as D
      >>> def f(theta, key):
      ...     z = scg.sample(key, D.Bernoulli(logits=theta), name="z")
      ...     return jnp.sum(jnp.fft.fft(z).real)  # fft has no per-element rule
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     _ = scg.grad(f)(jnp.zeros(4), jax.random.key(0))
      >>> print(str(caught[0].message).splitlines()[0])
      jax_scg: site 'z': per-element credit falls back to the whole site at `fft`.
    """


class UnscoredDrawWarning(UserWarning):
    """The objective depends on a random choice that no ``sample`` site scores.

    A plain ``jax.random`` draw of parameters that carry the derivative
    (``jax.random.bernoulli(key, p)``, ``categorical(key, logits)``, a comparison of uniform
    noise with them) has derivative zero: its score term is missing and the gradient is
    biased. The warning names the operation and the line; draw it with `scg.sample` instead,
    or pass ``lax.stop_gradient`` of the parameters where an estimator of your own (such as
    straight-through) is meant.

    Examples:
      >>> import warnings, jax, jax_scg as scg
      >>> def f(theta, key):
      ...     return 2.0 * jax.random.bernoulli(key, jax.nn.sigmoid(theta))
      >>> with warnings.catch_warnings(record=True) as caught:
      ...     warnings.simplefilter("always")
      ...     _ = scg.grad(f)(0.0, jax.random.key(0))
      >>> caught[0].category is scg.UnscoredDrawWarning
      True
    """


def traced_control_flow_message(fn_name: str, line: str, code: str, labels, jax_said: str):
    """The message for Python control flow (or a concrete conversion) on a traced value
    inside a transformed function: where, which sites were drawn before, what to do."""
    where = f" at {line}" + (f": `{code}`" if code else "") if line else ""
    if len(labels) == 1:
        sites = (
            f" Site {labels[0]} was drawn before it: if the value depends on its sample, that "
            "is the cause."
        )
    elif labels:
        sites = f" Sites drawn before it: {', '.join(labels)}; a sampled value is the likely cause."
    else:
        sites = ""
    return (
        f"jax_scg: {fn_name} needs a concrete value of a traced array{where}. scg.surrogate, "
        f"scg.grad and scg.value_and_grad trace {fn_name} (as jax.jit does) to find its sample "
        "sites, so sampled values and the differentiated arguments are abstract there: "
        f"Python `if`/`while`, `bool()`, `int()` or NumPy cannot use them.{sites}\n"
        "  What to do: branch with jnp.where(cond, a, b), jax.lax.cond or jax.lax.switch "
        "(jax_scg rewrites those; loops: lax.scan, lax.fori_loop, lax.while_loop); pass "
        "settings that are not differentiated as keyword arguments (they are not traced).\n"
        f"  JAX said: {jax_said}"
    )
