#!/usr/bin/env python3
"""Docker HEALTHCHECK for both roles: GET http://127.0.0.1:$PORT/health must answer 200.

Standard library only, so it works in any image without curl.
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # any failure (refused, timeout, non-2xx) means unhealthy
    print(f"unhealthy: {url}: {exc}", file=sys.stderr)
    sys.exit(1)
