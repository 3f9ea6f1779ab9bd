#!/usr/bin/env bash
# A fuzzing campaign over every target: `cargo fuzz run` (libFuzzer, no sanitizer: works on stable Rust) for
# SECONDS per target, on JOBS cores; new inputs go to fuzz/corpus/<target>/, crashes to fuzz/artifacts/<target>/.
# Prints a markdown table: target, executions, seconds, corpus entries, crashes.
#
#   cargo install cargo-fuzz --locked
#   fuzz/campaign.sh [SECONDS=300] [JOBS=1]
#
# Then `cargo fuzz cmin <target> --sanitizer none` keeps the corpus small before it is committed, and a crash is
# fixed with its input copied into fuzz/corpus/<target>/ (cargo test replays it from then on).
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-300}"
jobs="${2:-1}"
targets=$(sed -n 's/^name = "\([a-z_]*\)"$/\1/p' Cargo.toml | grep -v '^lendmesh-fuzz$')
cargo fuzz build --sanitizer none -O >/dev/null
echo "| target | executions | seconds | corpus entries | crashes |"
echo "|---|---:|---:|---:|---:|"
total_execs=0
total_secs=0
total_crashes=0
for t in $targets; do
  log=$(mktemp)
  mkdir -p "corpus/$t" "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  # libFuzzer exits non-zero on a crash; the table reports it and the script goes on to the next target.
  parallel=()
  if [ "$jobs" -gt 1 ]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
  began=$(date +%s)
  cargo fuzz run "$t" --sanitizer none -O -- -max_total_time="$seconds" "${parallel[@]}" \
    -print_final_stats=1 -rss_limit_mb=4096 >"$log" 2>&1 || true
  secs=$(($(date +%s) - began))
  stats=$(cat "$log" fuzz-*.log 2>/dev/null || true)
  execs=$(echo "$stats" | awk '/^stat::number_of_executed_units/ {s+=$2} END {print s+0}')
  rm -f fuzz-*.log
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  entries=$(find "corpus/$t" -type f | wc -l)
  echo "| $t | $execs | $secs | $entries | $crashes |"
  total_execs=$((total_execs + execs))
  total_secs=$((total_secs + secs))
  total_crashes=$((total_crashes + crashes))
  if [ "$crashes" -gt 0 ]; then tail -n 40 "$log" >&2; fi
  rm -f "$log"
done
echo "| all | $total_execs | $total_secs | | $total_crashes |"
