#!/usr/bin/env bash
# Lists the organizer's GoToWebinar webinars through goto-auth-proxy.
#
# No token, client id or organizer key here: the proxy adds `Authorization: Bearer …`
# and replaces the {organizerKey} path segment with the signed-in organizer's key.
#
#   GOTO_AUTH_PROXY_URL=http://127.0.0.1:8080 examples/scripts/list-webinars.sh
#   examples/scripts/list-webinars.sh 2024-01-01T00:00:00Z 2024-12-31T23:59:59Z
#
# Arguments: FROM and TO (ISO 8601, UTC); default: from 30 days ago to 90 days ahead.
# Prints GoTo's JSON answer as it is (keys beyond 2^53 intact); exits non-zero on an
# HTTP error (curl's exit code 22) or when the proxy cannot be reached.
set -euo pipefail

base=${GOTO_AUTH_PROXY_URL:-http://127.0.0.1:8080}
base=${base%/}

iso() { # iso OFFSET_DAYS: UTC timestamp, GNU date or BSD date
  date -u -d "$1 days" +%Y-%m-%dT%H:%M:%SZ 2>/dev/null || date -u -v"$1"d +%Y-%m-%dT%H:%M:%SZ
}
from=${1:-$(iso -30)}
to=${2:-$(iso +90)}

# %7BorganizerKey%7D is "{organizerKey}", percent-encoded so curl sends it untouched.
curl -fsS -H 'Accept: application/json' \
  "$base/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars?fromTime=$from&toTime=$to"
echo
