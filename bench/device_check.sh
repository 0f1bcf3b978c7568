#!/usr/bin/env bash
# The one GPU verification script (DESIGN §7). On a bare GPU machine with torch and Triton
# preinstalled and no network, from the repository root:
#
#   bash bench/device_check.sh                 # every stage; writes $OUT (default ./out)
#   bash bench/device_check.sh build tests     # only these stages (build, tests, bench)
#   BENCH_ARGS="-k 'moe and not 16384'" bash bench/device_check.sh bench   # a subset of the benches
#
# It builds the extension for sm_90a, runs the kernel tests (GPU cases included) and the benchmarks,
# and writes one report (report.md, report.json, logs). Each stage has its own time limit (build
# 300 s, tests 300 s, bench 300 s): the benches outgrew one 300 s stage (SSM, MoE and quant
# together are over 150 cases), so on a time-limited machine run them in parts with BENCH_ARGS
# (extra pytest arguments; TEST_ARGS likewise for the tests). The report covers what ran. Wheels
# the machine lacks (at least nvidia-cutlass for the CUTLASS headers) are carried in .wheels/
# (`make device-wheels` fills it).
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
STAGES=${*:-build tests bench}
wants() { [[ " $STAGES " == *" $1 "* ]]; }
if wants build; then
  step build 300 "$PY" -m pip install -v --no-deps --no-build-isolation -e .
fi
step info 60 "$PY" -m star_elastic_kernels.info --json
cp "$OUT/info.log" "$OUT/info.json"
if wants tests; then
  eval "extra=(${TEST_ARGS:-})"
  step tests 300 "$PY" -m pytest tests/kernels tests/test_backends.py -q -rs -p no:cacheprovider \
    --junitxml="$OUT/tests.xml" "${extra[@]}"
fi
if wants bench; then
  eval "extra=(${BENCH_ARGS:-})"
  step bench 300 "$PY" -m pytest bench --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$OUT/bench.json" "${extra[@]}"
fi
"$PY" bench/report.py --out "$OUT" --commit "$commit" || status=1
tail -n 40 "$OUT/report.md" 2>/dev/null
exit $status
