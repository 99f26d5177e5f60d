#!/usr/bin/env bash
# Drive the real app in a real terminal (tmux): first paint, start a tiny run with F5, wait for
# the runner's worker processes, check the results tab and the run folder, quit; then check that
# `lowdim-bench` with no arguments opens the same app. Exits non-zero with the screen on failure.
# Run from the repository root or anywhere: `bash scripts/tmux_drive.sh` (CI runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")
if ! command -v tmux >/dev/null; then
  echo "tmux_drive: tmux missing, installing it (apt-get)"
  (apt-get update -qq && apt-get install -y -qq tmux) >/dev/null
fi
WORK=$(mktemp -d)
SOCK="lowdim-drive-$$"
T="tmux -L $SOCK"
cleanup() { $T kill-server 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat > "$WORK/tiny.toml" <<'EOF'
name = "tiny-drive"
description = "Driven through tmux by scripts/tmux_drive.sh."
seeds = [0, 1]
budgets = [0.5]
measure = ["params", "latency"]
tasks = ["tiny"]
[methods.fake-head]
[methods.fake-width]
[protocol]
batch_sizes = [1]
repeats = 3
warmup = 1
max_seconds = 0.2
EOF

ENVS="LOWDIM_BENCH_PLUGIN_MODULES=fakeplugins PYTHONPATH=$ROOT/tests LOWDIM_BENCH_STATE=$WORK/state LOWDIM_BENCH_CACHE=$WORK/cache TERM=xterm-256color"
screen() { $T capture-pane -p -t drive; }
fail() { echo "tmux_drive: FAILED: $1"; echo "----- screen -----"; screen || true; exit 1; }
wait_for() {  # wait_for TEXT SECONDS
  local end=$((SECONDS + $2))
  until screen | grep -qF -- "$1"; do
    [ $SECONDS -lt $end ] || fail "no '$1' on screen after $2 s"
    sleep 0.2
  done
}

# 1. the app with a suite file given on the command line
$T new-session -d -s drive -x 160 -y 45 \
  "cd $WORK && env $ENVS $PY -m lowdim_bench.tui $WORK/tiny.toml --reports $WORK/reports; echo \$? > $WORK/exit1; sleep 30"
wait_for "Suites" 60
wait_for "Driven through tmux" 90          # plugins loaded, the suite picked, its description shown
$T send-keys -t drive F5
wait_for "run finished: 4 ok, 0 failed" 240
$T send-keys -t drive 3
wait_for "fake-width" 20                   # the results tab: both rows
wait_for "quality vs trainable parameters" 20  # and the selected row's Pareto chart (adapt: trainable)
$T send-keys -t drive q
for _ in $(seq 100); do [ -f "$WORK/exit1" ] && break; sleep 0.2; done
[ "$(cat "$WORK/exit1" 2>/dev/null)" = "0" ] || fail "the app did not exit 0 on q"
ls "$WORK"/reports/*/records.parquet >/dev/null || fail "no records.parquet in the run folder"
grep -q '"status": "finished"' "$WORK"/reports/*/run.json || fail "run.json not finished"
$T kill-session -t drive

# 2. `lowdim-bench` alone opens the app
$T new-session -d -s drive -x 160 -y 45 "cd $WORK && env $ENVS $BIN/lowdim-bench; echo \$? > $WORK/exit2; sleep 30"
wait_for "Suites" 60
wait_for "smoke" 90
$T send-keys -t drive q
for _ in $(seq 100); do [ -f "$WORK/exit2" ] && break; sleep 0.2; done
[ "$(cat "$WORK/exit2" 2>/dev/null)" = "0" ] || fail "lowdim-bench (no arguments) did not exit 0 on q"
echo "tmux_drive: 2 passed, 0 failed"
