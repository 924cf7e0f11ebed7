"""Error types and the one place where messages about a site are worded."""

from __future__ import annotations


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
