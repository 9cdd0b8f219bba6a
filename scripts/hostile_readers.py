#!/usr/bin/env python3
"""Hostile readers: CLIENTS connections each send LINES lines of SIZE bytes
(as fast as the server takes them) and never read a byte. Prints one JSON
object: the server's RSS before they connect, once they have sent what the
server would take (all of it, or until it stopped reading them), and after
they have all closed; and the kernel's TCP memory (machine-wide, so both
ends on loopback) before and with them.

    scripts/hostile_readers.py --port 8120 --server-pid PID --clients 1000 --size 65536 --lines 64
"""
import argparse
import json
import selectors
import socket
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


def tcp_mem_kib():
    """The kernel's memory for TCP, machine-wide (both ends, on loopback)."""
    with open("/proc/net/sockstat") as sockstat:
        for line in sockstat:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("mem") + 1]) * 4
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--size", type=int, default=65536, help="bytes per line, before its newline")
    parser.add_argument("--lines", type=int, default=64, help="lines each client tries to send")
    parser.add_argument("--send-for", type=float, default=8.0, help="seconds to keep sending")
    args = parser.parse_args()

    before = rss_kib(args.server_pid)
    tcp_before = tcp_mem_kib()
    stream = (b"x" * args.size + b"\n") * args.lines
    selector = selectors.DefaultSelector()
    clients = []
    for _ in range(args.clients):
        sock = socket.create_connection(("127.0.0.1", args.port))
        sock.setblocking(False)
        client = {"sock": sock, "sent": 0}
        clients.append(client)
        selector.register(sock, selectors.EVENT_WRITE, client)
    # Send until every client has sent everything, or the server stopped
    # taking bytes from the rest (it is stuck writing replies nobody reads).
    deadline = time.monotonic() + args.send_for
    while selector.get_map() and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=0.2):
            client = key.data
            try:
                client["sent"] += client["sock"].send(stream[client["sent"]:client["sent"] + 262144])
            except BlockingIOError:
                continue
            except OSError:
                client["sent"] = len(stream)
            if client["sent"] >= len(stream):
                selector.unregister(client["sock"])
    time.sleep(1)
    stuck = rss_kib(args.server_pid)
    tcp_stuck = tcp_mem_kib()
    unsent = sum(len(stream) - c["sent"] for c in clients)
    blocked = sum(1 for c in clients if c["sent"] < len(stream))
    for client in clients:
        client["sock"].close()
    time.sleep(3)
    after = rss_kib(args.server_pid)
    print(json.dumps({
        "clients": args.clients, "size": args.size, "lines": args.lines,
        "rss_before_kib": before, "rss_stuck_kib": stuck, "rss_after_kib": after,
        "bytes_per_client": (stuck - before) * 1024 / args.clients,
        "clients_the_server_stopped_reading": blocked, "bytes_unsent": unsent,
        "tcp_mem_before_kib": tcp_before, "tcp_mem_stuck_kib": tcp_stuck,
    }))


if __name__ == "__main__":
    main()
