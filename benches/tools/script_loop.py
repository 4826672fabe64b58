#!/usr/bin/env python3
"""A legacy script's loop, for benches/scripts.sh: N GET requests with urllib and no
connection reuse (urllib opens a new connection, and for https a new TLS session, per
call — what a script without a `requests.Session` does).

    script_loop.py URL N [CA_FILE [BEARER_TOKEN]]

Exits non-zero when any answer is not 200.
"""

import ssl
import sys
import urllib.request


def main():
    url, n = sys.argv[1], int(sys.argv[2])
    ctx = ssl.create_default_context(cafile=sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None
    headers = {"Accept": "application/json"}
    if len(sys.argv) > 4:
        headers["Authorization"] = "Bearer " + sys.argv[4]
    bad = 0
    for _ in range(n):
        req = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            r.read()
            if r.status != 200:
                bad += 1
    if bad:
        print(f"{bad} of {n} answers were not 200", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
