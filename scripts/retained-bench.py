#!/usr/bin/env python3
"""How long a new subscription waits for its retained messages: N retained messages under
`ret/`, then a new client subscribes to `ret/#` and reads them all, timed from SUBSCRIBE to
the last one. Against one midge node alone (its own store, in memory), and in a cluster of
two midge nodes on one nats-server with JetStream (published on one node, read on the
other: the cluster's store). Medians of --repeat subscriptions each. Loopback only; every
process started here is ended here.

    scripts/retained-bench.py [--messages N] [--repeat R] [--payload BYTES]

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
from mqttwire import connect, free_port, packet, read_packet, s, start_nats, start_midge, stop_process  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIDGE = os.path.join(ROOT, "target", "release", "midge")


def publish_retained(port, n, payload, under="ret"):
    """N retained QoS 1 messages under `under/`, pipelined, every PUBACK read."""
    sock = connect(port, "bench-pub")[0]
    out = bytearray()
    for i in range(n):
        body = s(f"{under}/{i // 100}/{i}") + struct.pack(">H", i % 65535 + 1) + payload
        out += packet(0x33, body)
    sock.sendall(out)
    for _ in range(n):
        if read_packet(sock)[0] >> 4 != 4:
            raise SystemExit("no PUBACK")
    sock.close()


def stored(port):
    """The node's $SYS count of retained messages stored in JetStream."""
    sock = connect(port, f"bench-sys-{time.monotonic_ns()}")[0]
    topic = "$SYS/broker/cluster/retained/stored"
    sock.sendall(packet(0x82, struct.pack(">H", 1) + s(topic) + bytes([0])))
    read_packet(sock)  # SUBACK
    while True:
        first, body = read_packet(sock)
        if first >> 4 == 3:
            length = struct.unpack(">H", body[:2])[0]
            sock.close()
            return int(body[2 + length:])


def time_subscription(port, n, name):
    sock = connect(port, name)[0]
    start = time.perf_counter()
    sock.sendall(packet(0x82, struct.pack(">H", 1) + s("ret/#") + bytes([0])))
    got = 0
    while got < n:
        first, _ = read_packet(sock)
        got += first >> 4 == 3
    took = time.perf_counter() - start
    sock.close()
    return took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--payload", type=int, default=64)
    args = ap.parse_args()
    payload = b"x" * args.payload
    procs = []
    with tempfile.TemporaryDirectory() as work:
        try:
            nats_port, nats = start_nats(work)
            procs.append(nats)
            cluster = f"cluster_nats_url nats://127.0.0.1:{nats_port}\ncluster_name rb{os.getpid()}\nsys_interval 1\n"
            one, a, b = free_port(), free_port(), free_port()
            procs.append(start_midge(MIDGE, work, one, ""))
            procs.append(start_midge(MIDGE, work, a, cluster + "cluster_node_id a\n"))
            procs.append(start_midge(MIDGE, work, b, cluster + "cluster_node_id b\n"))
            n = args.messages
            # Until node a's stream is open: a probe stored.
            deadline = time.monotonic() + 30
            while True:
                publish_retained(a, 1, payload, "probe")
                if stored(a) >= 1:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("node a never stored a retained message in JetStream")
            before = stored(a)
            publish_retained(one, n, payload)
            publish_retained(a, n, payload)
            deadline = time.monotonic() + 60
            while stored(a) < before + n:
                if time.monotonic() > deadline:
                    raise SystemExit("JetStream never had them all")
            rows = {}
            for r in range(args.repeat):
                rows.setdefault("one node (memory)", []).append(time_subscription(one, n, f"s1-{r}"))
                rows.setdefault("cluster (JetStream)", []).append(time_subscription(b, n, f"s2-{r}"))
            base = statistics.median(rows["one node (memory)"])
            print(f"{n} retained messages of {args.payload} bytes to a new subscription of ret/#, medians of {args.repeat}")
            print(f"{'store':<22}{'ms':>10}{'msgs/s':>12}{'vs one node':>13}")
            for name, times in rows.items():
                m = statistics.median(times)
                print(f"{name:<22}{m * 1000:>10.1f}{n / m:>12.0f}{m / base:>13.2f}")
        finally:
            for proc in procs:
                stop_process(proc)


if __name__ == "__main__":
    main()
