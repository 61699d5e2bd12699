#!/usr/bin/env bash
# Fetch, into .whl/ (git-ignored), the wheels of the optional packages a GPU image may lack, for its Python
# (default 3.12, x86-64 Linux), at the versions of constraints.txt; scripts/gpu_check.sh installs them there.
#   bash scripts/device_wheels.sh                      # faiss-cpu and pycocotools for Python 3.12
#   PYVER=3.11 PACKAGES="faiss-cpu" bash scripts/device_wheels.sh
# OpenCV's contrib build (selective search) is left out: its wheel (about 73 MB) is larger than what the device tool
# carries (64 MiB a call), and the detection check draws its proposals where cv2.ximgproc is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pyver="${PYVER:-3.12}"
packages="${PACKAGES:-faiss-cpu pycocotools}"
mkdir -p .whl
for package in $packages; do
  pin="$(grep -iE "^${package}==" constraints.txt || true)"
  [ -n "$pin" ] || { echo "device_wheels: $package is not pinned in constraints.txt" >&2; exit 1; }
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pin"
done
du -ch .whl/*.whl
