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
