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
