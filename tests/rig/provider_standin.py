#!/usr/bin/env python3
"""A local stand-in for a hosting provider's failover API, for the rig.

It answers the call Navette's HTTP provider makes (the shape of Hetzner's
Robot API):

    POST /failover/<address>
    Content-Type: application/x-www-form-urlencoded

    active_server_ip=<main address of the host that now holds it>

by waiting --delay-ms (real providers take 40 to 60 s to switch), then
routing the address to that main address on the router it runs in
(`ip route replace <address>/32|128 via <main address>`), and answering 200
with a JSON body. A request it cannot act on gets 4xx/5xx with the reason.
Runs inside the rig's router namespace; Python standard library only.
"""

import argparse
import http.server
import ipaddress
import json
import subprocess
import sys
import time
import urllib.parse


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--delay-ms", type=int, default=0)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    delay = args.delay_ms / 1000.0

    class Failover(http.server.BaseHTTPRequestHandler):
        def answer(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            parts = self.path.strip("/").split("/")
            if len(parts) != 2 or parts[0] != "failover":
                return self.answer(404, {"error": "NOT_FOUND", "path": self.path})
            try:
                address = ipaddress.ip_address(parts[1])
                length = int(self.headers.get("Content-Length", "0"))
                form = urllib.parse.parse_qs(self.rfile.read(length).decode())
                active = ipaddress.ip_address(form["active_server_ip"][0])
            except (ValueError, KeyError, IndexError) as error:
                return self.answer(400, {"error": "INVALID_INPUT", "detail": str(error)})
            if address.version != active.version:
                return self.answer(400, {"error": "INVALID_INPUT",
                                         "detail": "address and active_server_ip differ in family"})
            time.sleep(delay)
            prefix = 32 if address.version == 4 else 128
            command = ["ip", f"-{address.version}", "route", "replace",
                       f"{address}/{prefix}", "via", str(active)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                return self.answer(500, {"error": "ROUTE_FAILED", "detail": done.stderr.strip()})
            print(f"failover {address} -> {active} "
                  f"(operation {self.headers.get('X-Navette-Operation', '-')})", flush=True)
            self.answer(200, {"failover": {"ip": str(address),
                                           "active_server_ip": str(active)}})

        def log_message(self, format, *args):
            sys.stderr.write("%s\n" % (format % args))

    server = http.server.ThreadingHTTPServer((host, int(port)), Failover)
    server.serve_forever()


if __name__ == "__main__":
    main()
