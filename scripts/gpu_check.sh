#!/usr/bin/env bash
# The GPU figures of the README in one command (issue 22): the check of the paper and voc-mini-paper profiles on
# one CUDA device, then the issue's bars read from their check.json. Meant to finish within ~8 min on one GPU.
#   bash scripts/gpu_check.sh                  # both profiles, --check-steps 8
#   CHECK_STEPS=4 PROFILES="paper" bash scripts/gpu_check.sh
# Writes results/<profile>-check/ (check.json, check.md, check.log) and, when $OUT is set, copies them there.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
steps="${CHECK_STEPS:-8}"
profiles="${PROFILES:-paper voc-mini-paper}"
limit="${CHECK_TIMEOUT:-270}"  # seconds per profile: two profiles stay under 9 min even at the limit
if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python="$(command -v python3)"; fi

echo "== $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
"$python" - <<'EOF' || { echo "gpu_check: torch with CUDA is needed (pip install -e . in a CUDA environment)"; exit 1; }
import sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__}: torch.cuda.is_available() is False")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
      f"capability {'.'.join(map(str, torch.cuda.get_device_capability(0)))}")
EOF

status=0
for profile in $profiles; do
  if ! "$python" -c "import sys; from cebench.config import get_profile; get_profile(sys.argv[1])" "$profile" \
      >/dev/null 2>&1; then
    echo "== $profile: not a profile of benchmarks.yaml here, skipped"; continue
  fi
  echo "== bash run_all.sh $profile --check --device cuda --check-steps $steps  (limit ${limit} s)"
  start=$(date +%s)
  timeout "$limit" bash run_all.sh "$profile" --check --device cuda --check-steps "$steps" || status=1
  echo "== $profile: $(( $(date +%s) - start )) s"
done

# The issue's bars: whole loop >= 0.8 of the step alone for pretraining and classification; the paper's
# pretraining (one run of its full schedule) projected at <= 1 hour.
"$python" - $profiles <<'EOF' || status=1
import json, sys
from pathlib import Path
ok = True
for profile in sys.argv[1:]:
    folder = Path("results") / f"{profile}-check"
    # one JSON per stage is written as each finishes: a check cut short by the time limit still has its first rows
    rows = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json") if p.stem != "check"}
    if not rows:
        print(f"{profile}: nothing in {folder}"); ok = False; continue
    for stage in ("pretrain", "classify"):
        r = rows.get(stage, {})
        passed = r.get("ratio", 0) >= 0.8
        ok &= passed
        print(f"{profile} {stage}: whole loop / step alone = {r.get('ratio', float('nan')):.2f} "
              f"({'ok' if passed else 'BELOW 0.8'}; {r.get('data_path')})")
    if profile == "paper" and "pretrain" in rows:
        hours = rows["pretrain"]["projected_s"] / 3600
        ok &= hours <= 1
        print(f"paper pretraining projected: {hours:.2f} h per run ({'ok' if hours <= 1 else 'OVER 1 h'})")
    summary = folder / "check.json"
    if summary.is_file():
        check = json.loads(summary.read_text())
        print(f"{profile}: projected total {check['projected_total_s'] / 3600:.2f} h; failed: {check['failed']}")
    else:
        print(f"{profile}: no {summary} (cut short?): stages done {sorted(rows)}"); ok = False
sys.exit(0 if ok else 1)
EOF

if [ -n "${OUT:-}" ]; then
  for profile in $profiles; do
    [ -d "results/$profile-check" ] && mkdir -p "$OUT/$profile-check" \
      && cp "results/$profile-check"/*.json "results/$profile-check"/*.md "results/$profile-check"/*.log \
         "$OUT/$profile-check/" 2>/dev/null
  done
fi
exit $status
