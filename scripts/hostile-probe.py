#!/usr/bin/env python3
"""One hostile client at a time against a fresh midge (release build, one shard), measuring
what it makes the broker hold (RSS) or how long it stalls another client (the worst PINGREQ
round trip while it runs). The probes behind issue 28's later findings:

  deep-retained N   N retained QoS 0 PUBLISHes on topics of 200 empty levels
  deep-filters N    N subscriptions to filters of 200 empty levels, 100 to a SUBSCRIBE
  props MB          one 5.0 PUBLISH of MB megabytes of empty User Properties
  utf8 MB           one 5.0 PUBLISH of MB megabytes said to be UTF-8
  plain MB          one 5.0 PUBLISH of MB megabytes
  deliver-tcp MB    one QoS 0 PUBLISH of MB megabytes to four subscribers that read it, on
  deliver-tls MB    a plain, TLS (a certificate made by openssl for the run) or WebSocket
  deliver-ws MB     listener; prints the broker's peak RSS growth instead of what it held
  ws-publish MB     one PUBLISH of MB megabytes in one WebSocket frame
  filters N         N distinct filters in SUBSCRIBEs of at most 16,384 (a packet's most)
  filters-leave N   the same, then the client leaves (its subscriptions go)
  shared-leave N    the same with shared subscriptions ($share/g/...)
  scans N           a client that never reads, owed 20 MB of retained messages (its scans
                    wait), subscribes to N wildcard filters in SUBSCRIBEs of 16,384
  not-utf8 N        N QoS 1 PUBLISHes of 12 bytes sent at once, each refused with PUBACK
                    0x99 and a Reason String (read as they come)

Usage: python3 scripts/hostile-probe.py deep-retained 20000 [--midge PATH] [--memory-limit B]
       [--io uring|epoll]
Loopback only; the broker is stopped at the end.
"""
import argparse
import multiprocessing
import os
import socket
import ssl
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


def ping(port, worst, ready, stop):
    """Another client's PINGREQ round trips until `stop`, the worst in `worst`: in a process
    of its own, so that the probe's readers and writers do not hold it up."""
    pinger = connect(port, "pinger")
    ready.set()
    while not stop.is_set():
        started = time.monotonic()
        ping_sync(pinger)
        worst.value = max(worst.value, time.monotonic() - started)
        time.sleep(0.001)


def deep(i):
    return f"{i}" + "/" * 200


def run(kind, amount, port, big=None, second_port=None):
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
    elif kind in ("filters", "shared"):
        c = connect(port, kind)
        share = "$share/g/" if kind == "shared" else ""
        for start in range(0, amount, 16384):
            count = min(16384, amount - start)
            body = struct.pack(">H", 1) + b"".join(s(f"{share}f/{i}/+/x") + b"\x00"
                                                   for i in range(start, start + count))
            c.sendall(packet(0x82, body))
            ping_sync(c)  # the SUBACK, then the PINGRESP
    elif kind == "scans":
        retainer = connect(port, "retainer")
        for i in range(40):
            retainer.sendall(packet(0x31, s(f"big/{i}") + b"x" * 500_000))
        ping_sync(retainer)
        c = connect(port, "scans")
        c.sendall(packet(0x82, struct.pack(">H", 1) + s("big/#") + b"\x00"))
        for start in range(0, amount, 16384):
            count = min(16384, amount - start)
            body = struct.pack(">H", 2) + b"".join(s(f"f/{i}/+") + b"\x00"
                                                   for i in range(start, start + count))
            c.sendall(packet(0x82, body))
        # Not read: wait until the broker has handled them all (the shard's longest turn
        # and the pinger say what it cost).
        time.sleep(1.0)
    elif kind in ("filters-leave", "shared-leave"):
        # The same subscriptions, then the client goes: each filter leaves the trie.
        c = run(kind.removesuffix("-leave"), amount, port)
        c.close()
        c = connect(port, "after")
        time.sleep(0.5)
    elif kind == "not-utf8":
        c = connect(port, "not-utf8", v5=True)
        # Sent from a thread while this one reads the answers (the broker stops reading a
        # client that does not read its own), a PINGREQ last: its PINGRESP comes last.
        sender = threading.Thread(target=c.sendall, args=(big + b"\xc0\x00",), daemon=True)
        sender.start()
        tail = b""
        while not tail.endswith(b"\xd0\x00"):
            chunk = c.recv(1 << 16)
            if not chunk:
                break
            tail = (tail + chunk)[-2:]
        sender.join()
    elif kind == "ws-publish":
        c = socket.create_connection(("127.0.0.1", second_port), 10)
        ws_upgrade(c)
        c.sendall(ws_frame(packet(0x10, s("MQTT") + bytes([4, 2, 0, 60]) + s("big"))))
        c.recv(64)  # CONNACK
        c.sendall(big + ws_frame(b"\xc0\x00"))
        answer = b""
        while not answer.endswith(b"\xd0\x00"):
            answer += c.recv(64)
    else:
        c = connect(port, "big", v5=True)
        c.sendall(big)
        ping_sync(c)
    return c


SUBSCRIBERS = 4


def second_listener(kind, directory):
    """The configuration of the listener the subscribers of a deliver-* probe use."""
    if kind == "deliver-tls":
        cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        return f"certfile {cert}\nkeyfile {key}\n"
    if kind in ("deliver-ws", "ws-publish"):
        return "protocol websockets\n"
    return ""


def ws_upgrade(c):
    c.sendall(b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
              b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += c.recv(4096)


def ws_frame(data):
    """One binary frame from a client, masked with a zero key (so the bytes are as they are)."""
    n = len(data)
    if n < 126:
        length = bytes([0x80 | n])
    elif n < 65536:
        length = bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        length = bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return b"\x82" + length + bytes(4) + data


def subscriber(kind, port, client_id):
    """A 3.1.1 subscriber to `big` on the second listener; returns a function that reads
    what comes (bytes; empty once closed)."""
    c = socket.create_connection(("127.0.0.1", port), 10)
    send, recv = c.sendall, c.recv
    if kind == "deliver-tls":
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        c = context.wrap_socket(c, server_hostname="localhost")
        send, recv = c.sendall, c.recv
    elif kind == "deliver-ws":
        ws_upgrade(c)

        def send(data):
            c.sendall(ws_frame(data))
    send(packet(0x10, s("MQTT") + bytes([4, 2, 0, 60]) + s(client_id)))
    recv(64)  # CONNACK
    send(packet(0x82, struct.pack(">H", 1) + s("big") + b"\x00"))
    recv(64)  # SUBACK
    return lambda: recv(1 << 20)


def longest_turn(metrics_port):
    """The bucket of the broker's longest loop turn, from its metrics (the shard's own
    measure of a stall, without the probe's scheduling in it)."""
    with socket.create_connection(("127.0.0.1", metrics_port), 10) as c:
        c.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        body = b""
        while chunk := c.recv(1 << 16):
            body += chunk
    buckets = []
    for line in body.decode().splitlines():
        if line.startswith("midge_shard_loop_turn_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1]
    below = 0.0
    for le, count in buckets:
        if count >= total:
            return f"{below * 1000:g}-{le * 1000:g} ms"
        below = le
    return "?"


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def deliver(kind, megabytes, port, second_port, big):
    """Subscribers read a large message as it comes; the publisher sends it. Returns the
    publisher once every subscriber has it all."""
    readers = []
    for i in range(SUBSCRIBERS):
        read = subscriber(kind, second_port, f"reader-{i}")

        def drain(read=read):
            got = 0
            while got < megabytes << 20:
                chunk = read()
                if not chunk:
                    return
                got += len(chunk)
        readers.append(threading.Thread(target=drain, daemon=True))
    for r in readers:
        r.start()
    c = connect(port, "publisher")
    c.sendall(big)
    for r in readers:
        r.join(60)
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
    parser.add_argument("kind", choices=["deep-retained", "deep-filters", "props", "utf8", "plain",
                                         "deliver-tcp", "deliver-tls", "deliver-ws",
                                         "ws-publish", "not-utf8", "filters",
                                         "filters-leave", "shared-leave", "scans"])
    parser.add_argument("amount", type=int)
    parser.add_argument("--midge", default=os.path.join(ROOT, "target/release/midge"))
    parser.add_argument("--memory-limit", type=int, default=0)
    parser.add_argument("--io", choices=["uring", "epoll"], help="midge's I/O backend")
    args = parser.parse_args()
    port, second_port, metrics_port = free_port(), free_port(), free_port()
    directory = tempfile.mkdtemp(prefix="hostile-probe-")
    conf = os.path.join(directory, "midge.conf")
    delivering = args.kind.startswith("deliver-")
    with open(conf, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        f.write(f"metrics_listener 127.0.0.1:{metrics_port}\n")
        if delivering or args.kind == "ws-publish":
            f.write(f"listener {second_port} 127.0.0.1\n" + second_listener(args.kind, directory))
        if args.memory_limit:
            f.write(f"memory_limit {args.memory_limit}\n")
    io = ["--io", args.io] if args.io else []
    broker = subprocess.Popen([args.midge, "-c", conf, "--threads", "1"] + io,
                              stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, broker, "midge")
        worst, stop = multiprocessing.Value("d", 0.0), multiprocessing.Event()
        ready = multiprocessing.Event()
        pinger = multiprocessing.Process(target=ping, args=(port, worst, ready, stop),
                                         daemon=True)

        big = None
        if delivering:
            big = packet(0x30, s("big") + b"x" * (args.amount << 20))
        elif args.kind in ("props", "utf8", "plain"):
            big = big_publish(args.kind, args.amount)
        elif args.kind == "ws-publish":
            big = ws_frame(big_publish("plain", args.amount))
        elif args.kind == "not-utf8":
            big = bytes([0x32, 10, 0, 1, ord("t"), 0, 1, 2, 0x01, 1, 0xFF, 0xFF]) * args.amount
        before, peak_before = rss(broker.pid), peak_rss(broker.pid)
        pinger.start()
        ready.wait(10)
        if delivering:
            client = deliver(args.kind, args.amount, port, second_port, big)
        else:
            client = run(args.kind, args.amount, port, big, second_port)
        time.sleep(0.5)
        stop.set()
        pinger.join()
        held = rss(broker.pid)
        client.close()
        time.sleep(1.5)
        turn = f"longest turn {longest_turn(metrics_port)}"
        if delivering:
            grown = (peak_rss(broker.pid) - peak_before) / 1048576
            print(f"{args.kind} {args.amount} to {SUBSCRIBERS}: peak RSS +{grown:.0f} MiB, "
                  f"worst ping {worst.value * 1000:.1f} ms, {turn}")
            return
        print(f"{args.kind} {args.amount}: RSS +{(held - before) / 1048576:.0f} MiB "
              f"(+{(rss(broker.pid) - before) / 1048576:.0f} MiB 1.5 s after it left), "
              f"worst ping {worst.value * 1000:.1f} ms, {turn}")
    finally:
        stop_process(broker)


if __name__ == "__main__":
    main()
