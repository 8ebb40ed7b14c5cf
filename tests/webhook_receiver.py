"""A webhook receiver for authql's tests: every delivery is verified with the `standardwebhooks`
library (PyPI), as an app would, before it is kept.

    python webhook_receiver.py --dir DIR --secret whsec_... [--port N]

Prints `LISTENING <port>` once it accepts connections, then serves until stdin closes or it is
killed. A delivery that verifies (signature, and a timestamp within 5 minutes: the library's
rules) is answered 204 and written to DIR as `<n>.json`: `{"path", "webhook_id", "payload"}`
(the payload as the library returned it), written whole and then renamed, so that a reader
never sees half of one. One that does not verify is answered 400 and counted in
DIR/rejected.count.
"""

import argparse
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError


def write_atomically(path, data):
    temporary = path + ".tmp"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


class Keeper:
    def __init__(self, directory, secret):
        self.directory = directory
        self.webhook = Webhook(secret)
        self.lock = threading.Lock()
        self.count = len([name for name in os.listdir(directory) if name.endswith(".json")])
        rejected = os.path.join(directory, "rejected.count")
        self.rejected = int(open(rejected).read()) if os.path.exists(rejected) else 0

    def keep(self, path, headers, body):
        try:
            payload = self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError):
            with self.lock:
                self.rejected += 1
                write_atomically(
                    os.path.join(self.directory, "rejected.count"), str(self.rejected).encode()
                )
            return False
        with self.lock:
            self.count += 1
            number = self.count
        record = {"path": path, "webhook_id": headers.get("webhook-id"), "payload": payload}
        write_atomically(
            os.path.join(self.directory, f"{number:06d}.json"), json.dumps(record).encode()
        )
        return True


def handler_for(keeper):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            kept = keeper.keep(self.path, headers, body)
            self.send_response(204 if kept else 400)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler_for(Keeper(args.dir, args.secret)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    # Serve until the test closes stdin (or kills this process).
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
