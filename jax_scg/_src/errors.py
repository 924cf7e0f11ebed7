"""Error types and the one place where messages about a site are worded."""

from __future__ import annotations


class SiteError(ValueError):
    """A `scg.sample` site was used in a way that would give a wrong or undefined gradient.

    The message names the site (its ``name=``, or its distribution and source line) and says
    what to do instead.
    """


def site_message(label: str, problem: str, fix: str) -> str:
    """Formats an error message about one site: which site, what is wrong, what to do."""
    return f"jax_scg: site {label}: {problem}\n  What to do: {fix}"
