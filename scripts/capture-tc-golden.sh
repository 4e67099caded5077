#!/usr/bin/env bash
# Captures the netlink requests that iproute2's `tc` sends for the kernel backend's
# settings, as golden files for lab/tests/tc_golden.rs. strace shows each request even
# where the kernel refuses it (no netem here). Runs tc in a throwaway namespace, on lo.
# Needs root, strace and iproute2. Usage: scripts/capture-tc-golden.sh
set -euo pipefail
out="$(dirname "$0")/../lab/tests/tc-golden"
mkdir -p "$out"
ns="lab-golden-$$"
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
capture() {
  local name="$1"; shift
  {
    echo "# tc $* ($(tc -V))"
    # tc fails where the kernel has no netem; the request is what matters.
    { ip netns exec "$ns" strace -qq -e trace=sendmsg -e write=3 tc "$@" 2>&1 >/dev/null || true; } |
      awk '/^ \* [0-9]+ bytes in buffer/ { n++ } n == 1 && /^ \| [0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f] / { print substr($0, 11, 49) }' |
      tr -s ' ' '\n' | { grep -E '^[0-9a-f]{2}$' || true; } | tr -d '\n'
    echo
  } > "$out/$name.hex"
  # A message per file: the first sendmsg is the request.
  echo "$name: $(sed -n 2p "$out/$name.hex" | wc -c) hex chars"
}
q="qdisc add dev lo root handle 1:"
capture netem-delay-jitter $q netem delay 100ms 10ms
capture netem-delay-jitter-normal $q netem delay 100ms 10ms distribution normal
capture netem-loss-random $q netem loss random 5%
capture netem-loss-gemodel $q netem loss gemodel 1% 25% 100% 0%
capture netem-rate $q netem rate 10mbit
capture netem-rate-overhead $q netem delay 20ms rate 100kbit 14
capture netem-rate64 $q netem rate 40gbit
capture netem-latency64 $q netem delay 10s 5s
capture netem-limit $q netem delay 200ms limit 5000
capture netem-reorder-duplicate-corrupt $q netem delay 10ms reorder 25% duplicate 1% corrupt 0.1%
capture tbf $q tbf rate 10mbit burst 32kb limit 100kb
capture tbf-rate64 $q tbf rate 40gbit burst 1mb limit 10mb
