#!/usr/bin/env bash
# Sets up a development environment in .venv and runs the demo or the tests.
#
#   bash scripts/dev.sh demo     # set up (first time: a few minutes), then run the demo: a short
#                                # tour of the pooling ops, then the H->tautau study's quick preset
#                                # (generate, train, evaluate, every table and figure; ~10 min)
#   bash scripts/dev.sh test     # set up, then run the test suite
#   bash scripts/dev.sh setup    # set up only
#
# Settings (environment variables):
#   HEPMS_TORCH       torch requirement, pinned (default torch==2.14.1, the CUDA 13.0 build that
#                     matches nvcc 13.0; torch==2.13.0 is the small CPU-only build). Never unpinned:
#                     an unpinned torch would pull several GB from the network.
#   HEPMS_WITH_CUDA   AUTO (default) | ON | OFF: build the CUDA kernels.
#   TORCH_CUDA_ARCH_LIST  GPU architectures for the CUDA kernels (default "8.0;9.0").
#   HEPMS_VENV        where the virtual environment lives (default .venv in the repository).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${HEPMS_VENV:-.venv}"
TORCH_REQ="${HEPMS_TORCH:-torch==2.14.1}"
case "$TORCH_REQ" in
  torch==*) ;;
  *) echo "HEPMS_TORCH must pin an exact version (torch==X.Y.Z), got '$TORCH_REQ'" >&2; exit 2 ;;
esac

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating virtual environment $VENV"
    python3 -m venv "$VENV"
  fi
  local py="$VENV/bin/python"
  "$py" -m pip install -q --upgrade pip
  echo "== installing $TORCH_REQ and the build tools"
  "$py" -m pip install -q "$TORCH_REQ" "numpy>=1.24" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja
  # The extension is compiled against the torch just installed, so no build isolation.
  echo "== building hepms (C++ kernels$( [ "${HEPMS_WITH_CUDA:-AUTO}" = OFF ] || echo ', CUDA kernels when possible'))"
  "$py" -m pip install -q --no-build-isolation -e ".[all]" "$TORCH_REQ"
  "$py" -c "import torch, hepms, hepms._C as C; print(f'hepms {hepms.__version__}: compiled kernels loaded (CUDA kernels built: {C.with_cuda}), torch {torch.__version__}')"
}

cmd="${1:-demo}"
shift || true
case "$cmd" in
  setup) setup ;;
  demo)
    setup
    "$VENV/bin/hepms" demo --jets 20000
    "$VENV/bin/python" analyses/htautau/run.py quick "$@" ;;
  test)
    setup
    # HEPMS_REQUIRE_EXTENSION: a broken build must fail the tests, not fall back silently.
    HEPMS_REQUIRE_EXTENSION=1 "$VENV/bin/python" -m pytest "$@" ;;
  *) echo "usage: bash scripts/dev.sh [setup|demo|test] [args...]" >&2; exit 2 ;;
esac
