"""A loopback HTTP sink for the chaos test, run as a process of its own (stdlib only).

It binds 127.0.0.1 on a port the OS picks, prints that port as its first stdout line, and
answers every request 200 at once. Before answering it appends one JSON line per request
to the file named on the command line (flushed line by line, so a line is on disk before
the executor sees the 200): method, path, the X-Almanac-* headers, Idempotency-Key and the
receive time in milliseconds since the Unix epoch. It exits when its stdin closes, so it
never outlives the test that started it.

usage: sink.py RECORD_FILE
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Recorder(BaseHTTPRequestHandler):
    # Keep-alive: the executor's HTTP client reuses its connections.
    protocol_version = "HTTP/1.1"

    def record_and_answer(self):
        received_ms = int(time.time() * 1000)
        length = int(self.headers.get("Content-Length") or 0)
        if length > 0:
            self.rfile.read(length)
        line = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "schedule_id": self.headers.get("X-Almanac-Schedule-Id"),
                "run_id": self.headers.get("X-Almanac-Run-Id"),
                "nominal_time": self.headers.get("X-Almanac-Nominal-Time"),
                "key": self.headers.get("Idempotency-Key"),
                "received_ms": received_ms,
            }
        )
        with self.server.record_lock:
            self.server.record.write(line + "\n")
            self.server.record.flush()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = record_and_answer
    do_POST = record_and_answer
    do_PUT = record_and_answer

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a burst of new connections (a restarted
    # executor, 200 fires on one second) overflowed it, the kernel dropped the SYNs, and
    # the client's retransmits (after 1 s, then 2 s more) held those requests for seconds.
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        # A killed executor resets its connections: expected here, and not a delivery.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    server = Server(("127.0.0.1", 0), Recorder)
    server.record = open(sys.argv[1], "a", encoding="utf-8")
    server.record_lock = threading.Lock()
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
