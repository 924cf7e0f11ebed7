#!/usr/bin/env bash
# The peer benchmark suite in one command, from anywhere:
#     bash benchmarks/run_peers.sh [--quick] [--out FILE] [--plots DIR] [--no-torch]
# 1. bash benchmarks/setup_peers.sh makes benchmarks/.venv-peers (PyTorch, Pyro, Storchastic),
#    a separate environment (skipped with --no-torch);
# 2. benchmarks/peers.py runs with the current environment's python (or $PYTHON), which needs
#    jax_scg with the peers' extras (NumPyro, scikit-learn, matplotlib), from the repository root:
#        pip install -e ".[peers,plots]"
#    It runs the JAX systems, runs benchmarks/torch_peers.py in .venv-peers, and writes
#    benchmarks/RESULTS.md and the plots in benchmarks/results/.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "${HERE}")"
PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"

if [ -z "${PYTHON}" ]; then
    echo "run_peers: no python found on PATH (set PYTHON=/path/to/python)." >&2
    exit 2
fi

missing="$("${PYTHON}" - <<'PYEOF'
import importlib.util
names = {"jax": "jax", "jax_scg": "jax_scg", "numpyro": "numpyro", "sklearn": "scikit-learn",
         "matplotlib": "matplotlib"}
print(" ".join(pkg for mod, pkg in names.items() if importlib.util.find_spec(mod) is None))
PYEOF
)"
if [ -n "${missing}" ]; then
    echo "run_peers: ${PYTHON} cannot import: ${missing}." >&2
    echo "  From the repository root: ${PYTHON} -m pip install -e \".[peers,plots]\"" >&2
    exit 2
fi

no_torch=0
for arg in "$@"; do
    if [ "${arg}" = "--no-torch" ]; then
        no_torch=1
    fi
done
if [ "${no_torch}" = 0 ]; then
    bash "${HERE}/setup_peers.sh"
fi

cd "${ROOT}"
exec "${PYTHON}" benchmarks/peers.py "$@"
