"""A tenant out of rate limit: every request is answered 429 with Auth0's
headers (Retry-After 1 s). Logs each request's arrival to stdout."""
import http.server
import json
import sys
import threading
import time

START = time.monotonic()
LOG = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with LOG:
            print(f"{time.monotonic() - START:.3f} {self.command} {self.path}", flush=True)
        body = json.dumps({"statusCode": 429, "error": "Too Many Requests",
                           "message": "Global limit has been reached", "errorCode": "too_many_requests"}).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ratelimit-limit", "2")
        self.send_header("x-ratelimit-remaining", "0")
        self.send_header("x-ratelimit-reset", str(int(time.time()) + 1))
        self.send_header("Retry-After", "1")
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass  # tollgate stops its other lookups once one is refused

    do_GET = do_PATCH = do_POST = do_DELETE = answer

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
