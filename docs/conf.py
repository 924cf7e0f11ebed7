"""Sphinx configuration for the jax_scg documentation.

Built with Sphinx and MyST-NB, as JAX and optax build theirs: ``sphinx.ext.napoleon`` reads
the Google-style docstrings (``Args:``, ``Returns:``, ``Examples:``), autosummary generates
the API reference from them, and MyST-NB renders Markdown pages and the notebooks in
``notebooks/`` with their stored outputs (it never executes them: ``nb_execution_mode``
is ``"off"``; ``notebooks/execute.py`` stores the outputs). Build, warnings as errors:

    .venv/bin/pip install -e ".[docs]"
    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
"""

import pathlib
import shutil

import jax_scg

ROOT = pathlib.Path(__file__).resolve().parent.parent

# The notebooks live in notebooks/ (outside Sphinx's source directory): copy them in.
_NOTEBOOKS = pathlib.Path(__file__).resolve().parent / "_notebooks"
_NOTEBOOKS.mkdir(exist_ok=True)
for _stale in _NOTEBOOKS.glob("*.ipynb"):
    if not (ROOT / "notebooks" / _stale.name).exists():
        _stale.unlink()
for _notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
    _copy = _NOTEBOOKS / _notebook.name
    if not _copy.exists() or _copy.read_bytes() != _notebook.read_bytes():
        shutil.copyfile(_notebook, _copy)

project = "jax_scg"
author = "jax_scg authors"
copyright = "jax_scg authors"
release = version = jax_scg.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",
]

exclude_patterns = ["_build", "README.md", "**.ipynb_checkpoints"]
# .rst first: autosummary writes its generated pages with the first suffix.
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Notebooks: render the stored outputs, never execute (CI executes them in tests/).
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_typehints = "description"
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "sphinx_book_theme"
html_title = "jax_scg"
html_theme_options = {"show_toc_level": 2}
