#!/usr/bin/env bash
# Installs everything lab's build and tests need on a fresh Debian/Ubuntu machine.
# Safe to run again: it installs only what is missing. Needs root (or sudo) for apt.
set -euo pipefail

# --browser: also Chromium, for lab's browser client (`client: browser` in a topology,
# `lab client --browser`) and its tests.
# --real-model: also the real model upstream (scripts/real-model.sh install:
# llama-cpp-python and Gemma 3 270M, cached outside the checkout), for
# topologies/real-model.yaml and its test.
browser=0
real_model=0
for a in "$@"; do
  case "$a" in
    --browser) browser=1 ;;
    --real-model) real_model=1 ;;
    *) echo "setup: unknown argument $a (the arguments are --browser and --real-model)" >&2; exit 2 ;;
  esac
done

need_apt=()
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ "$browser" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium)  # Debian's; lab runs it headless in a cell's client namespace
fi
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v c++ >/dev/null 2>&1 || need_apt+=(build-essential)  # llama.cpp, for --real-model
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_apt+=(ca-certificates)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)  # tests check that `ip netns` sees lab namespaces; lab itself never runs ip
command -v tcpdump >/dev/null 2>&1 || need_apt+=(tcpdump)  # a test checks lab's capture and pcap files against tcpdump
command -v sudo >/dev/null 2>&1 || need_apt+=(sudo)  # the README runs `sudo lab run ...`
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)  # a node of the user's in tests and topologies/nodes.yaml (redis-cli comes with it)
command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)  # the load balancer node of topologies/nodes.yaml

if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ ! -x "$HOME/.cargo/bin/cargo" ]; then
    echo "setup: installing Rust with rustup (https://rustup.rs) into $HOME/.cargo"
    if ! curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy; then
      echo "setup: could not install Rust. Install Rust 1.88 or newer (https://rustup.rs), then run this again." >&2
      exit 1
    fi
  fi
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
# Off-the-shelf peers for the interop tests: the official openai client, aioquic (a
# WebTransport client), websockets (a WebSocket client) and aiohttp (an SSE server of
# someone else's, for the bring-your-own-server test), in a virtualenv under target/ so
# the system stays untouched.
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/target/peers-venv"
if ! "$venv/bin/python" -c 'import openai, aioquic, websockets, aiohttp' >/dev/null 2>&1; then
  echo "setup: installing the openai, aioquic, websockets and aiohttp Python packages into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check openai aioquic websockets aiohttp
fi

# The kernel shaping backend's tests need netem: where this kernel has none, they run in
# a virtual machine (scripts/vm-test.sh), whose tools are installed here.
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! $SUDO unshare --net sh -c 'ip link set lo up && tc qdisc add dev lo root netem delay 1ms' >/dev/null 2>&1; then
  $SUDO "$root/scripts/vm-test.sh" --install
fi

if [ "$real_model" = 1 ]; then
  "$root/scripts/real-model.sh" install
fi

echo "setup: ok ($(cargo --version), $(curl --version | head -n1 | cut -d' ' -f1-2))"
