"""Container healthcheck: GET one URL (default: the gateway's /health) and exit 0 only on 2xx.

The slim image has no curl or wget; the standard library is enough and adds nothing to the image.
Usage: ordersaga-healthcheck [URL]
"""

import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/health"


def main() -> int:
    url = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # noqa: S310 (a fixed local URL)
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as err:
        print(f"unhealthy: {url}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
