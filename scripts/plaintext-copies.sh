#!/usr/bin/env bash
# Counts the copies of a secret value left in the controller's memory after a reconcile:
# starts a stub Kubernetes API server (Python, another process, plain HTTP on loopback) and
# runs examples/plaintext_copies.rs against it, which prints the counts.
#
# Usage: scripts/plaintext-copies.sh [--release]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

port_file=$(mktemp)
trap 'kill "$server" 2>/dev/null || true; rm -f "$port_file"' EXIT

python3 - "$port_file" <<'PY' &
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

PARTIAL = {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
           "metadata": {"name": "db", "namespace": "prod", "resourceVersion": "2"}}

class Stub(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_body(self):
        # Read and drop: the stub keeps no copy of what the controller sent.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": "NotFound", "code": 404, "message": "not found"})

    def do_POST(self):
        self.read_body()
        if "/events" in self.path:
            self.answer(201, {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                              "metadata": {"name": "e", "namespace": "prod"},
                              "eventTime": "2026-01-01T00:00:00.000000Z"})
        else:
            self.answer(201, PARTIAL)

    def do_PUT(self):
        self.read_body()
        self.answer(200, PARTIAL)

    def do_PATCH(self):
        self.read_body()
        self.answer(200, {"apiVersion": "kmseal.dev/v1alpha1", "kind": "EncryptedSecret",
                          "metadata": {"name": "db", "namespace": "prod"}, "spec": {}})

server = HTTPServer(("127.0.0.1", 0), Stub)
with open(sys.argv[1], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
PY
server=$!

for _ in $(seq 50); do
    [[ -s $port_file ]] && break
    sleep 0.1
done
port=$(cat "$port_file")
cargo run --quiet "$@" --example plaintext_copies -- "http://127.0.0.1:$port"
