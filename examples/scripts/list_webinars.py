#!/usr/bin/env python3
"""Lists the organizer's GoToWebinar webinars through goto-auth-proxy.

No token, client id or organizer key here: the proxy adds `Authorization: Bearer ...`
and replaces the {organizerKey} path segment with the signed-in organizer's key.
Standard library only.

    GOTO_AUTH_PROXY_URL=http://127.0.0.1:8080 python3 examples/scripts/list_webinars.py
    python3 examples/scripts/list_webinars.py 2024-01-01T00:00:00Z 2024-12-31T23:59:59Z

Arguments: FROM and TO (ISO 8601, UTC); default: from 30 days ago to 90 days ahead.
Prints GoTo's JSON answer as it is: the body is not parsed and re-encoded, so webinar
and organizer keys beyond 2^53 stay exact. Exit status 1 on an HTTP error (the answer
goes to stderr), 2 when the proxy cannot be reached.
"""

import datetime
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def iso(days: int) -> str:
    t = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def main(argv: list) -> int:
    base = os.environ.get("GOTO_AUTH_PROXY_URL", "http://127.0.0.1:8080").rstrip("/")
    start = argv[1] if len(argv) > 1 else iso(-30)
    end = argv[2] if len(argv) > 2 else iso(90)
    query = urllib.parse.urlencode({"fromTime": start, "toTime": end}, safe=":")
    # %7BorganizerKey%7D is "{organizerKey}", percent-encoded; the proxy fills it in.
    url = f"{base}/G2W/rest/v2/organizers/%7BorganizerKey%7D/webinars?{query}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=70) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", "replace")
        proxy_error = e.headers.get("x-goto-auth-proxy-error")
        who = f"goto-auth-proxy ({proxy_error})" if proxy_error else "GoTo"
        print(f"error: HTTP {e.code} from {who}: {detail}", file=sys.stderr)
        return 1
    except urllib.error.URLError as e:
        print(f"error: cannot reach goto-auth-proxy at {base}: {e.reason}", file=sys.stderr)
        return 2
    sys.stdout.write(body.decode("utf-8", "replace"))
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
