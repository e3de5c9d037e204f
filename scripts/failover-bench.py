#!/usr/bin/env python3
"""What a node's death costs a cluster keeping sessions: --sessions persistent clients on
node a, each with a will and a subscription, their records written; node a killed
(SIGKILL); node b finds it gone after --timeout seconds (cluster_node_timeout) and takes
its sessions over. Measured from the kill:

  first will, last will    when a watcher on b got the first and the last of the wills
  taken over               sessions taken over per second (wills from first to last)
  back on b                CONNECT to CONNACK of each client coming back on b (session
                           present: its subscription kept), median and 99th percentile

Medians over --rounds rounds, each with a fresh nats-server and nodes. Loopback only;
every process started here is ended here.

    scripts/failover-bench.py [--sessions N] [--timeout S] [--rounds R]

Needs Debian's nats-server (2.9, JetStream on in a temporary directory) and a release
build of midge (cargo build --release).
"""
import argparse
import os
import resource
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mqttwire import connect, free_port, read_packet, start_midge, start_nats, stop_process, subscribe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIDGE = os.path.join(ROOT, "target", "release", "midge")


def sys_value(sock, topic):
    """The next value of `$SYS` topic `topic` the socket (subscribed to it) gets."""
    while True:
        first, body = read_packet(sock)
        if first >> 4 != 3:
            continue
        length = struct.unpack(">H", body[:2])[0]
        if body[2 : 2 + length].decode() == topic:
            return int(body[2 + length :])


def wills(watcher, n, killed):
    """Reads `n` wills (QoS 1, acknowledged) on the watcher: seconds from `killed` to the
    first and the last."""
    times = []
    watcher.settimeout(60)
    while len(times) < n:
        first, body = read_packet(watcher)
        if first >> 4 != 3:
            continue
        length = struct.unpack(">H", body[:2])[0]
        packet_id = body[2 + length : 4 + length]
        watcher.sendall(bytes([0x40, 2]) + packet_id)
        times.append(time.perf_counter() - killed)
    return times[0], times[-1]


def round_(work, sessions, timeout):
    procs = []
    try:
        nats_port, nats = start_nats(work)
        procs.append(nats)
        cluster = (
            f"cluster_nats_url nats://127.0.0.1:{nats_port}\ncluster_name fb{os.getpid()}\n"
            f"cluster_node_timeout {timeout}\nsys_interval 1\n"
        )
        a, b = free_port(), free_port()
        node_a = start_midge(MIDGE, work, a, cluster + "cluster_node_id a\n")
        procs.append(node_a)
        procs.append(start_midge(MIDGE, work, b, cluster + "cluster_node_id b\n"))
        # The buckets open within moments of the start: until then a claim waits.
        connect(a, "warm-up", True)[0].close()
        watcher = connect(b, "watcher", True)[0]
        subscribe(watcher, "will/#")
        sys = connect(a, "sys", True)[0]
        subscribe(sys, "$SYS/broker/cluster/sessions/records")
        clients = []
        for i in range(sessions):
            sock = connect(a, f"dev-{i}", False, will=f"will/{i}")[0]
            subscribe(sock, f"f/{i}")
            clients.append(sock)
        # Every session's record, with its subscription, written.
        while sys_value(sys, "$SYS/broker/cluster/sessions/records") < sessions:
            pass
        time.sleep(0.5)
        node_a.kill()
        killed = time.perf_counter()
        node_a.wait()
        first, last = wills(watcher, sessions, killed)
        for sock in clients:
            sock.close()
        backs = []
        for i in range(sessions):
            sock, took, present = connect(b, f"dev-{i}", False)
            if not present:
                raise SystemExit(f"dev-{i}: no session on b")
            backs.append(took)
            sock.close()
        backs.sort()
        return first, last, statistics.median(backs), backs[min(len(backs) - 1, int(len(backs) * 0.99))]
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop_process(proc)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--timeout", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.sessions + 256)), hard))
    results = []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as work:
            results.append(round_(work, args.sessions, args.timeout))
    n = args.sessions
    print(f"{n} sessions, cluster_node_timeout {args.timeout} s; medians of {args.rounds} rounds")
    print(f"{'':<34}{'median':>9}   rounds")
    for name, values in [
        ("first will after the kill (s)", [r[0] for r in results]),
        ("last will after the kill (s)", [r[1] for r in results]),
        ("taken over per second", [n / max(r[1] - r[0], 1e-3) for r in results]),
        ("back on b, CONNACK p50 (ms)", [r[2] * 1000 for r in results]),
        ("back on b, CONNACK p99 (ms)", [r[3] * 1000 for r in results]),
    ]:
        each = " / ".join(f"{v:.2f}" if v < 100 else f"{v:.0f}" for v in values)
        print(f"{name:<34}{statistics.median(values):>9.2f}   {each}")


if __name__ == "__main__":
    main()
