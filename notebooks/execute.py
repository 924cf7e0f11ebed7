"""Execute notebooks at their default size and store the outputs, for readers of the repository.

    .venv/bin/python notebooks/execute.py notebooks/01_figure1.ipynb [more.ipynb ...]

Each notebook is run top to bottom with nbclient (``JAX_SCG_NOTEBOOK_SIZE=default``) and
written back with its outputs and, in ``metadata["jax_scg"]["code_sha256"]``, the hash of its
code cells' sources (``code_sha256``). ``tests/test_notebooks.py`` recomputes that hash, so a
code cell edited without executing the notebook again fails CI. CI itself still executes
each notebook at its small size, from a copy in memory.
"""

import argparse
import hashlib
import os
import pathlib
import sys
import time

import nbclient
import nbformat

NOTEBOOKS = pathlib.Path(__file__).resolve().parent


def code_sha256(nb) -> str:
    """The hash of a notebook's code cells' sources, in order (outputs and markdown excluded)."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        if cell.cell_type == "code":
            source = cell.source.encode()
            digest.update(len(source).to_bytes(8, "little"))
            digest.update(source)
    return digest.hexdigest()


def execute(path: pathlib.Path, size: str = "default") -> float:
    """Executes ``path`` in place at ``size``; returns the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    os.environ["JAX_SCG_NOTEBOOK_SIZE"] = size
    client = nbclient.NotebookClient(
        nb,
        timeout=None,
        startup_timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                raise RuntimeError(f"{path.name}: a cell raised {output.ename}: {output.evalue}")
    nb.metadata["jax_scg"] = {"code_sha256": code_sha256(nb), "size": size}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=pathlib.Path)
    parser.add_argument("--size", default="default", choices=["small", "default", "large"])
    args = parser.parse_args(argv)
    for path in args.notebooks:
        seconds = execute(path.resolve(), args.size)
        print(f"{path.name}: {seconds:.0f} s at size {args.size}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
