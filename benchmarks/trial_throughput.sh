#!/bin/bash
# Study throughput on this machine: the wall time of the SAME trials of the full preset, run by
# `hepms scan` (a) sequentially with 1 torch thread, (b) sequentially with 2 threads, (c) as two
# 1-thread trials at once (--dask local:2). Each run gets a fresh run directory (the dataset cache
# linked in, an empty trial_records folder: nothing counts as done, nothing is written elsewhere).
#
#   benchmarks/trial_throughput.sh OUT_DIR DATASET_CACHE_FILE SAMPLE_DIR NAME:MODE:HEPMS_EXECUTABLE ...
#
# e.g. after:a:.venv/bin/hepms before:c:/path/to/old/.venv/bin/hepms. Writes OUT_DIR/<NAME>_<MODE>/
# {scan.log, time.txt (/usr/bin/time -v of the whole scan, workers included), wall.json}.
# The trials: loss_balancing/(w1, w2) = (1, 1), both columns (BCE, MSE), 4 trials each, 3 epochs.
set -u
OUT=$1; CACHE=$2; SAMPLE=$3; shift 3
mkdir -p "$OUT"
for spec in "$@"; do
  IFS=: read -r name mode hepms <<< "$spec"
  rd=$OUT/${name}_${mode}; rm -rf "$rd"; mkdir -p "$rd/cache" "$rd/records"
  ln -s "$(realpath "$CACHE")" "$rd/cache/"
  threads=1; extra=""
  [ "$mode" = b ] && threads=2
  [ "$mode" = c ] && extra="--dask local:2"
  load_start=$(cut -d' ' -f1-3 /proc/loadavg)
  t0=$(date +%s.%N)
  /usr/bin/time -v -o "$rd/time.txt" "$hepms" scan analyses/htautau/config/full.yaml --run-dir "$rd" \
    --only "loss_balancing/(w1, w2) = (1, 1)" --trials 4 --no-plots --no-progress -q $extra \
    --set trainer.epochs=3 --set scan.trial_records="$rd/records" --set data.path="$SAMPLE" \
    --set threads=$threads > "$rd/scan.log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  printf '{"name": "%s", "mode": "%s", "threads": %s, "dask": "%s", "rc": %s, "wall_s": %s, "load_start": "%s", "load_end": "%s"}\n' \
    "$name" "$mode" "$threads" "$extra" "$rc" "$(echo "$t1 - $t0" | bc)" "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)" > "$rd/wall.json"
  cat "$rd/wall.json"
done
