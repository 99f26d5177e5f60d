#!/usr/bin/env bash
# Refresh the committed baseline of the CI regression gate (docs/gate.md).
#
# Runs suites/smoke.toml as CI does (fresh base-model cache, --jobs 2), shows the gate of the new
# run against the current baseline (for the commit message / review), then replaces
# reports/baseline/smoke/ with the new run's records.parquet, run.json and summary.md.
# Run it on a quiet machine: the baseline's per-call spreads widen every later latency check.
#
#   scripts/refresh_baseline.sh            # refresh reports/baseline/smoke
#   SUITE=suites/smoke.toml NAME=smoke JOBS=2 scripts/refresh_baseline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SUITE=${SUITE:-suites/smoke.toml}
NAME=${NAME:-smoke}
JOBS=${JOBS:-2}
BIN=${LOWDIM_BENCH:-}
if [ -z "$BIN" ]; then
  if [ -x .venv/bin/lowdim-bench ]; then BIN=.venv/bin/lowdim-bench; else BIN=lowdim-bench; fi
fi
DEST=reports/baseline/$NAME

work=$(mktemp -d)
cache=$(mktemp -d)
trap 'rm -rf "$work" "$cache"' EXIT

start=$(date +%s)
LOWDIM_BENCH_CACHE=$cache "$BIN" --strict-plugins run "$SUITE" --jobs "$JOBS" --out "$work" >"$work/run.log" 2>&1 || {
  echo "refresh_baseline: the run failed; baseline left as it was. Log:" >&2
  tail -n 40 "$work/run.log" >&2
  exit 1
}
echo "smoke run: $(( $(date +%s) - start )) s (fresh cache, --jobs $JOBS)"
run_dir=$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n 1)

if [ -f "$DEST/run.json" ]; then
  echo "gate of the new run against the current baseline:"
  "$BIN" compare "$DEST" "$run_dir" || true
fi

mkdir -p "$DEST"
rm -f "$DEST"/records.parquet "$DEST"/run.json "$DEST"/summary.md
cp "$run_dir"/records.parquet "$run_dir"/run.json "$run_dir"/summary.md "$DEST"/
echo "baseline replaced: $DEST ($(du -sh "$DEST" | cut -f1)); review and commit it: git add $DEST"
