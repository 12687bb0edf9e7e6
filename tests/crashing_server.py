"""A stand-in for llama.cpp's server built for another CPU: it loads, answers ``/v1/models``,
and dies with SIGSEGV at its first completion, as a native build does on a host whose CPU
advertises instructions (AMX) that its VM does not let programs run.

Run as ``python -m crashing_server`` with llama_cpp.server's options (facsynth starts it in
place of ``llama_cpp.server`` when ``$FACSYNTH_SERVER_MODULE`` names it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
from http.server import BaseHTTPRequestHandler, HTTPServer


class _Handler(BaseHTTPRequestHandler):
    alias = "model"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            body = json.dumps({"object": "list", "data": [{"id": self.alias, "object": "model"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    def do_POST(self) -> None:  # noqa: N802
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test's folder
        os.kill(os.getpid(), signal.SIGSEGV)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model_alias", default="model")
    args, _ = parser.parse_known_args()
    _Handler.alias = args.model_alias
    HTTPServer((args.host, args.port), _Handler).serve_forever()


if __name__ == "__main__":
    main()
