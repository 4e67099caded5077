#!/usr/bin/env bash
# The test command: installs what is missing, then checks format, lints, the single
# crypto provider, and runs every test (unit, loopback integration, CLI, curl).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --browser --real-model
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo doc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

echo "== one rustls crypto provider (ring) in the whole build"
for p in aws-lc-rs aws-lc-sys; do
  if cargo tree --workspace --locked -i "$p" >/dev/null 2>&1; then
    echo "error: $p is in the dependency tree; lab must use ring only" >&2
    cargo tree --workspace --locked -i "$p" >&2
    exit 1
  fi
done

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
