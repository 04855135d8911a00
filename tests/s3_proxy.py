"""A proxy in front of the S3 test server that answers every Nth request
503 SlowDown, as S3 does when it throttles a caller: stook must wait, retry
and go on. Usage: s3_proxy.py TARGET_PORT EVERY COUNT_FILE; prints the port
it listens on, and writes how many requests it refused to COUNT_FILE."""

import http.client
import http.server
import socketserver
import sys
import threading

TARGET = int(sys.argv[1])
EVERY = int(sys.argv[2])
COUNT_FILE = sys.argv[3]
lock = threading.Lock()
seen = 0
refused = 0
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class Proxy(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def relay(self):
        global seen, refused
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with lock:
            seen += 1
            throttle = seen % EVERY == 0
            if throttle:
                refused += 1
                with open(COUNT_FILE, "w") as f:
                    f.write(str(refused))
        if throttle:
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(SLOW_DOWN)
            return
        conn = http.client.HTTPConnection("127.0.0.1", TARGET, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        conn.request(self.command, self.path, body=body, headers=headers)
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status)
        for k, v in r.getheaders():
            if k.lower() not in HOP:
                self.send_header(k, v)
        if self.command == "HEAD":
            self.send_header("Content-Length", r.getheader("Content-Length") or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


server = Server(("127.0.0.1", 0), Proxy)
print(server.server_address[1], flush=True)
server.serve_forever()
