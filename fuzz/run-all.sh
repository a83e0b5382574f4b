#!/usr/bin/env bash
# Runs every fuzz target for SECS seconds (600 by default), JOBS at a time (2 by
# default), and prints each target's executions and any crash. Needs the nightly
# toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -u
cd "$(dirname "$0")"
SECS=${SECS:-600}
JOBS=${JOBS:-2}
mkdir -p logs
targets=$(cargo +nightly fuzz list)
cargo +nightly fuzz build >/dev/null 2>&1 || { echo "fuzz build failed"; exit 1; }
run() {
  t=$1
  mkdir -p "corpus/$t"
  seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo +nightly fuzz run "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$SECS" \
    >"logs/$t.log" 2>&1
  done_line=$(grep -E '^Done [0-9]+ runs' "logs/$t.log" | tail -1)
  crashes=$(ls "artifacts/$t" 2>/dev/null | grep -c '^crash-' || true)
  echo "$t: ${done_line:-no summary (see logs/$t.log)}; crashes: $crashes"
}
export -f run
export SECS
printf '%s\n' $targets | xargs -P "$JOBS" -I{} bash -c 'run {}'
