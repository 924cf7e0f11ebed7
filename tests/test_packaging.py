"""The package as others depend on it: one version, type information shipped."""

import importlib.metadata
import pathlib

import jax_scg


def test_the_version_is_written_once():
    assert importlib.metadata.version("jax_scg") == jax_scg.__version__


def test_type_information_is_shipped():
    assert (pathlib.Path(jax_scg.__file__).parent / "py.typed").is_file()
    pyproject = (pathlib.Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'jax_scg = ["py.typed"]' in pyproject  # package data: the wheel carries it


def test_the_installed_package_is_the_one_tested():
    """.ci/run tests the built wheel with JAX_SCG_TEST_WHEEL=1: then jax_scg must come from
    site-packages, not from the source tree (a file missing from the wheel would fail)."""
    import os

    if os.environ.get("JAX_SCG_TEST_WHEEL") == "1":
        assert "site-packages" in pathlib.Path(jax_scg.__file__).parts, jax_scg.__file__
    else:
        assert pathlib.Path(jax_scg.__file__).is_file()
