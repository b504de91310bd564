#!/usr/bin/env bash
# Runs the README's "Using it in your own environment" commands as written, in a fresh virtual
# environment and a clean copy of the repository, then checks that the installed package imports
# (outside the source tree) with its compiled kernels and that `hepms --version` answers.
#
#   bash scripts/check_install.sh
#
# The only substitution: the README's torch pin becomes HEPMS_INSTALL_TORCH (default
# torch==2.13.0, the small CPU-only build, ~20 s from the local wheel cache), so the check stays
# cheap; the build then compiles the CPU kernels. The commands are read from README.md itself, so
# the check and the documentation cannot drift apart.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
TORCH_REQ="${HEPMS_INSTALL_TORCH:-torch==2.13.0}"
case "$TORCH_REQ" in
  torch==*) ;;
  *) echo "HEPMS_INSTALL_TORCH must pin an exact version (torch==X.Y.Z), got '$TORCH_REQ'" >&2; exit 2 ;;
esac

# The first ```bash block after the section heading.
commands="$(awk '
  /^## Using it in your own environment/ { section = 1; next }
  section && /^## / { exit }
  section && /^```bash/ { inside = 1; next }
  inside && /^```/ { exit }
  inside { print }' README.md)"
if ! grep -q -- "--no-build-isolation" <<<"$commands"; then
  echo "check_install: no install commands found in README.md's 'Using it in your own environment'" >&2
  exit 1
fi
commands="${commands//torch==2.14.1/$TORCH_REQ}"

work="$(mktemp -d "${TMPDIR:-/tmp}/hepms-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
# A clean copy of the tracked (and untracked, not ignored) files: no build folder, no venv.
git ls-files -z --cached --others --exclude-standard | xargs -0 -I{} cp --parents {} "$work/" 2>/dev/null \
  || { echo "check_install: copying the source tree failed" >&2; exit 1; }
python3 -m venv "$work/venv"

echo "== README install commands (torch pin: $TORCH_REQ), in a fresh venv:"
echo "$commands" | sed 's/^/   /'
start=$SECONDS
(
  cd "$work"
  # shellcheck disable=SC1091
  source venv/bin/activate
  unset HEPMS_WITH_CUDA TORCH_CUDA_ARCH_LIST PYTHONPATH  # the README's commands set none of these
  set -x
  eval "$commands"
)
echo "== installed in $((SECONDS - start)) s; checking the installed package"
cd "$work/venv"  # not the source tree: import the installed hepms
HEPMS_REQUIRE_EXTENSION=1 ./bin/python - <<'PY'
import pathlib, sys
import hepms
import torch

path = pathlib.Path(hepms.__file__).resolve()
assert "site-packages" in path.parts, f"imported hepms from {path}, not from the installed package"
assert hepms.extension_available(), "compiled kernels not loaded"
out = hepms.segment_sum(torch.ones(3, 2), torch.tensor([0, 2, 3]))
assert out.tolist() == [[2.0, 2.0], [1.0, 1.0]], out
import awkward, uproot, vector, hist, mplhep  # the core dependencies
print(f"check_install: hepms {hepms.__version__} from {path.parent}, compiled kernels, torch {torch.__version__}: ok")
PY
version="$(./bin/hepms --version)"
[ "$version" = "hepms $(./bin/python -c 'import hepms; print(hepms.__version__)')" ] \
  || { echo "check_install: unexpected 'hepms --version' output: $version" >&2; exit 1; }
echo "check_install: '$version': ok"
