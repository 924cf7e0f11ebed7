"""The ``slow`` marker: every test module not listed in ``FAST_MODULES`` is slow.

``pytest -m "not slow"`` (with ``-n 2``, a few minutes on 2 cores) runs the fast modules and
the docstring examples: errors, keys, the graph, the misuse catalogue, packaging, Monte Carlo
statistics. The slow modules hold the statistical checks at many keys, the notebooks, the
benchmark smoke runs and the tests that start processes; CI runs everything.
"""

import pathlib

import pytest

FAST_MODULES = frozenset(
    """test_condition test_docs test_errors test_graph test_keys test_misuse_catalogue
    test_monte_carlo test_packaging""".split()
)


def pytest_collection_modifyitems(config, items):
    del config
    for item in items:
        path = pathlib.Path(str(item.fspath))
        if path.parent.name == "tests" and path.stem not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)
