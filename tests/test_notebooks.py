"""The notebooks run end to end at their small size, and are committed with the outputs of
their current code cells at default size.

Each notebook asserts its own claims (Monte Carlo means against exact values, learning
progress), so executing it is the test. ``JAX_SCG_NOTEBOOK_SIZE=small`` is what CI runs;
``default`` and ``large`` are for people. The stored outputs (for readers browsing the
repository and the documentation site) come from ``notebooks/execute.py`` at default size,
which records a hash of the code cells: editing a cell without executing the notebook again
fails here.
"""

import importlib.util
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
    "07_sequence_rl.ipynb",
]


# Notebooks stored without outputs (and without a hash) until someone executes them with
# notebooks/execute.py; every other notebook must carry outputs from its current code.
NOT_YET_EXECUTED: list[str] = []

_spec = importlib.util.spec_from_file_location("_execute", NOTEBOOKS / "execute.py")
_execute = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_execute)


def _read(name):
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_notebooks_are_there():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_stored_outputs_come_from_the_current_code_cells(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    stored = nb.metadata.get("jax_scg", {})
    if name in NOT_YET_EXECUTED:
        assert stored == {}, f"{name} carries a hash: remove it from NOT_YET_EXECUTED"
        for index, cell in enumerate(code):
            assert cell.outputs == [], f"{name}: code cell {index} has outputs; strip them"
            assert cell.execution_count is None, f"{name}: code cell {index} has a count"
        return
    rerun = f"run: .venv/bin/python notebooks/execute.py notebooks/{name}"
    assert stored.get("code_sha256") == _execute.code_sha256(nb), (
        f"{name}: its code cells changed since its outputs were stored; {rerun}"
    )
    assert stored.get("size") == "default", f"{name}: not executed at default size; {rerun}"
    assert all(cell.execution_count is not None for cell in code if cell.source.strip()), (
        f"{name}: a code cell was not executed; {rerun}"
    )
    assert any(cell.outputs for cell in code), f"{name}: no outputs stored; {rerun}"
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{name}: a stored output is an error"


def test_the_hash_sees_every_code_cell_edit():
    nb = _read(EXPECTED[0])
    before = _execute.code_sha256(nb)
    first = next(cell for cell in nb.cells if cell.cell_type == "code")
    first.source += "\n"
    assert _execute.code_sha256(nb) != before
    first.source = first.source[:-1]
    first.outputs = []
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("outputs and markdown do not count"))
    assert _execute.code_sha256(nb) == before


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
