#!/usr/bin/env bash
# Prepares, on a machine with network, what the first run on a lent GPU machine carries
# (see benchmarks/README.md, "First run on a GPU machine"; the machine reaches no package registry):
#
#   .whl/            cp312 manylinux / py3 wheels of the packages its image lacks, pinned in
#                    scripts/device/wheels.txt (installed there), and in .whl/fallback/ those of
#                    scripts/device/fallback.txt (installed there only where the image's version
#                    does not meet a requirement); --no-deps: the full list is pinned by hand and
#                    checked by scripts/device/deps.py (every Requires-Dist of every wheel, for
#                    CPython 3.12, is met by a carried wheel or by the image's package list).
#   .device_data/    the trial's sample: `hepms generate` 2 x 1000 events at <mu> = 50, the
#                    settings of the full sample (data/full) otherwise, seed 18 (needs hepms[generate]).
#
#   bash scripts/device_wheels.sh
#
# Both folders are ignored by git and travel with `carry: [".whl", ".device_data"]`. Prints their
# size and that of the whole tree that travels (the limit is 64 MiB).
# Settings: PYTHON (default .venv/bin/python, else python3) runs pip and the checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
SAMPLE=.device_data/htautau-mu50-2x1000

# pip matches manylinux tags exactly: the common ones first (preferred), then every glibc up to
# 2.39 for packages that publish only those (the machine's Python 3.12.3 is Ubuntu 24.04's).
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
MORE_PLATFORMS=()
for n in $(seq 39 -1 18); do MORE_PLATFORMS+=("manylinux_2_${n}_x86_64"); done

download() {  # download PIN_FILE DEST: one wheel per pin, no dependencies
  local pins="$1" dest="$2" line req
  mkdir -p "$dest"
  while IFS= read -r line; do
    req="${line%%#*}"; req="$(echo "$req" | tr -d '[:space:]')"
    [ -n "$req" ] || continue
    local args=(download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d "$dest")
    if ! "$PY" -m pip "${args[@]}" $(printf -- '--platform %s ' "${PLATFORMS[@]}") "$req" 2>/dev/null; then
      "$PY" -m pip "${args[@]}" $(printf -- '--platform %s ' "${PLATFORMS[@]}" "${MORE_PLATFORMS[@]}") "$req"
    fi
  done < "$pins"
}

echo "== wheels (pins: scripts/device/wheels.txt, scripts/device/fallback.txt)"
# A fresh folder each time, so that a changed pin leaves no second version behind (two versions of
# a package stop the install there); pip's cache makes the repeat cheap.
rm -rf .whl.new
download scripts/device/wheels.txt .whl.new
download scripts/device/fallback.txt .whl.new/fallback
rm -rf .whl
mv .whl.new .whl

echo "== sample ($SAMPLE)"
if [ -f "$SAMPLE/manifest.json" ]; then
  echo "present (delete the folder to make it again)"
else
  HEPMS="$(dirname "$PY")/hepms"
  [ -x "$HEPMS" ] || HEPMS=hepms
  nice -n 10 "$HEPMS" generate "$SAMPLE" --events 1000 --mu 50 --seed 18 --workers 1 --no-progress
fi

# The tree that travels may have no .git: note which commit the carried folders were made at.
echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')" > .device_data/SOURCE
echo "== check: the wheel set for CPython 3.12 on Linux x86-64 (scripts/device/deps.py)"
"$PY" scripts/device/deps.py wheels .whl

echo "== sizes"
du -sh .whl .device_data
# What a `run` call sends: tracked and untracked-not-ignored files, plus the carried folders.
tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
             | awk '{s += $1} END {print s + 0}')
carried_bytes=$(du -sb .whl .device_data | awk '{s += $1} END {print s}')
awk -v t="$tree_bytes" -v c="$carried_bytes" 'BEGIN {
  printf "working tree %.1f MiB + carried %.1f MiB = %.1f MiB of the 64 MiB limit\n", t/2^20, c/2^20, (t+c)/2^20
  exit ((t + c) > 60 * 2^20) }' || { echo "too large for one run call" >&2; exit 1; }
