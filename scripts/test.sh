#!/usr/bin/env bash
# The README's second command: the whole test suite, hermetic (no internet once the tools are in).
# Installs what the tests need into the project's `.tools/` (scripts/test-tools.sh: uv, moto's
# server, PyYAML — never into the system Python), then runs `cargo test` with them on PATH.
# Arguments go to `cargo test` (e.g. `scripts/test.sh realize::` runs one module).
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(scripts/test-tools.sh)"
exec cargo test --locked "$@"
