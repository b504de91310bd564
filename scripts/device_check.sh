#!/usr/bin/env bash
# The first run of hepms on a GPU machine, as one prepared step (benchmarks/README.md, "First run
# on a GPU machine"). PREPARED WITHOUT A GPU: it has never run on one (only its CPU dry run, and its
# GPU mode against a stand-in of the machine's Python without a GPU).
#
#   bash scripts/device_check.sh          # on the GPU machine, in the repository root, with its
#                                         # python3 (no venv); needs .whl/ and .device_data/ from
#                                         # scripts/device_wheels.sh
#   bash scripts/device_check.sh --cpu    # dry run without a GPU (or DEVICE_CHECK_CPU=1): the same
#                                         # steps on device cpu, CUDA build off, in .venv
#                                         # (whose editable hepms it rebuilds so)
#
# Steps, each with its own time limit inside one overall budget (DEVICE_CHECK_BUDGET_S, default
# 480 s), going on when one fails:
#   env      nvidia-smi and versions; the carried wheels installed into $SITE (pip --no-index
#            --no-deps --target) and their requirements checked against what is installed
#            (scripts/device/deps.py; fallback wheels installed where the image's version is off)
#   build    hepms._C against the machine's torch, CUDA kernels for sm_90 only (HEPMS_WITH_CUDA=ON,
#            TORCH_CUDA_ARCH_LIST=9.0): editable install, no build isolation, no network
#   tests    pytest -k cuda on tests/test_ops.py, tests/test_ops_kernels.py, tests/test_train.py,
#            tests/test_jagged.py, plus tests/test_data.py::test_to_dtype_and_device (a skip fails)
#   segment  benchmarks/segment.py --device cuda (every shape, default settings) with its JSON
#   trial    one study trial, k_scan/"additional k=2" of analyses/htautau/config/quick.yaml on the
#            carried sample (2 x 1000 events, <mu> = 50), 5 epochs, float32 then bfloat16; trial
#            records and run directories under /tmp (nothing written into the repository)
# DEVICE_CHECK_STEPS (default "env build tests segment trial") runs only some of them, e.g. a rerun
# of "tests segment trial" on a machine still warm from a first call (/tmp/site and the build stay).
# Output, flat in $OUT (8 files, the most a device call returns): summary.txt env.txt build.log
# tests.log segment.log segment.json trial.log trial.json. One summary line per step is printed.
# Exit status: 1 when the build or the CUDA tests fail (or when the tests did not run), else 0.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

CPU=0
if [ "${1:-}" = --cpu ] || [ "${DEVICE_CHECK_CPU:-0}" = 1 ]; then CPU=1; fi
START=$(date +%s)
BUDGET="${DEVICE_CHECK_BUDGET_S:-480}"
SAMPLE="$REPO/.device_data/htautau-mu50-2x1000"
TMP="${TMPDIR:-/tmp}/hepms-device-check"
SITE="${DEVICE_CHECK_SITE:-/tmp/site}"  # where the carried wheels are installed (GPU run)
rm -rf "$TMP"; mkdir -p "$TMP"
if [ "$CPU" = 1 ]; then
  OUT="${OUT:-$TMP/out}"
  PY="${PYTHON:-$REPO/.venv/bin/python}"
  # The build step reinstalls .venv's editable hepms: CUDA off unless HEPMS_WITH_CUDA says so.
  DEVICE=cpu; CUDA_BUILD="${HEPMS_WITH_CUDA:-OFF}"
  # Small and cheap on a shared 2-core machine: the dry run checks the plumbing, not speed.
  SEGMENT_ARGS=(--device cpu --shapes jets --jets 2000 --features 16 --repeats 2)
  EPOCHS=2
  export OMP_NUM_THREADS=1
  NICE=(nice -n 10)
else
  OUT="${OUT:?OUT is unset: set it to the folder for the logs (the device tool sets it)}"
  PY="${PYTHON:-python3}"
  DEVICE=cuda; CUDA_BUILD=ON
  SEGMENT_ARGS=(--device cuda)
  EPOCHS=5
  NICE=()
  # CMake finds nvcc through PATH or CUDACXX; the image's toolkit lives in /usr/local/cuda.
  if ! command -v nvcc > /dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
    export PATH="/usr/local/cuda/bin:$PATH"
  fi
  if [ -z "${CUDACXX:-}" ] && command -v nvcc > /dev/null; then export CUDACXX="$(command -v nvcc)"; fi
fi
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export PYTHONUNBUFFERED=1 HEPMS_REQUIRE_EXTENSION=1 MPLBACKEND=Agg
FAILED_REQUIRED=0
STEPS=" ${DEVICE_CHECK_STEPS:-env build tests segment trial} "
want() { [[ "$STEPS" == *" $1 "* ]]; }

say() {  # one summary line: printed and kept in summary.txt
  echo "$*" | tee -a "$SUMMARY"
}

left() { echo $(( START + BUDGET - $(date +%s) )); }

# run_step NAME LIMIT_S LOG COMMAND...: runs COMMAND (appending to LOG) under min(LIMIT_S, time
# left in the budget); sets STEP_RC (124: timed out, 125: skipped, no time left) and STEP_S.
run_step() {
  local name="$1" limit="$2" log="$3"; shift 3
  local budget_left; budget_left=$(left)
  (( limit > budget_left )) && limit=$budget_left
  STEP_S=0
  if (( limit < 10 )); then
    echo "== $name: skipped, no time left in the ${BUDGET} s budget" >> "$log"
    STEP_RC=125
    return
  fi
  echo "== $name (limit ${limit} s): $*" >> "$log"
  local t0; t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >> "$log" 2>&1
  STEP_RC=$?
  STEP_S=$(( $(date +%s) - t0 ))
  echo "== $name: exit status $STEP_RC after ${STEP_S} s" >> "$log"
}

status_word() {
  case "$STEP_RC" in
    0) echo ok ;; 124|137) echo "TIMED OUT" ;; 125) echo "SKIPPED (no time left)" ;; *) echo "FAILED (exit $STEP_RC)" ;;
  esac
}

say "hepms device check ($([ $CPU = 1 ] && echo 'CPU dry run: no GPU, CUDA build off' || echo 'GPU run')), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo "unknown (no .git; .device_data prepared at $(cat .device_data/SOURCE 2>/dev/null || echo '?'))")"
missing=""
for path in .whl/*.whl "$SAMPLE/manifest.json"; do [ -e "$path" ] || missing="$missing $path"; done
if [ -n "$missing" ]; then
  say "WARNING: missing$missing: run scripts/device_wheels.sh where there is network, and carry .whl and .device_data"
fi

# --- env: machine, versions, carried wheels -------------------------------------------------------
ENV_LOG="$OUT/env.txt"
{
  echo "== machine"; uname -a; getconf _NPROCESSORS_ONLN; grep -m1 'model name' /proc/cpuinfo
  echo "== nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  echo "== nvcc"; (nvcc --version || /usr/local/cuda/bin/nvcc --version) 2>&1 | tail -2
  echo "== cmake"; cmake --version 2>&1 | head -1
  echo "== python: $PY"; "$PY" --version
  "$PY" -c 'import sysconfig, os; p = sysconfig.get_paths()["purelib"]; print("site-packages", p, "writable:", os.access(p, os.W_OK))'
} > "$ENV_LOG" 2>&1

if [ "$CPU" = 0 ]; then export PYTHONPATH="$SITE"; fi
if ! want env; then
  :
elif [ "$CPU" = 1 ]; then
  # The wheels are for CPython 3.12: here pip can only prove they install there (tags) and
  # deps.py that their requirements are met by the set plus the image's package list.
  PLAT=(); for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do PLAT+=(--platform "$p"); done
  run_step wheels 120 "$ENV_LOG" "$PY" -m pip install -q --dry-run --no-index --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${PLAT[@]}" --target "$TMP/x" .whl/*.whl .whl/fallback/*.whl
  rc1=$STEP_RC
  run_step deps 60 "$ENV_LOG" "$PY" scripts/device/deps.py wheels .whl
  rc2=$STEP_RC
  STEP_RC=$(( rc1 || rc2 ))
  say "env: $(status_word); wheels checked for CPython 3.12 (pip --dry-run + deps.py), not installed (this is Python $("$PY" -c 'import platform; print(platform.python_version())'))"
else
  run_step wheels 120 "$ENV_LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  rc1=$STEP_RC
  # Fallback wheels only where the image's version does not meet a requirement.
  fallbacks=$("$PY" scripts/device/deps.py installed .whl 2>> "$ENV_LOG")
  if [ -n "$fallbacks" ]; then
    echo "== fallback wheels: $fallbacks" >> "$ENV_LOG"
    # shellcheck disable=SC2086
    run_step fallback 60 "$ENV_LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" $fallbacks
  fi
  run_step deps 60 "$ENV_LOG" "$PY" scripts/device/deps.py installed .whl
  rc2=$STEP_RC
  STEP_RC=$(( rc1 || rc2 ))
  say "env: $(status_word); wheels installed into $SITE$([ -n "$fallbacks" ] && echo " (with fallbacks: $(echo $fallbacks | xargs -n1 basename | tr '\n' ' '))"); GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
fi
{
  echo "== versions"
  "$PY" - <<'EOF'
import importlib.metadata as md
for name in ["torch", "numpy", "awkward", "awkward-cpp", "uproot", "vector", "hist", "boost-histogram",
             "mplhep", "matplotlib", "scikit-learn", "tqdm", "PyYAML", "pytest", "hypothesis",
             "scikit-build-core", "pybind11", "cmake", "ninja", "setuptools", "packaging", "fsspec"]:
    try:
        dist = md.distribution(name)
        print(f"{name:18s} {dist.version:14s} {dist.locate_file('')}")
    except md.PackageNotFoundError:
        print(f"{name:18s} MISSING")
import torch
print("torch.cuda.is_available():", torch.cuda.is_available(), "| torch.version.cuda:", torch.version.cuda)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"capability {p.major}.{p.minor}", f"{p.multi_processor_count} SMs",
          f"{p.total_memory / 2**30:.1f} GiB")
EOF
} >> "$ENV_LOG" 2>&1

# --- build --------------------------------------------------------------------------------------
BUILD_LOG="$OUT/build.log"
if want build; then
JOBS=$(getconf _NPROCESSORS_ONLN)  # not nproc: it follows OMP_NUM_THREADS
run_step build 300 "$BUILD_LOG" env HEPMS_WITH_CUDA="$CUDA_BUILD" TORCH_CUDA_ARCH_LIST=9.0 \
  CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" MAX_JOBS="$JOBS" "${NICE[@]}" \
  "$PY" -m pip install -v --no-index --no-build-isolation --no-deps -e .
build_rc=$STEP_RC; build_s=$STEP_S
# The import check runs outside the repository, so that it sees the install, not the source tree.
info=$(cd /tmp && "$PY" -c "import torch, hepms._C as C; print(f'hepms._C loaded, CUDA kernels built: {C.with_cuda}, torch {torch.__version__}')" 2>> "$BUILD_LOG")
if [ "$build_rc" = 0 ] && [ -n "$info" ] && { [ "$CPU" = 1 ] || [[ "$info" == *"built: True"* ]]; }; then
  STEP_RC=0
else
  STEP_RC=$(( build_rc ? build_rc : 1 )); FAILED_REQUIRED=1
fi
echo "== import check: ${info:-import failed}" >> "$BUILD_LOG"
say "build: $(status_word) in ${build_s} s (HEPMS_WITH_CUDA=$CUDA_BUILD$([ $CUDA_BUILD = ON ] && echo ', sm_90'), $JOBS jobs); ${info:-hepms._C does not import, see build.log}"
fi

# --- CUDA tests ---------------------------------------------------------------------------------
TESTS_LOG="$OUT/tests.log"
if want tests; then
# The standing list (CUDA tests of test_ops, test_ops_kernels, test_train) plus the two other tests
# that take a GPU path when one is there: awkward's cuda backend (cupy) -> Jagged, Dataset.to("cuda").
run_step tests 150 "$TESTS_LOG" "${NICE[@]}" "$PY" -m pytest -p no:cacheprovider -rs -v -k "cuda or to_dtype_and_device" \
  tests/test_ops.py tests/test_ops_kernels.py tests/test_train.py tests/test_jagged.py tests/test_data.py
tests_rc=$STEP_RC
counts=$(grep -E '^=+ .*(passed|failed|skipped|error|deselected).* in [0-9.]+s' "$TESTS_LOG" | tail -1 | sed -E 's/^=+ //; s/ =+$//')
# pytest: 0 all passed, 5 nothing collected. On the GPU every selected test must run and pass.
word=$(status_word)
if [ "$tests_rc" != 0 ] || { [ "$CPU" = 0 ] && [[ "$counts" == *skipped* ]]; }; then
  FAILED_REQUIRED=1
  [ "$tests_rc" = 0 ] && word="FAILED (tests skipped on the GPU machine)"
fi
say "tests: $word ($DEVICE): ${counts:-no pytest summary line, see tests.log}"
fi

# --- segment benchmark --------------------------------------------------------------------------
SEG_LOG="$OUT/segment.log"; SEG_JSON="$OUT/segment.json"
if want segment; then
run_step segment 150 "$SEG_LOG" "${NICE[@]}" "$PY" benchmarks/segment.py "${SEGMENT_ARGS[@]}" --json "$SEG_JSON"
seg_note=$("$PY" - "$SEG_JSON" <<'EOF' 2>/dev/null
import json, sys
doc = json.load(open(sys.argv[1]))
table = next((t for t in doc["tables"] if t["shape"] == "jets" and t["features"] == 64), doc["tables"][0])
med = {(r["reduce"], r["method"], r["mode"]): r["median_ms"] for r in table["results"]}
read = next(v for (red, m, mode), v in med.items() if m.startswith("read"))
parts = [f"{red} {med[(red, 'hepms', 'fwd')]:.3f} ms" for red in ("sum", "mean", "max") if (red, "hepms", "fwd") in med]
print(f"{table['shape']} F={table['features']} ({table['rows']} rows): hepms fwd medians " + ", ".join(parts)
      + f"; read floor {read:.3f} ms; machine {doc['machine'].get('device')}")
EOF
)
say "segment: $(status_word) in ${STEP_S} s: ${seg_note:-no JSON, see segment.log}"
fi

# --- one study trial, float32 then bfloat16 -----------------------------------------------------
TRIAL_LOG="$OUT/trial.log"
if want trial; then
for precision in float32 bfloat16; do
  records="$TMP/records-$precision"; rundir="$TMP/run-$precision"
  mkdir -p "$records"  # empty: no committed record counts the trial as done
  run_step "trial $precision" 150 "$TRIAL_LOG" "${NICE[@]}" "$PY" -c 'import sys; from hepms.cli import main; sys.exit(main())' \
    scan analyses/htautau/config/quick.yaml --only "k_scan/additional k=2" --trials 1 --no-plots --no-progress \
    --run-dir "$rundir" --set "data.path=$SAMPLE" --set data.generate.enabled=false \
    --set "trainer.epochs=$EPOCHS" --set "trainer.device=$DEVICE" --set "trainer.precision=$precision" \
    --set "scan.trial_records=$records"
  echo "{\"rc\": $STEP_RC, \"wall_s\": $STEP_S}" > "$TMP/trial-$precision.status"
  note=$("$PY" - "$records" <<'EOF' 2>/dev/null
import glob, json, sys
record = json.load(open(sorted(glob.glob(f"{sys.argv[1]}/*/*.json"))[0]))
m = record["metrics"]
print(f"auc_event {m['auc_event']:.4f}, auc_tau {m['auc_tau']:.4f}, {record['epochs_trained']} epochs, "
      f"{record['seconds']:.1f} s in the trial")
EOF
)
  say "trial $precision: $(status_word) in ${STEP_S} s wall ($DEVICE, $EPOCHS epochs): ${note:-no trial record, see trial.log}"
done
# One JSON for both: the trial records (without their ROC points), exit status and wall time.
"$PY" - "$TMP" "$OUT/trial.json" "$DEVICE" <<'EOF' 2>> "$TRIAL_LOG"
import glob, json, os, sys
tmp, out, device = sys.argv[1:]
doc = {"device": device, "trials": {}}
try:
    import torch
    doc["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception as error:  # the summary must still be written
    doc["gpu"] = f"unknown ({error})"
for precision in ("float32", "bfloat16"):
    entry = {}
    status = os.path.join(tmp, f"trial-{precision}.status")
    if os.path.exists(status):
        entry.update(json.load(open(status)))
    found = sorted(glob.glob(os.path.join(tmp, f"records-{precision}", "*", "*.json")))
    if found:
        record = json.load(open(found[0]))
        record.pop("roc", None)
        entry["record"] = record
    doc["trials"][precision] = entry
with open(out + ".tmp", "w") as handle:
    json.dump(doc, handle, indent=1)
os.replace(out + ".tmp", out)
EOF
fi

say "done in $(( $(date +%s) - START )) s of the ${BUDGET} s budget; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
if [ "$FAILED_REQUIRED" = 1 ]; then
  say "RESULT: FAILED (build or CUDA tests; see build.log / tests.log)"
  exit 1
fi
say "RESULT: ok"
