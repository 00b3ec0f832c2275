#!/usr/bin/env bash
# The README's second command: the whole test suite, hermetic (no internet once the tools are in).
# Installs what the tests need into the project's `.tools/` (scripts/test-tools.sh: uv, moto's
# server, PyYAML — never into the system Python), then runs `cargo test` with them on PATH.
# Arguments go to `cargo test` (e.g. `scripts/test.sh realize::` runs one module).
#
# Each integration test's duration is written to target/test-times.tsv (seconds, name); the
# slowest are printed after the run (all of them with COMFIX_TEST_TIMES_ALL=1, as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
# Assigned first: a failed install stops the run here (`eval "$(…)"` alone would hide it).
tools_env="$(scripts/test-tools.sh)"
eval "$tools_env"
mkdir -p target
export COMFIX_TEST_TIMES="$PWD/target/test-times.tsv"
# Most tests wait on the processes they start (comfix, git, uv, servers): four at a time keep two
# cores busy (the suite takes about 100 s so, 140 s with two).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
rm -f "$COMFIX_TEST_TIMES"
status=0
cargo test --locked "$@" || status=$?
if [ -s "$COMFIX_TEST_TIMES" ]; then
  # A test with several stores records each; its duration is the longest.
  sort -t$'\t' -k2,2 -k1,1gr "$COMFIX_TEST_TIMES" | sort -t$'\t' -u -k2,2 | sort -gr > "$COMFIX_TEST_TIMES.sorted"
  mv "$COMFIX_TEST_TIMES.sorted" "$COMFIX_TEST_TIMES"
  count=$(wc -l < "$COMFIX_TEST_TIMES")
  if [ "${COMFIX_TEST_TIMES_ALL:-}" = 1 ]; then
    echo "== the $count integration tests by duration (seconds)"
    cat "$COMFIX_TEST_TIMES"
  else
    echo "== the 10 slowest of $count integration tests (seconds; all in $COMFIX_TEST_TIMES)"
    head -n 10 "$COMFIX_TEST_TIMES"
  fi
fi
exit "$status"
