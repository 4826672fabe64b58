#!/usr/bin/env bash
# Installs what the test suite uses beyond the Rust toolchain, only when missing:
#   curl           examples/scripts/list-webinars.sh
#   python3-yaml   tests/examples.rs parses deploy/kubernetes/*.yaml
#   redis-server   the Redis state store's tests, and the chaos soak (benches/soak.sh; redis-cli comes with it)
#   newman         runs examples/postman against the demo proxy (npm; needs node/npm)
#
# Idempotent and non-interactive (stdin is never read), meant for root on a Debian
# machine (CI runs it before the tests):
#   bash scripts/install-test-deps.sh
# `apt-get update` runs at most once, and only when something has to be installed.
# Exit 0 when every tool is there afterwards, 1 otherwise (after trying them all).
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
say() { printf 'install-test-deps: %s\n' "$*"; }

sudo_=()
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null </dev/null; then
    sudo_=(sudo -n)
  else
    say "not root and no password-less sudo: apt-get installs will be skipped" >&2
  fi
fi
can_apt() { [[ $(id -u) -eq 0 || ${#sudo_[@]} -gt 0 ]] && command -v apt-get >/dev/null; }

apt_updated=0
apt_install() {
  if ! can_apt; then
    say "cannot apt-get install $* here (not root, or not Debian)" >&2
    return 1
  fi
  if ((apt_updated == 0)); then
    say "apt-get update"
    "${sudo_[@]}" apt-get update -qq </dev/null || return 1
    apt_updated=1
  fi
  say "apt-get install $*"
  "${sudo_[@]}" apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

has_yaml() { command -v python3 >/dev/null && python3 -c 'import yaml' 2>/dev/null </dev/null; }

# ---- curl ----
if command -v curl >/dev/null; then
  say "curl: present ($(command -v curl))"
else
  apt_install curl ca-certificates || true
fi

# ---- PyYAML for python3 ----
if has_yaml; then
  say "python3 yaml: present"
else
  apt_install python3-yaml || true
  if ! has_yaml && command -v python3 >/dev/null; then
    # `python3` on PATH may not be Debian's (pyenv, a venv): give that one PyYAML too.
    say "python3 ($(command -v python3)) still lacks yaml: python3 -m pip install pyyaml"
    python3 -m pip install --quiet --disable-pip-version-check pyyaml </dev/null || true
  fi
fi

# ---- redis-server ----
if command -v redis-server >/dev/null; then
  say "redis-server: present ($(command -v redis-server))"
else
  # The package may try to start a system-wide instance; tests start their own.
  apt_install redis-server || true
fi

# ---- newman ----
if command -v newman >/dev/null; then
  say "newman: present ($(newman --version 2>/dev/null </dev/null || echo '?'))"
else
  if ! command -v npm >/dev/null; then
    apt_install nodejs npm || true
  fi
  if command -v npm >/dev/null; then
    say "npm install -g newman"
    npm install -g --no-audit --no-fund --loglevel=error newman </dev/null || true
  fi
fi

# ---- summary ----
missing=()
command -v curl >/dev/null || missing+=(curl)
has_yaml || missing+=("python3 yaml")
command -v redis-server >/dev/null || missing+=(redis-server)
if ! command -v newman >/dev/null; then
  hint=""
  command -v npm >/dev/null && hint=" (npm's global bin $(npm prefix -g 2>/dev/null </dev/null)/bin on PATH?)"
  missing+=("newman$hint")
fi
if ((${#missing[@]})); then
  say "still missing: ${missing[*]}" >&2
  exit 1
fi
say "done: curl, python3 yaml, redis-server and newman are installed"
