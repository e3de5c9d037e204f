#!/usr/bin/env python3
"""Broker memory per idle connection, per offline session, per retained message and per
subscription, for midge
(io_uring and epoll) and Debian's mosquitto, in one run. Loopback only; every broker is
started here on a free port and stopped by its PID.

    python3 scripts/memory.py [--connections N] [--sessions N] [--retained N] [--subscriptions N]
                              [--brokers midge-uring,midge-epoll,mosquitto]

midge-base in --brokers is the binary $MIDGE_BASELINE (another build: before and after a
change), with its default backend.

RSS is read from /proc/PID/status (VmRSS) after the broker has answered everything sent
(a PINGREQ after the last packet on each connection); growth is divided by the count.
Allocators take memory from the system in large steps, so small counts read coarsely:
use the largest counts the machine allows (the file-descriptor limit bounds connections).
"""
import argparse
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import time

from mqttwire import free_port, packet, rss, s, stop_process, wait_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 120.0


def connect(client_id, keepalive=0, clean=True):
    flags = 0x02 if clean else 0x00
    return packet(0x10, s("MQTT") + bytes([4, flags]) + struct.pack(">H", keepalive) + s(client_id))


PINGREQ = b"\xc0\x00"


def read_until(sock, want_end):
    """Reads until the stream ends with `want_end` (a PINGRESP or a CONNACK)."""
    sock.settimeout(DEADLINE)
    got = b""
    while not got.endswith(want_end):
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise RuntimeError("broker closed the connection")
        got = got[-64:] + chunk
    return got


class Broker:
    def __init__(self, name):
        self.name = name
        self.port = free_port()
        midge = os.path.join(ROOT, "target/release/midge")
        if name == "mosquitto":
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            cmd = [exe, "-p", str(self.port)]
        elif name == "midge-base":
            # Another build (before a change), with its default backend.
            cmd = [os.environ["MIDGE_BASELINE"], "-p", str(self.port), "--threads", "1"]
        else:
            cmd = [midge, "-p", str(self.port), "--threads", "1", "--io", name.split("-")[1]]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port, self.proc, name)

    def client(self, client_id, clean=True):
        sock = socket.create_connection(("127.0.0.1", self.port), DEADLINE)
        sock.sendall(connect(client_id, clean=clean))
        read_until(sock, b"\x20\x02\x00\x00")
        return sock

    def stop(self):
        stop_process(self.proc)


def settle(broker, sock):
    sock.sendall(PINGREQ)
    read_until(sock, b"\xd0\x00")
    # Long enough for a midge shard to see a quiet timer tick (every 250 ms) after the
    # burst and give freed memory back, as a broker at rest would; every broker waits alike.
    time.sleep(0.6)
    return rss(broker.proc.pid)


def per_connection(broker, n):
    probe = broker.client("probe")
    before = settle(broker, probe)
    socks = [broker.client(f"idle-{i}") for i in range(n)]
    after = settle(broker, probe)
    for sock in socks:
        sock.close()
    return (after - before) / n


def per_offline_session(broker, n):
    """Persistent sessions (clean session 0) whose clients connected and went away (a
    DISCONNECT, then the socket closed): what a broker keeps for a client that is not there."""
    probe = broker.client("probe")
    before = settle(broker, probe)
    for i in range(n):
        sock = broker.client(f"away-{i}", clean=False)
        sock.sendall(b"\xe0\x00")
        sock.close()
    after = settle(broker, probe)
    return (after - before) / n


def per_retained(broker, n):
    sock = broker.client("retainer")
    before = settle(broker, sock)
    payload = b"x" * 32
    batch = bytearray()
    for i in range(n):
        batch += packet(0x31, s(f"memory/retained/{i // 1000}/{i}") + payload)
        if len(batch) > 1 << 20:
            sock.sendall(batch)
            batch = bytearray()
    sock.sendall(batch)
    after = settle(broker, sock)
    return (after - before) / n


def per_subscription(broker, n, clients=10):
    socks = [broker.client(f"subscriber-{c}") for c in range(clients)]
    before = settle(broker, socks[0])
    for c, sock in enumerate(socks):
        batch = bytearray()
        for i in range(c, n, clients):
            packet_id = i % 65535 + 1
            batch += packet(0x82, struct.pack(">H", packet_id) + s(f"memory/sub/{i // 100}/{i}") + b"\x01")
        sock.sendall(batch)
    for sock in socks:
        settle(broker, sock)
    after = rss(broker.proc.pid)
    return (after - before) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=9000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--retained", type=int, default=100_000)
    parser.add_argument("--subscriptions", type=int, default=100_000)
    parser.add_argument("--brokers", default="midge-uring,midge-epoll,mosquitto")
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and args.connections + 64 > hard:
        sys.exit(f"memory.py: {args.connections} connections need more file descriptors than the hard limit ({hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    brokers = args.brokers.split(",")
    for name in brokers:
        if name not in ("midge-uring", "midge-epoll", "midge-base", "mosquitto"):
            sys.exit(f"memory.py: no broker {name!r} (midge-uring, midge-epoll, midge-base, mosquitto)")
    if "midge-base" in brokers and not os.access(os.environ.get("MIDGE_BASELINE", ""), os.X_OK):
        sys.exit("memory.py: midge-base needs MIDGE_BASELINE=path/to/another/midge")
    rows = []
    for what, count, measure in (
        ("idle connection", args.connections, per_connection),
        ("offline session", args.sessions, per_offline_session),
        ("retained message", args.retained, per_retained),
        ("subscription", args.subscriptions, per_subscription),
    ):
        if count <= 0:
            continue
        figures = []
        for name in brokers:
            broker = Broker(name)
            try:
                figures.append(measure(broker, count))
            finally:
                broker.stop()
        rows.append((f"bytes per {what} ({count:,})", figures))
    print(f"{'':<36}" + "".join(f"{b:>14}" for b in brokers))
    for label, figures in rows:
        print(f"{label:<36}" + "".join(f"{f:>14,.0f}" for f in figures))


if __name__ == "__main__":
    main()
