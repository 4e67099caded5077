#!/usr/bin/env bash
# Installs lab on a Debian/Ubuntu machine: what the build needs (scripts/setup.sh), the
# release binary in $PREFIX/bin/lab, shell completions (bash, zsh, fish) and man pages.
# After it, `sudo lab run topologies/degraded.yaml` works.
#
#   scripts/install.sh              build and install under /usr/local (needs root or sudo)
#   scripts/install.sh --uninstall  remove exactly what it installed
#
# sudo runs commands with its own fixed PATH (secure_path). Debian and Ubuntu put
# /usr/local/bin in it; others (Fedora, RHEL) do not. So when the prefix is /usr/local,
# install.sh also links /usr/sbin/lab to /usr/local/bin/lab, unless /usr/sbin/lab is
# something else, which it never touches.
#
# Environment: PREFIX (default /usr/local); LAB_BINARY, an already built lab to install
# instead of building one; LAB_SKIP_SETUP=1 to skip scripts/setup.sh.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
prefix="${PREFIX:-/usr/local}"
bin="$prefix/bin/lab"
link=/usr/sbin/lab
bash_completion="$prefix/share/bash-completion/completions/lab"
zsh_completion="$prefix/share/zsh/site-functions/_lab"
fish_completion="$prefix/share/fish/vendor_completions.d/lab.fish"
man_dir="$prefix/share/man/man1"
manifest="$prefix/share/lab/installed-files"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

our_link() { [ -L "$link" ] && [ "$(readlink "$link")" = "$bin" ]; }

if [ "${1:-}" = "--uninstall" ]; then
  if [ -f "$manifest" ]; then
    while IFS= read -r f; do
      case "$f" in
        "$prefix"/*) $SUDO rm -f -- "$f" ;;
      esac
    done <"$manifest"
    $SUDO rm -f -- "$manifest"
    $SUDO rmdir --ignore-fail-on-non-empty "$prefix/share/lab" 2>/dev/null || true
  fi
  if our_link; then $SUDO rm -f -- "$link"; fi
  echo "install: removed lab from $prefix"
  exit 0
elif [ $# -gt 0 ]; then
  echo "usage: scripts/install.sh [--uninstall]" >&2
  exit 2
fi

if [ "${LAB_SKIP_SETUP:-0}" != 1 ]; then
  "$root/scripts/setup.sh"
fi
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

built="${LAB_BINARY:-}"
if [ -z "$built" ]; then
  echo "install: building the release binary (about 3 minutes the first time)"
  (cd "$root" && cargo build --release --locked -p lab)
  built="$root/target/release/lab"
fi
[ -x "$built" ] || { echo "install: $built is not an executable lab" >&2; exit 1; }

# Completions and man pages are made by the binary itself, in a directory of our own.
work="$(mktemp -d)"
trap 'rm -rf -- "$work"' EXIT
"$built" completions bash >"$work/lab.bash"
"$built" completions zsh >"$work/_lab"
"$built" completions fish >"$work/lab.fish"
"$built" man "$work/man" 2>/dev/null

$SUDO install -D -m 0755 "$built" "$bin"
$SUDO install -D -m 0644 "$work/lab.bash" "$bash_completion"
$SUDO install -D -m 0644 "$work/_lab" "$zsh_completion"
$SUDO install -D -m 0644 "$work/lab.fish" "$fish_completion"
files=("$bin" "$bash_completion" "$zsh_completion" "$fish_completion")
for page in "$work"/man/*.1; do
  $SUDO install -D -m 0644 "$page" "$man_dir/$(basename "$page")"
  files+=("$man_dir/$(basename "$page")")
done
printf '%s\n' "${files[@]}" >"$work/manifest"
$SUDO install -D -m 0644 "$work/manifest" "$manifest"

if [ "$prefix" = /usr/local ] && [ -d /usr/sbin ]; then
  if [ ! -e "$link" ] && [ ! -L "$link" ]; then
    $SUDO ln -s "$bin" "$link"
  elif ! our_link; then
    echo "install: $link exists and is not lab's link; leaving it alone" >&2
  fi
fi

echo "install: $("$bin" --version) in $bin, with completions and ${#files[@]} files; try: sudo lab run topologies/degraded.yaml"
