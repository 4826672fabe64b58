#!/usr/bin/env bash
# Checks that the goto-auth-proxy binary runs on the runtime image (debian:bookworm-slim)
# with nothing installed: every shared library it needs must be one the base image has,
# and it must not ask for a newer glibc than bookworm's.
#
#   deploy/check-runtime-deps.sh [BINARY]
#
# BINARY defaults to target/release/goto-auth-proxy, built with
# `cargo build --release --locked` when it is missing. Exit 0: fine; 1: the binary needs
# something the runtime image lacks (the message says what); 2: usage or tooling problem.
set -euo pipefail

# Shared libraries debian:bookworm-slim provides without installing anything: glibc
# (package libc6), libgcc-s1, zlib1g (priority "required"), and the kernel's vDSO.
allowed=(
  linux-vdso.so.1
  linux-gate.so.1
  libc.so.6
  libm.so.6
  libgcc_s.so.1
  libpthread.so.0
  libdl.so.2
  librt.so.1
  libresolv.so.2
  libutil.so.1
  libz.so.1
  ld-linux-x86-64.so.2
  ld-linux-aarch64.so.1
  ld-linux-armhf.so.3
  ld-linux.so.2
)
# glibc of debian:bookworm-slim.
max_glibc="2.36"

say() { printf 'check-runtime-deps: %s\n' "$*"; }
die() { say "FAIL: $*" >&2; exit 1; }

here=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
top=$(cd -- "$here/.." && pwd)

bin=${1:-}
if [[ -z $bin ]]; then
  bin="$top/target/release/goto-auth-proxy"
  if [[ ! -x $bin ]]; then
    say "no $bin yet: cargo build --release --locked"
    (cd "$top" && cargo build --release --locked --bin goto-auth-proxy)
  fi
fi
[[ -f $bin ]] || { say "no such file: $bin" >&2; exit 2; }
command -v ldd >/dev/null || { say "ldd is not installed (package libc-bin)" >&2; exit 2; }

say "checking $bin"
# ldd exits non-zero for a static binary; that is fine (nothing to load).
if ! out=$(LC_ALL=C ldd "$bin" 2>&1); then
  if [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]; then
    say "statically linked: nothing to check"
    exit 0
  fi
  die "ldd failed on $bin: $out"
fi

is_allowed() {
  local lib=$1 a
  for a in "${allowed[@]}"; do
    [[ $lib == "$a" ]] && return 0
  done
  return 1
}

bad=()
missing=()
while IFS= read -r line; do
  line=${line#"${line%%[![:space:]]*}"}       # trim leading blanks
  [[ -z $line ]] && continue
  [[ $line == *"statically linked"* ]] && continue
  name=${line%% *}                             # "libc.so.6 => /lib/…" or "/lib64/ld-linux-x86-64.so.2 (…)"
  name=${name##*/}
  if [[ $line == *"=> not found"* ]]; then
    missing+=("$name")
  elif ! is_allowed "$name"; then
    bad+=("$line")
  fi
  say "  needs $name"
done <<<"$out"

if ((${#missing[@]})); then
  die "libraries not found even on this machine: ${missing[*]}"
fi
if ((${#bad[@]})); then
  say "FAIL: $bin needs shared libraries that debian:bookworm-slim does not provide:" >&2
  printf '  %s\n' "${bad[@]}" >&2
  say "allowed: ${allowed[*]}" >&2
  say "hint: a new dependency pulled in a system library (OpenSSL?). Prefer rustls / pure-Rust crates, or install the package in deploy/Dockerfile's runtime stage." >&2
  exit 1
fi

# Newest GLIBC_x.y symbol version the binary asks for, when readelf is around.
version_gt() { # a > b for dotted numeric versions
  local i a b
  IFS=. read -r -a a <<<"$1"
  IFS=. read -r -a b <<<"$2"
  for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
    local x=${a[i]:-0} y=${b[i]:-0}
    ((10#$x > 10#$y)) && return 0
    ((10#$x < 10#$y)) && return 1
  done
  return 1
}
if command -v readelf >/dev/null; then
  newest="0"
  while IFS= read -r line; do
    while [[ $line =~ GLIBC_([0-9]+(\.[0-9]+)*)(.*) ]]; do
      version_gt "${BASH_REMATCH[1]}" "$newest" && newest=${BASH_REMATCH[1]}
      line=${BASH_REMATCH[3]}
    done
  done < <(LC_ALL=C readelf --version-info --wide "$bin" 2>/dev/null || true)
  say "newest glibc symbol version required: $newest (bookworm has $max_glibc)"
  if version_gt "$newest" "$max_glibc"; then
    die "$bin needs glibc $newest but debian:bookworm-slim has $max_glibc: build it on bookworm (rust:1-bookworm), as deploy/Dockerfile does"
  fi
else
  say "readelf not installed: glibc symbol versions not checked"
fi

say "ok: every shared library is in debian:bookworm-slim"
