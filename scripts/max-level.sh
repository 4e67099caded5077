#!/usr/bin/env bash
# The largest load level this machine holds: `lab serve` (the mock and one approach's
# server) and `lab load` on loopback, release build, levels swept upwards until streams
# fail. A benchmark, not a test: it prints the generator's table, the open-file limit,
# and the server's and the generator's peak RSS over the run, each summed over its
# processes.
#
#   scripts/max-level.sh [APPROACH] [LEVELS]       e.g. scripts/max-level.sh sse 10000,20000,50000,100000
#
# Environment: RAMP (default 20s), HOLD (default 10s), TOKENS (default 18), TBT
# (default 50ms), PER_CONNECTION (streams per connection where the approach
# multiplexes; default 1; the QUIC approaches' cap of streams a connection,
# transport.quic.max_streams, is raised to it on both sides), SERVER_WORKERS (default: one server process per 15,000 streams of
# the highest level, for the TCP servers that can share a port; `lab load` splits its
# streams the same way by itself), LOAD_ARGS (more arguments for `lab load`, e.g.
# --socket-per-connection). Nothing outside loopback is touched; every process it starts is
# stopped on exit, by the pid it recorded.
set -euo pipefail
approach="${1:-sse}"
levels="${2:-10000,20000,50000,100000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
cargo build --release --locked -q -p lab
lab="$root/target/release/lab"
work="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["listen"].rsplit(":",1)[1])'; }

"$lab" serve llm --listen 127.0.0.1:0 --ttft 50ms --tbt "${TBT:-50ms}" --jitter 0 \
  --max-tokens "${TOKENS:-18}" >"$work/llm.json" 2>"$work/llm.log" &
pids+=($!)
until [ -s "$work/llm.json" ]; do sleep 0.1; done
llm_port="$(port <"$work/llm.json")"
top=0
for l in ${levels//,/ }; do [ "$l" -gt "$top" ] && top=$l; done
workers="${SERVER_WORKERS:-$(((top + 14999) / 15000))}"
case "$approach" in raw | sse | sse-h2 | ws) ;; *) workers=1 ;; esac
per_connection="${PER_CONNECTION:-1}"
streams=$((per_connection > 100 ? per_connection : 100))
transport="{\"quic\":{\"max_streams\":$streams}}"
"$lab" serve "$(case $approach in raw) echo proxy ;; *) echo "$approach" ;; esac)" \
  --listen 127.0.0.1:0 --upstream "http://127.0.0.1:$llm_port" --upstream-h2 \
  --workers "$workers" --transport "$transport" --cert-out "$work/tls" >"$work/server.json" 2>"$work/server.log" &
server=$!
pids+=($server)
until [ -s "$work/server.json" ]; do sleep 0.1; done
url="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])' <"$work/server.json")"
trust=()
case "$url" in https://*) trust=(--ca "$work/tls/cert.pem") ;; esac
# Source addresses 127.0.0.1 to .8: each gives about 28,000 ports towards the server.
sources=()
for i in 1 2 3 4 5 6 7 8; do sources+=(--source "127.0.0.$i"); done

echo "max-level: $approach at $url ($workers server processes), levels $levels, open-file limit $(ulimit -Hn) (hard)"
# The peak RSS of a process and its children, summed, written to FILE every 0.5 s.
watch_rss() {
  local pid=$1 file=$2 peak=0 rss p
  while kill -0 "$pid" 2>/dev/null; do
    rss=0
    for p in "$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
      # A process that has just exited has no VmRSS line (or no status at all).
      p_rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
      rss=$((rss + ${p_rss:-0}))
    done
    if [ "$rss" -gt "$peak" ]; then peak=$rss && echo "$peak" >"$file"; fi
    sleep 0.5
  done
}
watch_rss "$server" "$work/server.peak" &
pids+=($!)
"$lab" load "$approach" --url "$url" "${trust[@]}" "${sources[@]}" \
  --levels "$levels" --ramp "${RAMP:-20s}" --hold "${HOLD:-10s}" --timeout 120s \
  --per-connection "$per_connection" --transport "$transport" ${LOAD_ARGS:-} &
gen=$!
pids+=($gen)
watch_rss "$gen" "$work/load.peak" &
pids+=($!)
wait "$gen" || true
# A QUIC server's one UDP socket: what it dropped at a full receive buffer over the run
# (the last column of /proc/net/udp), which no capture sees.
server_port="${url##*:}"
server_port="${server_port%%/*}"
drops="$(awk -v p="$(printf ':%04X' "$server_port")" 'index($2, p) == length($2) - 4 {d += $NF} END {print d + 0}' /proc/net/udp /proc/net/udp6)"
echo "server UDP socket drops: $drops (0 for a TCP server)"
echo "server peak RSS: $(($(cat "$work/server.peak" 2>/dev/null || echo 0) / 1024)) MiB (all its processes)"
echo "generator peak RSS: $(($(cat "$work/load.peak" 2>/dev/null || echo 0) / 1024)) MiB (all its processes)"
