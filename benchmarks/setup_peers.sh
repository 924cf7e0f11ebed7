#!/usr/bin/env bash
# Create benchmarks/.venv-peers, a virtual environment separate from the main one, holding the
# PyTorch peer Storchastic 0.3.7 for benchmarks/storchastic_rows.py:
#     bash benchmarks/setup_peers.sh
#     benchmarks/.venv-peers/bin/python benchmarks/storchastic_rows.py [--quick]
# torch is pinned and installed first, so that storchastic's unpinned torch requirement is
# already satisfied by the CPU build (otherwise pip may pull a multi-GB CUDA build). Nothing
# is installed into the environment this script is started from. Idempotent: does nothing if
# the venv already imports storchastic (import name: storch) at that version.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${HERE}/.venv-peers"
PY="${VENV}/bin/python"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
STORCHASTIC_VERSION="${STORCHASTIC_VERSION:-0.3.7}"

if [ -x "${PY}" ] && "${PY}" -c "
import storch  # storchastic's import name
from importlib.metadata import version
assert version('storchastic') == '${STORCHASTIC_VERSION}'
" >/dev/null 2>&1; then
    echo "setup_peers: ${VENV} already imports storchastic; nothing to do."
    exit 0
fi

if [ ! -x "${PY}" ]; then
    python3 -m venv "${VENV}"
fi

# Only ever the venv's own pip.
"${PY}" -m pip install --upgrade pip >/dev/null 2>&1 || true
"${PY}" -m pip install "torch==${TORCH_VERSION}"
"${PY}" -m pip install "storchastic==${STORCHASTIC_VERSION}" numpy
# storchastic requires torch unpinned: check that pip kept the pinned one.
"${PY}" - "${TORCH_VERSION}" <<'PYEOF'
import sys
import torch, storch  # noqa: F401
from importlib.metadata import version
assert torch.__version__.split("+")[0] == sys.argv[1], torch.__version__
print("setup_peers: torch", torch.__version__, "storchastic", version("storchastic"),
      "pyro-ppl", version("pyro-ppl"), "entmax", version("entmax"), "numpy", version("numpy"))
PYEOF
