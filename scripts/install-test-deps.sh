#!/usr/bin/env bash
# Installs what the test suite uses beyond the Rust toolchain, only when missing:
#   curl           examples/scripts/list-webinars.sh
#   python3-yaml   tests/examples.rs parses deploy/kubernetes/*.yaml
#   redis-server   the Redis state store's tests, and the chaos soak (benches/soak.sh; redis-cli comes with it)
#   redis-sentinel the Sentinel failover tests (tests/it/redis_ha.rs; Redis Cluster needs only redis-server)
#   tinyproxy      a real forward proxy for the outbound-proxy tests (tests/it/corporate.rs)
#   newman         runs examples/postman against the demo proxy (npm; needs node/npm)
#   oidc-provider  the certified OpenID provider of tests/it/oidc.rs: `npm ci` into
#                  tests/oidc/node_modules, the version pinned by tests/oidc/package-lock.json
#   chromium, chromedriver  tests/it/status_page.rs drives the admin status page in a
#                  headless browser (Debian's chromium + chromium-driver);
#                  scripts/status-page-screenshot.sh takes docs/status-page.png with it
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

# ---- redis-sentinel ----
if command -v redis-sentinel >/dev/null; then
  say "redis-sentinel: present ($(command -v redis-sentinel))"
else
  apt_install redis-sentinel || true
fi

# ---- tinyproxy ----
if command -v tinyproxy >/dev/null; then
  say "tinyproxy: present ($(command -v tinyproxy))"
else
  # The package may start a system-wide instance; tests start their own.
  apt_install tinyproxy || true
fi

# ---- newman ----
ensure_npm() { command -v npm >/dev/null || apt_install nodejs npm || true; }
if command -v newman >/dev/null; then
  say "newman: present ($(newman --version 2>/dev/null </dev/null || echo '?'))"
else
  ensure_npm
  if command -v npm >/dev/null; then
    say "npm install -g newman"
    npm install -g --no-audit --no-fund --loglevel=error newman </dev/null || true
  fi
fi

# ---- oidc-provider (project-local, pinned by tests/oidc/package-lock.json) ----
oidc_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/oidc"
oidc_wanted() { node -p "require('$oidc_dir/package.json').dependencies['oidc-provider']" 2>/dev/null </dev/null; }
oidc_installed() { node -p "require('$oidc_dir/node_modules/oidc-provider/package.json').version" 2>/dev/null </dev/null; }
has_oidc() { command -v node >/dev/null && [[ -n $(oidc_installed) && $(oidc_installed) == "$(oidc_wanted)" ]]; }
if has_oidc; then
  say "oidc-provider: present ($(oidc_installed) in $oidc_dir/node_modules)"
else
  ensure_npm
  if command -v npm >/dev/null; then
    say "npm ci in $oidc_dir (oidc-provider $(oidc_wanted))"
    npm ci --prefix "$oidc_dir" --no-audit --no-fund --loglevel=error </dev/null || true
  fi
fi

# ---- chromium + chromedriver ----
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  say "chromium + chromedriver: present ($(command -v chromium), $(command -v chromedriver))"
else
  apt_install chromium chromium-driver || true
fi

# ---- summary ----
missing=()
command -v curl >/dev/null || missing+=(curl)
has_yaml || missing+=("python3 yaml")
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-sentinel >/dev/null || missing+=(redis-sentinel)
command -v tinyproxy >/dev/null || missing+=(tinyproxy)
if ! command -v newman >/dev/null; then
  hint=""
  command -v npm >/dev/null && hint=" (npm's global bin $(npm prefix -g 2>/dev/null </dev/null)/bin on PATH?)"
  missing+=("newman$hint")
fi
has_oidc || missing+=("oidc-provider (tests/oidc; needs node 20 or later and npm)")
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromedriver)
if ((${#missing[@]})); then
  say "still missing: ${missing[*]}" >&2
  exit 1
fi
say "done: curl, python3 yaml, redis-server, redis-sentinel, tinyproxy, newman, oidc-provider, chromium and chromedriver are installed"
