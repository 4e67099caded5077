#!/usr/bin/env bash
# Runs a command as root inside a throwaway virtual machine whose kernel has netem, so
# lab's kernel shaping backend can be tested on a machine whose own kernel lacks it.
#
#   scripts/vm-test.sh [--install] COMMAND [ARGS...]
#   scripts/vm-test.sh --install          (installs only)
#
# The VM (virtme-ng over QEMU) boots Debian's stock kernel from /boot and sees this
# machine's filesystem read-only (/tmp and /run are its own), so the command can be a
# binary built here. It gets LAB_IN_VM=1 and LAB_TIME_SLACK in its environment, and
# this script exits with its status.
#
# The host's filesystem reaches the VM over 9p without caching, so every run of a large
# binary from it reads the whole file again (2.2 s for a debug lab under TCG, against
# 0.4 s from memory): LAB_VM_CACHE, a colon-separated list of files, are copied into the
# VM's own memory first and mounted over their paths there, so the command and what it
# runs find them at the same paths. KVM is used where it works, otherwise QEMU's
# software emulation (TCG), under which timing is coarse. LAB_VM_CONSOLE=1 adds the
# guest kernel's console (boot and kernel messages) to stderr, for diagnosis: the
# emulated serial console slows the guest, so timing tests may fail with it on.
#
# --install (or missing tools) installs what is needed: qemu-system-x86, a Debian
# kernel with sch_netem (linux-image-amd64), busybox-static (apt), and virtme-ng (pip, in
# target/vm-venv). Needs root.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/vm-venv"

# A kernel image in /boot whose modules include sch_netem.
kernel() {
  local k v
  for k in $(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
    v="${k#/boot/vmlinuz-}"
    if ls /lib/modules/"$v"/kernel/net/sched/sch_netem.ko* >/dev/null 2>&1; then
      echo "$k"
      return 0
    fi
  done
  return 1
}

install() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need+=(qemu-system-x86)
  [ -e /bin/busybox ] || need+=(busybox-static)
  kernel >/dev/null || need+=(linux-image-amd64)
  if [ ${#need[@]} -gt 0 ]; then
    echo "vm-test: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
  fi
  if [ ! -x "$venv/bin/vng" ]; then
    echo "vm-test: installing virtme-ng into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check virtme-ng >&2
  fi
}

if [ "${1:-}" = "--install" ]; then
  shift
  install
  [ $# -eq 0 ] && exit 0
fi
if [ $# -eq 0 ]; then
  echo "usage: scripts/vm-test.sh [--install] COMMAND [ARGS...]" >&2
  exit 2
fi
if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || [ ! -x "$venv/bin/vng" ] || ! kernel >/dev/null; then
  install
fi
vmlinuz="$(kernel)" || { echo "vm-test: no kernel with sch_netem in /boot" >&2; exit 1; }
export PATH="$venv/bin:$PATH"

# KVM where it works, else TCG. Here KVM has failed at once ("failed to set MSR
# 0x10a") and, on other days, hung without a word, so the probe boot gets 10 s (a KVM
# boot of `true` takes a few; under TCG, 28 s).
accel=(--disable-kvm)
slack=5
if [ -w /dev/kvm ] && timeout --kill-after=2 10 vng -r "$vmlinuz" --user root --memory 512M --cpus 1 --exec true >/dev/null 2>&1; then
  accel=()
  slack=2
fi

cmd="cd $(printf %q "$PWD") && export LAB_IN_VM=1 LAB_TIME_SLACK=$slack"
for v in LAB_SHAPING_BACKEND RUST_BACKTRACE; do
  [ -n "${!v:-}" ] && cmd+=" $v=$(printf %q "${!v}")"
done
if [ -n "${LAB_VM_CACHE:-}" ]; then
  cmd+=" && mkdir -p /tmp/lab-vm-cache"
  n=0
  IFS=: read -r -a cached <<<"$LAB_VM_CACHE"
  for f in "${cached[@]}"; do
    [ -f "$f" ] || { echo "vm-test: LAB_VM_CACHE: $f is not a file" >&2; exit 2; }
    n=$((n + 1))
    cmd+=" && cp -- $(printf %q "$f") /tmp/lab-vm-cache/$n && mount --bind /tmp/lab-vm-cache/$n $(printf %q "$f")"
  done
fi
cmd+=" && exec"
for a in "$@"; do cmd+=" $(printf %q "$a")"; done

# virtme-ng hands --exec's command to the guest in base64 on the kernel command line,
# which the kernel cuts at 2,048 bytes: a longer command (long paths, many tests) never
# runs and the guest sits idle for ever. So the guest gets a short command that runs
# a script file written here, under target/ (the guest sees the host's files, not its
# /tmp), removed when this script ends.
mkdir -p "$root/target"
dir="$(mktemp -d "$root/target/vm-test.XXXXXX")"
trap 'rm -rf "$dir"' EXIT
trap 'exit 143' TERM INT
printf '%s\n' "$cmd" > "$dir/cmd.sh"

echo "vm-test: booting $(basename "$vmlinuz") (${accel[*]:-KVM}), running: $*" >&2
verbose=()
[ -n "${LAB_VM_CONSOLE:-}" ] && verbose=(-v)
rc=0
vng "${verbose[@]}" -r "$vmlinuz" --user root --memory 2G --cpus 2 "${accel[@]}" --exec "sh $(printf %q "$dir/cmd.sh")" || rc=$?
exit "$rc"
