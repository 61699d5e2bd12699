#!/usr/bin/env bash
# The GPU figures of the README in one command (issue 22): the check of the paper and voc-mini-paper profiles on
# one CUDA device, the CUDA tests (tests/test_gpu_path.py; GPU_TESTS=0 skips them), then the issue's bars read from
# the checks' JSON (evaluation.experiments.check_bars). Meant to finish within ~8 min on one GPU.
#   bash scripts/gpu_check.sh                          # both profiles, --check-steps 8, on cuda
#   CHECK_STEPS=4 PROFILES="paper" bash scripts/gpu_check.sh
#   CHECK_DEVICE=cpu PROFILES=smoke CHECK_STEPS=2 bash scripts/gpu_check.sh --threads 1   # the script, on a CPU
# Arguments are passed on to every `bash run_all.sh PROFILE --check`. Writes results/<profile>-check/ (check.json,
# check.md, check.log, one JSON per stage). When $OUT is set (the device tool's machine), it also writes there what
# comes back: gpu_tests.log, <profile>-check.md per profile, and gpu_check.tgz (every profile's JSON, tables and
# log; the stand-in images left out).
# Wheels in .whl/ ($CHECK_WHEELS; scripts/device_wheels.sh fetches them: packages a GPU image lacks, e.g. faiss-cpu)
# are installed into a temporary folder first and put on PYTHONPATH.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
steps="${CHECK_STEPS:-8}"
profiles="${PROFILES:-paper voc-mini-paper}"
device="${CHECK_DEVICE:-cuda}"
wheels="${CHECK_WHEELS:-.whl}"
# seconds per profile, and for the CUDA tests: all of it stays under the device tool's 10 min a call at the limits
limit="${CHECK_TIMEOUT:-210}"
tests_limit="${GPU_TESTS_TIMEOUT:-120}"
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python="$(command -v python3)"; fi
results="$("$python" -c 'from cebench.config import benchmarks_path; print(benchmarks_path().parent / "results")')"

echo "== $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), device $device"
if compgen -G "$wheels/*.whl" >/dev/null; then
  site="$(mktemp -d "${TMPDIR:-/tmp}/cebench-site.XXXXXX")"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$wheels"/*.whl || { echo "gpu_check: the wheels in $wheels/ did not install"; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "== installed into $site: $(cd "$wheels" && echo *.whl)"
fi
if [ "$device" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$python" - <<'EOF' || { echo "gpu_check: torch with CUDA is needed (pip install -e . in a CUDA environment)"; exit 1; }
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__}: torch.cuda.is_available() is False")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}")
EOF
fi
"$python" - <<'EOF'
from cebench.deps import PACKAGES, installed
from transfer.detection.proposals import opencv_with_contrib
missing = [pip for module, (pip, _) in PACKAGES.items() if not installed(module)]
print("== optional packages missing:", ", ".join(missing) or "none",
      "" if opencv_with_contrib() else "(no cv2.ximgproc: the detection check draws its proposals)")
EOF

status=0
for profile in $profiles; do
  if ! "$python" -c "import sys; from cebench.config import get_profile; get_profile(sys.argv[1])" "$profile" \
      >/dev/null 2>&1; then
    echo "== $profile: not a profile of benchmarks.yaml here, skipped"; continue
  fi
  echo "== bash run_all.sh $profile --check --device $device --check-steps $steps  (limit ${limit} s)"
  start=$(date +%s)
  timeout "$limit" bash run_all.sh "$profile" --check --device "$device" --check-steps "$steps" "$@" || status=1
  echo "== $profile: $(( $(date +%s) - start )) s"
done

# The CUDA tests (tests/test_gpu_path.py, skipped on a CPU), after the checks: those give the README's figures.
if [ "$device" = cuda ] && [ "${GPU_TESTS:-1}" != 0 ]; then
  echo "== python -m pytest tests/test_gpu_path.py  (limit ${tests_limit} s)"
  timeout "$tests_limit" "$python" -m pytest -q -rA -p no:cacheprovider tests/test_gpu_path.py \
    2>&1 | tee "${OUT:-${TMPDIR:-/tmp}}/gpu_tests.log" || status=1
fi

# The issue's bars: whole loop >= 0.8 of the step alone for pretraining and classification; the paper's
# pretraining (one run of its full schedule) projected at <= 1 hour.
# shellcheck disable=SC2086  # one argument per profile
"$python" -m evaluation.experiments.check_bars --results "$results" $profiles || status=1

if [ -n "${OUT:-}" ]; then  # the device tool brings back at most 8 files: one archive, and the tables to read
  folders=()
  for profile in $profiles; do
    [ -d "$results/$profile-check" ] || continue
    folders+=("$profile-check")
    [ -f "$results/$profile-check/check.md" ] && cp "$results/$profile-check/check.md" "$OUT/$profile-check.md"
  done
  [ ${#folders[@]} -gt 0 ] && tar czf "$OUT/gpu_check.tgz" -C "$results" --exclude=standin --exclude=proposals \
    "${folders[@]}"
fi
exit $status
