#!/usr/bin/env python3
"""Recovery of a large persistent store: SESSIONS offline persistent sessions (clean session
0) subscribed to one topic, MESSAGES QoS 1 messages published to it (each queued for every
session: SESSIONS x MESSAGES queued deliveries, each message written once per journal), then
SIGTERM and a restart. Prints the store's size on disk, the broker's recovery line (how long
it took) and its RSS before the stop and after the restart; then asks for a compaction
(SIGUSR1) and prints how long it took, and the longest a client's PINGREQ waited for its
PINGRESP meanwhile (what the compaction costs the shards' clients).

    python3 scripts/persist-recovery.py [--sessions 10000] [--messages 100] [--threads 1]

Loopback only; the broker and its store are this script's, removed at the end.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE = 60.0


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body


def mqtt_str(s):
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def connect(port, client_id, clean):
    s = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
    flags = 0x02 if clean else 0x00
    body = mqtt_str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + mqtt_str(client_id)
    s.sendall(packet(0x10, body))
    ack = recv_exactly(s, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        sys.exit(f"CONNACK refused for {client_id}: {ack!r}")
    return s


def recv_exactly(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            sys.exit("the broker closed a connection")
        data += chunk
    return data


def start(conf, log_path):
    """The broker, logging to `log_path`; returns once it listens."""
    log = open(log_path, "w")
    broker = subprocess.Popen(
        [os.path.join(ROOT, "target/release/midge"), "-c", conf], stderr=log
    )
    wait_for_line(log_path, "listen socket on port")
    return broker


def wait_for_line(log_path, text):
    until = time.time() + DEADLINE
    while time.time() < until:
        with open(log_path) as f:
            for line in f:
                if text in line:
                    return line.strip()
        time.sleep(0.01)
    sys.exit(f"no log line with {text!r} in {log_path}")


def compaction_stall(broker, port, log, shards):
    """SIGUSR1, then pings until every shard has logged its compaction: the compaction
    lines, and the longest round trip of a ping meanwhile (seconds)."""
    pinger = connect(port, "pinger", clean=True)
    longest = 0.0
    broker.send_signal(signal.SIGUSR1)
    until = time.time() + DEADLINE
    while time.time() < until:
        sent = time.perf_counter()
        pinger.sendall(b"\xc0\x00")
        recv_exactly(pinger, 2)
        longest = max(longest, time.perf_counter() - sent)
        with open(log) as f:
            lines = [l.strip() for l in f if "Compacted" in l]
        if len(lines) >= shards:
            pinger.close()
            return lines, longest
        time.sleep(0.001)
    raise SystemExit("no compaction logged")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=10000)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "--bin", "midge"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="midge-persist-recovery-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    conf = os.path.join(work, "midge.conf")
    with open(conf, "w") as f:
        f.write(
            f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {work}/\npersistence_sync never\nthreads {args.threads}\n"
            f"max_queued_messages {args.messages + 10}\n"
        )
    broker = start(conf, os.path.join(work, "first.log"))
    try:
        for i in range(args.sessions):
            c = connect(port, f"offline-{i}", clean=False)
            c.sendall(packet(0x82, struct.pack("!H", 1) + mqtt_str("load/t") + b"\x01"))
            recv_exactly(c, 5)  # SUBACK
            c.sendall(packet(0xE0, b""))
            c.close()
        publisher = connect(port, "publisher", clean=True)
        payload = b"x" * 64
        for m in range(args.messages):
            mid = m + 1
            publisher.sendall(packet(0x32, mqtt_str("load/t") + struct.pack("!H", mid) + payload))
            recv_exactly(publisher, 4)  # PUBACK
        publisher.close()
        time.sleep(1.0)  # the shards finish queueing and journaling
        rss_before = rss_kib(broker.pid)
        broker.terminate()
        broker.wait(timeout=DEADLINE)
        store = os.path.join(work, "mosquitto.db.d")
        size = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store))
        started = time.time()
        second = os.path.join(work, "second.log")
        broker = start(conf, second)
        restored = wait_for_line(second, "Restored")
        ready = time.time() - started
        time.sleep(0.5)
        rss_after = rss_kib(broker.pid)
        time.sleep(3)  # a quiet shard gives freed memory back at its next timer tick
        rss_settled = rss_kib(broker.pid)
        compacted, longest_ping = compaction_stall(broker, port, second, args.threads)
        queued = args.sessions * args.messages
        print(f"{args.sessions} sessions x {args.messages} messages = {queued:,} queued deliveries")
        print(f"store on disk: {size / 1e6:.1f} MB ({size / queued:.1f} bytes per queued delivery)")
        print(f"recovery: {restored}")
        print(f"restart to listening and restored: {ready:.2f} s")
        print(
            f"RSS before the stop: {rss_before / 1024:.0f} MiB; after the restart: "
            f"{rss_after / 1024:.0f} MiB, 3 s later: {rss_settled / 1024:.0f} MiB"
        )
        for line in compacted:
            print(f"SIGUSR1: {line}")
        print(f"longest PINGREQ to PINGRESP while compacting: {longest_ping * 1000:.1f} ms")
    finally:
        broker.terminate()
        broker.wait(timeout=DEADLINE)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
