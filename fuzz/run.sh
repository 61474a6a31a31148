#!/bin/bash
# Runs every fuzz target for SECONDS each (default 60) on the stable toolchain.
# usage: fuzz/run.sh [SECONDS] [TARGET...]
# Crashes land in fuzz/artifacts/<target>/; copy them to fuzz/regressions/<target>/ so
# `cargo test` replays them from then on.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}; shift || true
targets=${*:-frames manifest delta uci}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in $targets; do
  mkdir -p corpus/$t
  [ -d regressions/$t ] && cp -n regressions/$t/* corpus/$t/ 2>/dev/null || true
  echo "== $t for ${secs}s"
  cargo fuzz run --sanitizer none "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048
done
