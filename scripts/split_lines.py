#!/usr/bin/env python3
"""Split lines: how long a server takes to answer long lines that a client
(Nagle's algorithm on, as by default) writes in pieces. Two patterns, 20
trials each, medians printed:

- four 10 000-byte lines back to back, each written as the line and then
  its newline, then the four replies read;
- one 57 344-byte line written in 8 KiB pieces 0.1 ms apart, then its
  newline, the reply timed from the newline.

    scripts/split_lines.py --port 8000
"""
import argparse
import socket
import time


def median(times):
    times = sorted(times)
    return "median %.1f ms (min %.1f, max %.1f, %d trials)" % (
        times[len(times) // 2], times[0], times[-1], len(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    sock = socket.create_connection(("127.0.0.1", args.port))
    lines = sock.makefile("rb")
    assert lines.readline() == b"Hello\n"

    times = []
    for _ in range(args.trials):
        started = time.perf_counter()
        for _ in range(4):
            sock.sendall(b"z" * 10000)
            sock.sendall(b"\n")
        for _ in range(4):
            assert lines.readline().endswith(b"z" * 10000 + b"\n")
        times.append((time.perf_counter() - started) * 1000)
    print("four 10 000-byte lines, each then its newline, all four replies:", median(times))

    times = []
    for _ in range(args.trials):
        for _ in range(7):
            sock.sendall(b"p" * 8192)
            time.sleep(0.0001)
        started = time.perf_counter()
        sock.sendall(b"\n")
        assert lines.readline().endswith(b"p" * 57344 + b"\n")
        times.append((time.perf_counter() - started) * 1000)
    print("a 57 344-byte line in 8 KiB pieces, the reply after its newline:", median(times))


if __name__ == "__main__":
    main()
