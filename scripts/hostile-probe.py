#!/usr/bin/env python3
"""One hostile client at a time against a fresh midge (release build, one shard), measuring
what it makes the broker hold (RSS) or how long it stalls another client (the worst PINGREQ
round trip while it runs). The probes behind issue 28's later findings:

  deep-retained N   N retained QoS 0 PUBLISHes on topics of 200 empty levels
  deep-filters N    N subscriptions to filters of 200 empty levels, 100 to a SUBSCRIBE
  props MB          one 5.0 PUBLISH of MB megabytes of empty User Properties
  utf8 MB           one 5.0 PUBLISH of MB megabytes said to be UTF-8
  plain MB          one 5.0 PUBLISH of MB megabytes

Usage: python3 scripts/hostile-probe.py deep-retained 20000 [--midge PATH] [--memory-limit B]
Loopback only; the broker is stopped at the end.
"""
import argparse
import os
import socket
import struct
import subprocess
import tempfile
import threading
import time

from mqttwire import free_port, packet, rss, s, stop_process, varint, wait_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def connect(port, client_id, v5=False):
    c = socket.create_connection(("127.0.0.1", port), 10)
    head = s("MQTT") + (bytes([5, 2, 0, 60, 0]) if v5 else bytes([4, 2, 0, 60]))
    c.sendall(packet(0x10, head + s(client_id)))
    c.recv(64)  # CONNACK
    return c


def ping_sync(c):
    """A PINGREQ and its PINGRESP: all sent before it was handled. Returns at once if the
    broker closed the connection (a refused packet)."""
    try:
        c.sendall(b"\xc0\x00")
        data = b""
        while not data.endswith(b"\xd0\x00"):
            chunk = c.recv(1 << 16)
            if not chunk:
                return
            data += chunk
    except OSError:
        return


def deep(i):
    return f"{i}" + "/" * 200


def run(kind, amount, port, big=None):
    if kind == "deep-retained":
        c = connect(port, "deep-retainer")
        for start in range(0, amount, 500):
            c.sendall(b"".join(packet(0x31, s(deep(i)) + b"x") for i in range(start, start + 500)))
        ping_sync(c)
    elif kind == "deep-filters":
        c = connect(port, "deep-filters")
        for start in range(0, amount, 100):
            body = struct.pack(">H", 1) + b"".join(s(deep(i)) + b"\x00"
                                                   for i in range(start, start + 100))
            c.sendall(packet(0x82, body))
            c.recv(1 << 16)  # SUBACK
    else:
        c = connect(port, "big", v5=True)
        c.sendall(big)
        ping_sync(c)
    return c


def big_publish(kind, megabytes):
    """The one large PUBLISH of `props`, `utf8` and `plain`, built before the pinger starts
    (building it holds Python's lock for as long as a stall worth measuring)."""
    size = megabytes << 20
    if kind == "props":
        props = b"\x26\x00\x00\x00\x00" * (size // 5)
        payload = b"x"
    else:
        props = b"\x01\x01" if kind == "utf8" else b""
        payload = b"x" * size
    return packet(0x30, s("t") + varint(len(props)) + props + payload)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["deep-retained", "deep-filters", "props", "utf8", "plain"])
    parser.add_argument("amount", type=int)
    parser.add_argument("--midge", default=os.path.join(ROOT, "target/release/midge"))
    parser.add_argument("--memory-limit", type=int, default=0)
    args = parser.parse_args()
    port = free_port()
    conf = os.path.join(tempfile.mkdtemp(prefix="hostile-probe-"), "midge.conf")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        if args.memory_limit:
            f.write(f"memory_limit {args.memory_limit}\n")
    broker = subprocess.Popen([args.midge, "-c", conf, "--threads", "1"],
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, broker, "midge")
        pinger = connect(port, "pinger")
        worst, stop = [0.0], threading.Event()

        def ping():
            while not stop.is_set():
                started = time.monotonic()
                ping_sync(pinger)
                worst[0] = max(worst[0], time.monotonic() - started)
                time.sleep(0.001)

        big = None
        if args.kind in ("props", "utf8", "plain"):
            big = big_publish(args.kind, args.amount)
        before = rss(broker.pid)
        thread = threading.Thread(target=ping, daemon=True)
        thread.start()
        client = run(args.kind, args.amount, port, big)
        time.sleep(0.5)
        stop.set()
        thread.join()
        held = rss(broker.pid)
        client.close()
        time.sleep(1.5)
        print(f"{args.kind} {args.amount}: RSS +{(held - before) / 1048576:.0f} MiB "
              f"(+{(rss(broker.pid) - before) / 1048576:.0f} MiB 1.5 s after it left), "
              f"worst ping {worst[0] * 1000:.1f} ms")
    finally:
        stop_process(broker)


if __name__ == "__main__":
    main()
