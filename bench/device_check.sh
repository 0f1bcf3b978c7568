#!/usr/bin/env bash
# The one GPU verification script (DESIGN §7). On a bare GPU machine with torch and Triton
# preinstalled and no network, from the repository root:
#
#   bash bench/device_check.sh            # writes $OUT (default ./out): report.md, report.json, logs
#
# It builds the extension for sm_90a, runs the test suite (GPU cases included) and the benchmarks,
# and writes one report, in well under 8 minutes on an H200. Wheels the machine lacks (at least
# nvidia-cutlass for the CUTLASS headers) are carried in .wheels/ (`make device-wheels` fills it).
# Every step runs even if an earlier one failed; the exit code is non-zero if any failed.
set -uo pipefail
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
status=0
step() {  # step NAME TIMEOUT_S CMD...: run one stage, log it, remember failures
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/steps.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
echo "commit $commit" >"$OUT/steps.txt"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true

if ls .wheels/*.whl >/dev/null 2>&1; then
  step wheels 120 "$PY" -m pip install --no-deps --no-index .wheels/*.whl
fi
export STAR_ELASTIC_FORCE_CUDA_BUILD=1 STAR_ELASTIC_EXPECT_CUDA_EXTENSION=1
export MAX_JOBS=${MAX_JOBS:-16}
step build 300 "$PY" -m pip install -v --no-deps --no-build-isolation -e .
step info 60 "$PY" -m star_elastic_kernels.info --json
cp "$OUT/info.log" "$OUT/info.json"
step tests 300 "$PY" -m pytest tests/kernels tests/test_backends.py -q -rs -p no:cacheprovider \
  --junitxml="$OUT/tests.xml"
step bench 300 "$PY" -m pytest bench --benchmark-only -q -p no:cacheprovider \
  --benchmark-json="$OUT/bench.json"
"$PY" bench/report.py --out "$OUT" --commit "$commit" || status=1
tail -n 40 "$OUT/report.md" 2>/dev/null
exit $status
