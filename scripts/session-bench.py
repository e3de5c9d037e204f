#!/usr/bin/env python3
"""What sessions that follow their clients cost a CONNECT, and how long a takeover across
nodes takes. Timed from CONNECT sent to CONNACK read, over --connects connections each:

  one node                      midge alone, no cluster
  cluster, cluster_sessions node    a node of a cluster whose nodes decide alone
  cluster (jetstream), new id   the node claims a client id nobody held (a key created)
  cluster (jetstream), again    the same id again on the same node (the key updated)
  takeover across nodes         a persistent client on node a, taken over on node b: the
                                key updated and the session fetched from node a; then the
                                time to the first of --queued messages queued for it on a

Medians and 99th percentiles in milliseconds. Loopback only; every process started here is
ended here.

    scripts/session-bench.py [--connects N] [--queued Q] [--midge PATH]

Needs Debian's nats-server (2.9, JetStream on in a temporary directory) and a release
build of midge (cargo build --release).
"""
import argparse
import os
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mqttwire import connect, free_port, packet, read_packet, s, start_midge, start_nats, stop_process, subscribe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIDGE = os.path.join(ROOT, "target", "release", "midge")


def disconnect(sock):
    sock.sendall(bytes([0xE0, 0]))
    sock.close()


def publish_qos1(port, topic, n):
    sock = connect(port, f"bench-pub-{time.monotonic_ns()}")[0]
    out = bytearray()
    for i in range(n):
        out += packet(0x32, s(topic) + struct.pack(">H", i % 65535 + 1) + b"x" * 64)
    sock.sendall(out)
    for _ in range(n):
        if read_packet(sock)[0] >> 4 != 4:
            raise SystemExit("no PUBACK")
    disconnect(sock)


def connects(port, n, name, same_id=False):
    times = []
    for i in range(n):
        sock, took, _ = connect(port, name if same_id else f"{name}-{i}")
        times.append(took)
        disconnect(sock)
    return times


def takeovers(a, b, n, queued):
    """Client `t-i` persistent on a with a subscription and `queued` messages queued while
    it is away; taken over on b: (CONNACK times, first-message times)."""
    connacks, firsts = [], []
    for i in range(n):
        name = f"t-{i}"
        sock = connect(a, name, clean=False)[0]
        subscribe(sock, f"tk/{i}")
        disconnect(sock)
        if queued:
            publish_qos1(a, f"tk/{i}", queued)
        sock, took, _ = connect(b, name, clean=False)
        connacks.append(took)
        if queued:
            start = time.perf_counter() - took
            while read_packet(sock)[0] >> 4 != 3:
                pass
            firsts.append(time.perf_counter() - start)
        disconnect(sock)
    return connacks, firsts


def row(name, times, base):
    ms = sorted(t * 1000 for t in times)
    median = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:<34}{median:>9.2f}{p99:>9.2f}{median / base:>10.1f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connects", type=int, default=300)
    ap.add_argument("--queued", type=int, default=100)
    ap.add_argument("--midge", default=MIDGE, help="the midge binary (default: the release build)")
    args = ap.parse_args()
    procs = []
    with tempfile.TemporaryDirectory() as work:
        try:
            nats_port, nats = start_nats(work)
            procs.append(nats)
            cluster = f"cluster_nats_url nats://127.0.0.1:{nats_port}\ncluster_name sb{os.getpid()}\n"
            one, alone, a, b = free_port(), free_port(), free_port(), free_port()
            procs.append(start_midge(args.midge, work, one, ""))
            procs.append(start_midge(args.midge, work, alone, cluster + "cluster_node_id n\ncluster_sessions node\n"))
            procs.append(start_midge(args.midge, work, a, cluster + "cluster_node_id a\n"))
            procs.append(start_midge(args.midge, work, b, cluster + "cluster_node_id b\n"))
            # The bucket opens within moments of the start: until then a claim waits.
            connect(a, "warm-up")[0].close()
            connect(b, "warm-up-b")[0].close()
            n = args.connects
            rows = [
                ("one node", connects(one, n, "c1")),
                ("cluster, cluster_sessions node", connects(alone, n, "c2")),
                ("cluster (jetstream), new id", connects(a, n, "c3")),
                ("cluster (jetstream), again", connects(a, n, "c4", same_id=True)),
            ]
            connacks, firsts = takeovers(a, b, n, args.queued)
            rows.append(("takeover across nodes", connacks))
            if firsts:
                rows.append((f"  first of {args.queued} queued", firsts))
            base = statistics.median(rows[0][1]) * 1000
            print(f"CONNECT to CONNACK, {n} connections each (ms)")
            print(f"{'':<34}{'median':>9}{'p99':>9}{'vs one':>10}")
            for name, times in rows:
                row(name, times, base)
        finally:
            for proc in procs:
                stop_process(proc)


if __name__ == "__main__":
    main()
