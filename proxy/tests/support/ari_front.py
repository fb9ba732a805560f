#!/usr/bin/env python3
"""ACME renewal information (ARI, RFC 9773) in front of Debian's pebble 2.4,
which has none. Test use only.

Serves, over HTTPS:
  GET /dir                  pebble's directory, with "renewalInfo" added
  GET /renewal-info/<id>    a suggested window: already open for the first
                            certificate asked about, a month away for any
                            other (so a renewal happens once)
Every other ACME URL in the directory still points at pebble itself. Each
<id> asked is appended to the log file, one a line.

usage: ari_front.py PORT PEBBLE_DIRECTORY CERT KEY CA LOG
"""

import datetime
import json
import ssl
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, DIRECTORY, CERT, KEY, CA, LOG = sys.argv[1:7]
UPSTREAM = ssl.create_default_context(cafile=CA)
FIRST = []


def stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


class Handler(BaseHTTPRequestHandler):
    def reply(self, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/dir":
            with urllib.request.urlopen(DIRECTORY, context=UPSTREAM, timeout=5) as r:
                directory = json.load(r)
            directory["renewalInfo"] = f"https://127.0.0.1:{PORT}/renewal-info"
            self.reply(directory)
        elif self.path.startswith("/renewal-info/"):
            cert_id = self.path[len("/renewal-info/"):]
            with open(LOG, "a") as log:
                log.write(cert_id + "\n")
            if not FIRST:
                FIRST.append(cert_id)
            now = datetime.datetime.now(datetime.timezone.utc)
            if cert_id == FIRST[0]:
                start, end = now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1)
            else:
                start, end = now + datetime.timedelta(days=30), now + datetime.timedelta(days=31)
            window = {"suggestedWindow": {"start": stamp(start), "end": stamp(end)}}
            self.reply(window, [("Retry-After", "3600")])
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", int(PORT)), Handler)
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(CERT, KEY)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
