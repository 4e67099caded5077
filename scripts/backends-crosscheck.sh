#!/bin/sh
# The same short lab run on each shaping backend, on a machine that has netem (or in
# the VM of scripts/vm-test.sh): every approach under one mild profile. Prints, per
# backend and approach, "xb BACKEND APPROACH WIRE_B/TOK TTFT_P50_MS UP_LOSS DOWN_LOSS"
# (losses as measured by the captures at both ends), and "== BACKEND run rc=N".
#   scripts/backends-crosscheck.sh LAB_BINARY [BACKEND...]   (default: kernel userspace)
# The benchmark of the two backends side by side (docs/shaping.md):
#   scripts/vm-test.sh scripts/backends-crosscheck.sh target/release/lab
lab="${1:?usage: backends-crosscheck.sh LAB_BINARY [BACKEND...]}"
shift
[ $# -eq 0 ] && set -- kernel userspace
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
for b in "$@"; do
  printf '{ name: xb%s, approaches: [raw, sse, wt], llm: { mock: { ttft: 20ms, tbt: 5ms, jitter: 0%%, max_tokens: 30 } }, profiles: { mild: { delay: 10ms, loss: 2%%, rate: 10mbit } }, workload: { prompts: reference, repeat: 2, timeout: 60s }, shaping: { backend: %s, seed: 1 } }\n' "$b" "$b" > "$dir/$b.yaml"
  "$lab" run "$dir/$b.yaml" --results "$dir/$b" > "$dir/$b.log" 2>&1
  echo "== $b run rc=$?"
  for f in "$dir/$b"/*/run.json; do
    python3 - "$f" "$b" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for c, s in zip(r["cells"], r["summaries"]):
    cl, sv = c["client"]["capture"], c["server"]["capture"]
    loss = lambda sent, got: 1 - got["ip_packets"] / sent["ip_packets"]
    print("xb", sys.argv[2], s["approach"], s["wire"]["bytes_per_token"], s["metrics"]["ttft_p50"],
          loss(cl["tx"], sv["rx"]), loss(sv["tx"], cl["rx"]))
PY
  done
done
