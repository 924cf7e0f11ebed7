"""The documentation's code runs: every ``python`` block of a page in docs/, top to bottom
in one namespace per page, in a fresh process with 4 CPU devices (for the many-devices
page). Blocks that cannot run on one machine are fenced ``{code-block} python`` instead."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(
    path.relative_to(DOCS).as_posix()
    for path in DOCS.rglob("*.md")
    if path.name != "README.md"
    and not any(part.startswith("_") for part in path.relative_to(DOCS).parts)  # _build, ...
)

RUNNER = """
import pathlib, re, sys
text = pathlib.Path(sys.argv[1]).read_text()
namespace = {"__name__": "__docs__"}
for index, block in enumerate(re.findall(r"^```python\\n(.*?)^```", text, flags=re.S | re.M)):
    exec(compile(block, f"{sys.argv[1]}, python block {index}", "exec"), namespace)
"""


def _blocks(page):
    return re.findall(r"^```python\n(.*?)^```", (DOCS / page).read_text(), flags=re.S | re.M)


def test_the_pages_have_code():
    assert "howto/reinforcement_learning.md" in PAGES
    assert sum(len(_blocks(page)) for page in PAGES) >= 20


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)])
def test_page_code_runs(page):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env.setdefault("JAX_PLATFORMS", "cpu")
    result = subprocess.run(
        [sys.executable, "-c", RUNNER, str(DOCS / page)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
