#!/usr/bin/python3
"""An HTTP server on loopback for the notification specs: it records every POST.

    http_server.py DIR [--statuses 500,200] [--hang SECONDS]

Listens on a free port of 127.0.0.1 and writes it to DIR/port. Each POST is written to
DIR/post-N.json ({path, headers, body}) as soon as its body is read, then answered with the
next status of --statuses (the last one repeats; default 200) after --hang seconds (default 0).
Stops on SIGTERM.
"""
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

directory = sys.argv[1]
statuses = [200]
hang = 0.0
args = sys.argv[2:]
while args:
    a = args.pop(0)
    if a == "--statuses":
        statuses = [int(s) for s in args.pop(0).split(",")]
    elif a == "--hang":
        hang = float(args.pop(0))
    else:
        sys.exit("http_server.py: unknown option " + a)
lock = threading.Lock()
count = [0]


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with lock:
            count[0] += 1
            n = count[0]
            status = statuses[min(n, len(statuses)) - 1]
        path = os.path.join(directory, "post-%d.json" % n)
        with open(path + ".tmp", "w") as f:
            json.dump({"path": self.path, "headers": dict(self.headers.items()),
                       "body": body.decode("utf-8", "replace")}, f)
        os.rename(path + ".tmp", path)
        time.sleep(hang)
        reply = b'{"ok": %s}' % (b"true" if status < 300 else b"false")
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except OSError:
            pass  # the client gave up (its timeout)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(os.path.join(directory, "port.tmp"), "w") as f:
    f.write("%d\n" % server.server_address[1])
os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=server.shutdown).start())
server.serve_forever()
