"""Container HEALTHCHECK for the edgemq image (deploy/Dockerfile).

Healthy (exit 0) when `GET /healthz` answers 200 on the port of whatever the container
runs: the node's HTTP port (EDGEMQ_HTTP_PORT, or `edgemq up`'s EDGEMQ_INGEST_PORT) or
the control plane's (EDGEMQ_PORT, or `edgemq up`'s EDGEMQ_CONTROL_PORT); defaults are
the CLI's. Exit 1 otherwise. Ports given as command-line flags instead of environment
variables are not seen: in containers, configure through the environment.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

PORTS = (
    ("EDGEMQ_HTTP_PORT", "8080"),
    ("EDGEMQ_INGEST_PORT", "8080"),
    ("EDGEMQ_PORT", "8081"),
    ("EDGEMQ_CONTROL_PORT", "8081"),
)
TIMEOUT_S = 3.0


def host() -> str:
    bound = os.environ.get("EDGEMQ_HOST", "127.0.0.1")
    if bound in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bound}]" if ":" in bound else bound


def healthy(port: str) -> bool:
    url = f"http://{host()}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def main() -> int:
    ports = dict.fromkeys(os.environ.get(name, default) for name, default in PORTS)
    for port in ports:
        if healthy(port):
            return 0
    print(f"edgemq-healthcheck: no /healthz answered 200 on ports {', '.join(ports)}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
