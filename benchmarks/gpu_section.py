"""Writes the GPU section of ``benchmarks/RESULTS.md`` from one ``gpu_check.sh`` run.

    python benchmarks/gpu_section.py DIR [--results benchmarks/RESULTS.md]

``DIR`` is the folder ``gpu_check.sh`` wrote (``OUT``): ``gpu_env.txt`` (the card, JAX, each
step's exit status) and one markdown report per benchmark. The section quotes each report's
tables under its title, with the card's name and the date, between two markers at the end of
RESULTS.md; a later run replaces it, and ``peers.py`` keeps it (it is below its ``KEPT`` line).
"""

from __future__ import annotations

import argparse
import os

START = "<!-- GPU section: written by benchmarks/gpu_section.py from a gpu_check.sh run. -->"
END = "<!-- End of the GPU section. -->"
# (report file, title) in the order gpu_check.sh runs them.
REPORTS = (
    ("peers_gpu.md", "Peer suite, JAX rows (`peers.py --gpu`)"),
    ("core_overhead_gpu.md", "jax_scg against hand-written surrogates (`core_overhead.py`)"),
    ("loops_gpu.md", "Loops (`loops.py --part A`)"),
    ("lola_gpu.md", "LOLA-DiCE (`lola.py`)"),
    ("rewrite_time_gpu.md", "Rewrite time (`rewrite_time.py`, smaller sizes)"),
    ("compile_time_gpu.md", "Compile time (`compile_time.py`, up to 25 sites)"),
)


def tables(text: str) -> list[str]:
    """The report's level-3 headings, tables and bullet notes; its preamble left out."""
    keep, lines = [], text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(("### ", "|", "- ")) or (line.startswith("## ") and i > 0):
            keep.append("##" + line if line.startswith("#") else line)  # below "### title"
        elif keep and keep[-1] != "":
            keep.append("")
    return keep


def section(folder: str) -> str:
    """The section's markdown: the environment, each step's status, each report's tables."""
    with open(os.path.join(folder, "gpu_env.txt")) as f:
        env = [line.strip() for line in f if line.strip()]
    card = env[0].split(",")[0] if env else "unknown card"
    parts = [
        START,
        f"## GPU: {card}",
        "",
        "From `OUT=DIR bash benchmarks/gpu_check.sh` on the card:",
        "",
    ]
    parts += [f"- {line}" for line in env]
    for name, title in REPORTS:
        path = os.path.join(folder, name)
        parts += ["", f"### {title}", ""]
        if not os.path.exists(path):
            parts.append(f"Not written: the step failed or ran out of time (`{name}` missing).")
            continue
        with open(path) as f:
            parts += tables(f.read())
    parts += ["", END, ""]
    return "\n".join(parts)


def replace_section(results: str, new: str) -> str:
    """``results`` with its GPU section (between the markers) replaced by ``new``, or added."""
    if START in results and END in results:
        before, rest = results.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        return before + new + after
    return results.rstrip("\n") + "\n\n" + new


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "RESULTS.md"))
    args = parser.parse_args(argv)
    with open(args.results) as f:
        text = f.read()
    with open(args.results, "w") as f:
        f.write(replace_section(text, section(args.folder)))
    print(f"wrote the GPU section of {args.results}")


if __name__ == "__main__":
    main()
