"""The notebooks run end to end at their small size, and are committed without outputs.

Each notebook asserts its own claims (Monte Carlo means against exact values, learning
progress), so executing it is the test. ``JAX_SCG_NOTEBOOK_SIZE=small`` is what CI runs;
``default`` and ``large`` are for people.
"""

import pathlib

import nbclient
import nbformat
import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
EXPECTED = [
    "01_figure1.ipynb",
    "02_variational_inference.ipynb",
    "03_policy_gradient.ipynb",
    "04_hard_attention.ipynb",
    "05_higher_order.ipynb",
    "06_lola_dice.ipynb",
]


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: cell {index} has outputs; strip them"
            assert cell.execution_count is None, f"{name}: cell {index} has an execution count"


@pytest.mark.parametrize("name", EXPECTED)
def test_first_code_cell_is_the_size_knob(name):
    first = next(cell for cell in _read(name).cells if cell.cell_type == "code")
    assert 'os.environ.get("JAX_SCG_NOTEBOOK_SIZE", "default")' in first.source
    for size in ("small", "default", "large"):
        assert f'"{size}"' in first.source


@pytest.mark.parametrize("name", EXPECTED)
def test_executes_at_small_size(name, monkeypatch):
    monkeypatch.setenv("JAX_SCG_NOTEBOOK_SIZE", "small")
    nb = _read(name)
    client = nbclient.NotebookClient(
        nb,
        timeout=None,  # no wall-clock limit: a loaded machine is slow, not wrong
        startup_timeout=3600,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    errors = [
        output
        for cell in nb.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
