"""A stand-in for E2B's code-interpreter server on 127.0.0.1:49999.

The SDK in `debug=True` mode skips the control plane and POSTs to
http://localhost:49999/execute, reading JSON lines (stdout, stderr, result,
error, number_of_executions, end_of_execution). This server really executes
the code, through our local sandbox, and streams those lines back.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.sandbox.local import LocalSandbox

PORT = 49999


class _Handler(BaseHTTPRequestHandler):
    server: "FakeE2bServer"
    disable_nagle_algorithm = True  # no delayed-ACK stall between a response's writes

    def log_message(self, format: str, *args: object) -> None:
        return None

    def do_GET(self) -> None:  # /health, as envd answers
        self.send_response(200 if self.path.startswith("/health") else 404)
        self.end_headers()

    def do_POST(self) -> None:
        if self.path != "/execute":
            self.send_response(404)
            self.end_headers()
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        self.server.requests.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        lock = threading.Lock()

        def send(record: dict) -> None:
            with lock:
                self.wfile.write((json.dumps(record) + "\n").encode())
                self.wfile.flush()

        def stream(kind: str):
            return lambda text: send({"type": kind, "text": text, "timestamp": time.time_ns()})

        ex = self.server.sandbox.run(body["code"], body.get("language") or "python",
                                     on_stdout=stream("stdout"), on_stderr=stream("stderr"))
        for result in ex.results:
            send({"type": "result", **result.model_dump(by_alias=True, exclude_none=True)})
        if ex.error is not None:
            send({"type": "error", **ex.error.model_dump()})
        self.server.executions += 1
        send({"type": "number_of_executions", "execution_count": self.server.executions})
        send({"type": "end_of_execution"})


class FakeE2bServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, sandbox: LocalSandbox, port: int = PORT) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.sandbox = sandbox
        self.requests: list[dict] = []
        self.executions = 0
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "FakeE2bServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
