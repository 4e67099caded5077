#!/usr/bin/env bash
# The test command: installs what is missing, then checks format, lints, the single
# crypto provider, and runs every test (unit, loopback integration, CLI, curl).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

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
vmlog=$(mktemp)
vm=""
cleanup() {
  # The VM's test runs in a session of its own: stop all of it (cargo, the test, QEMU).
  if [ -n "$vm" ] && kill -0 "$vm" 2>/dev/null; then kill -TERM -- "-$vm" 2>/dev/null || true; fi
  rm -f "$log" "$vmlog"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
cargo test --workspace --locked --no-run
# Where this kernel has no netem, the kernel backend's test (lab/tests/kernel.rs) boots
# a virtual machine under software emulation and runs there for about 10 minutes,
# sharing nothing with this machine's namespaces: it runs beside the other tests, at the
# lowest CPU priority, so that the timing tests here keep the CPU they need. Where the
# kernel has netem, it runs here, after the others (it builds labs of its own names).
kernel_test=the_kernel_backend_shapes_for_real_in_a_vm_or_here
beside=0
if ! unshare --net sh -c 'ip link set lo up && tc qdisc add dev lo root netem delay 1ms' >/dev/null 2>&1; then
  beside=1
  setsid nice -n 19 cargo test --locked -p lab --test kernel >"$vmlog" 2>&1 &
  vm=$!
fi
set +e
if [ "$beside" = 1 ]; then
  cargo test --workspace --locked -- --skip "$kernel_test" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  wait "$vm"
  vmrc=$?
  vm=""
  echo "== the kernel backend's test, in a VM beside the others (exit $vmrc)"
  cat "$vmlog" | tee -a "$log"
else
  cargo test --workspace --locked 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  vmrc=0
fi
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, i }' "$log"
[ "$rc" -eq 0 ] && [ "$vmrc" -eq 0 ]
