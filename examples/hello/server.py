"""The sample app of the README: answers every GET with the instance that
served it, and /health for the platform's health check. Listens on $PORT,
after $START_DELAY seconds (default 0: a slow-starting app, for tests)."""
import http.server
import json
import os
import time

INSTANCE = os.environ.get("SHELLWEGO_INSTANCE_ID", "local")
APP = os.environ.get("SHELLWEGO_APP", "hello")


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok\n"
        else:
            body = (json.dumps({"app": APP, "instance": INSTANCE, "path": self.path}) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if self.path == "/health" else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print(f"{self.address_string()} {fmt % args}", flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    time.sleep(float(os.environ.get("START_DELAY", "0")))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"{APP} ({INSTANCE}) listening on port {port}", flush=True)
    server.serve_forever()
