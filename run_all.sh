#!/usr/bin/env bash
# Run a benchmarks.yaml profile end to end (default: smoke, on synthetic data) and print Table 2.
#   bash run_all.sh [PROFILE | --profile PROFILE] [--voc-root DIR] [--images DIR] [--supervised PATH] [--dry-run] ...
#   bash run_all.sh --help      # profiles and options
# The work is done by `python -m cebench.suite`; this wrapper only picks the Python.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -x "$here/.venv/bin/python" ]; then
  python="$here/.venv/bin/python"
else
  python="$(command -v python3 || true)"
  [ -n "$python" ] || { echo "run_all.sh: no python3 found (and no .venv in $here)" >&2; exit 1; }
fi
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m cebench.suite "$@"
