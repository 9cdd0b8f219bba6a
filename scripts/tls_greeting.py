#!/usr/bin/env python3
"""How long a TLS client waits for its greeting: connect, handshake (Python's
ssl module, TLS 1.3 by default), then read until `Hello\\n`; median and
maximum over a number of trials, one connection at a time.

    scripts/tls_greeting.py --port 8000 --ca ca.pem [--trials 20]
"""
import argparse
import socket
import ssl
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True, help="the CA that signed the server's certificate")
    parser.add_argument("--name", default="localhost", help="the name the certificate is for")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    context = ssl.create_default_context(cafile=args.ca)
    waits = []
    for _ in range(args.trials):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", args.port), timeout=10) as tcp:
            with context.wrap_socket(tcp, server_hostname=args.name) as tls:
                got = b""
                while not got.endswith(b"\n"):
                    chunk = tls.recv(64)
                    if not chunk:
                        raise SystemExit(f"closed before the greeting: {got!r}")
                    got += chunk
        waits.append((time.perf_counter() - started) * 1000)
    print(f"connect to greeting over {args.trials} TLS clients: "
          f"median {statistics.median(waits):.1f} ms, max {max(waits):.1f} ms")


if __name__ == "__main__":
    main()
