#!/usr/bin/env bash
# The prepared GPU check (issue 20), one command on a bare GPU machine: <= 7 minutes on one H200.
#
#   bash tools/gpu_check.sh                          # tests, NA / BRA kernel benchmarks, model table, summary
#   bash tools/gpu_check.sh --device cpu --quick     # dry run of the same wiring on CPU, tiny shapes
#   bash tools/gpu_check.sh --sections na,bra --budget 300
#
# It runs `python -m tools.bench gpu-check` (tools/bench/suites/gpu_check.py), the benchmark front door's suite.
# Output: everything under $OUT when set, else out/gpu_check/<time> (at most 7 files; see that suite).
# Python: $PYTHON, else .venv/bin/python when present, else python3. The package is imported as installed; when
# it is not, it is installed editable without dependencies or a registry, or, failing that, put on PYTHONPATH
# through a folder of links (the kernels/ and backbones/ folders install as visionattn.kernels / .backbones),
# with PYTHONSAFEPATH=1 (Python >= 3.11) so that the source folder visionattn/ in the working directory does not
# shadow it; the repository root then comes on PYTHONPATH after the links, for `tools.bench`.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3
fi
out=${OUT:-out/gpu_check/$(date +%Y%m%d-%H%M%S)}
prev=
for a in "$@"; do  # an explicit --out-dir wins over $OUT
  if [ "$prev" = --out-dir ]; then out=$a; fi
  prev=$a
done
mkdir -p "$out" || { echo "gpu_check.sh: error: cannot create $out" >&2; exit 2; }
log=$out/gpu_check.log

if ! "$PY" -c "import visionattn" >/dev/null 2>&1; then
  echo "installing the package (editable, no dependencies)" | tee -a "$log"
  if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$log" 2>&1; then
    shadow=$(mktemp -d)/site
    mkdir -p "$shadow/visionattn"
    for f in visionattn/*; do ln -s "$PWD/$f" "$shadow/visionattn/"; done
    ln -s "$PWD/kernels" "$shadow/visionattn/kernels"
    ln -s "$PWD/backbones" "$shadow/visionattn/backbones"
    export PYTHONPATH="$shadow:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    echo "pip install failed (see above); using PYTHONPATH=$PYTHONPATH, PYTHONSAFEPATH=1" | tee -a "$log"
  fi
  "$PY" -c "import visionattn" >>"$log" 2>&1 || { echo "gpu_check.sh: error: visionattn is not importable (see $log)" >&2; exit 2; }
fi
exec "$PY" -m tools.bench gpu-check --out-dir "$out" "$@"
