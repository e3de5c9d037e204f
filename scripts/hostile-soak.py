#!/usr/bin/env python3
"""Hostile clients, all at once, against a broker with memory_limit set, while well-behaved
clients publish and subscribe (issue 28). Loopback only; every broker is started here on a
free port and stopped by its PID; every hostile client is bounded in count and time.

    python3 scripts/hostile-soak.py [--brokers midge,mosquitto] [--quick] [--threads N]
                                    [--io uring|epoll] [--memory-limit BYTES] [--check]

The hostile clients (each finding of issue 28, and two classics):
  retained-wildcards  N retained messages, then a SUBSCRIBE listing '#' 5,000 times
  user-properties     5.0 PUBLISHes, retained, made of empty User Properties
  mute-replies        QoS 1 PUBLISHes answered with PUBACK 0x99 + Reason String, never read
  stalled-qos1        ten QoS 1 subscribers that never read, and 8 MiB QoS 1 messages
  alias-bloat         ten 5.0 subscribers allowing 65,535 topic aliases, 60 KB topics
  big-connects        CONNECTs announcing 256 MiB, and partial 500 KiB CONNECTs that wait
  long-filters        subscriptions with 60 KB filters
  connect-flood       CONNECT, CONNACK, DISCONNECT as fast as it goes
  slowloris           connections sending their CONNECT a byte every half second

The well-behaved clients: a QoS 1 publisher at a steady rate (latency from the intended
send time, so a stall shows; "behind" counts what it could not send at all because the
broker stopped reading it) and a subscriber that reads everything.

It passes (--check; midge only) when the broker's peak RSS stays under memory_limit plus
OVERHEAD (which says what it holds outside memory_limit), the well-behaved publisher is
never held up and its subscriber loses nothing with p99 under P99_MAX, and RSS comes back
to within RETURN_SLACK of where it started once the hostile clients are gone and the
retained messages they set are cleared. Mosquitto is measured the same way and reported
beside it.
"""
import argparse
import multiprocessing
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

from mqttwire import free_port, packet, rss, s, stop_process, varint, wait_listening

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What memory_limit does not cover: the messages queued for the stalled subscribers (four
# of 8 MiB, each held once however many wait for it), the receive buffers of the largest
# packets while they arrive, what the allocator keeps of freed memory, code and stacks.
# (Retained messages, subscriptions and partial CONNECTs are counted in memory_limit, with
# what waits to be written.) The quick form's attacks are smaller, its allowance too.
OVERHEAD = 192 << 20
OVERHEAD_QUICK = 128 << 20
P99_MAX = 0.5  # seconds
RETURN_SLACK = 48 << 20
RETURN_WITHIN = 15.0  # seconds


# --- MQTT on the wire -------------------------------------------------------------------

def connect(client_id, v5=False, keepalive=60, props=b""):
    if v5:
        return packet(0x10, s("MQTT") + bytes([5, 0x02]) + struct.pack(">H", keepalive)
                      + varint(len(props)) + props + s(client_id))
    return packet(0x10, s("MQTT") + bytes([4, 0x02]) + struct.pack(">H", keepalive) + s(client_id))


def publish(topic, payload, qos=0, pid=0, retain=False, v5=False, props=b""):
    body = s(topic) + (struct.pack(">H", pid) if qos else b"")
    if v5:
        body += varint(len(props)) + props
    return packet(0x30 | (qos << 1) | int(retain), body + payload)


def subscribe(pid, filters, qos=0, v5=False):
    body = struct.pack(">H", pid) + (b"\x00" if v5 else b"")
    for f in filters:
        body += s(f) + bytes([qos])
    return packet(0x82, body)


def puback(pid):
    return packet(0x40, struct.pack(">H", pid))


DISCONNECT = b"\xe0\x00"


class Reader:
    """Reads whole packets from a blocking socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError
        self.buf += chunk

    def packet(self):
        while True:
            if len(self.buf) >= 2:
                length, shift, i = 0, 0, 1
                while i < len(self.buf) and i < 5:
                    length |= (self.buf[i] & 0x7F) << shift
                    shift += 7
                    if not self.buf[i] & 0x80:
                        break
                    i += 1
                else:
                    self._fill()
                    continue
                end = i + 1 + length
                if len(self.buf) >= end:
                    first, body = self.buf[0], bytes(self.buf[i + 1:end])
                    del self.buf[:end]
                    return first, body
            self._fill()


def open_client(port, client_id, v5=False, props=b"", timeout=10.0):
    sock = socket.create_connection(("127.0.0.1", port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect(client_id, v5=v5, props=props))
    reader = Reader(sock)
    first, _ = reader.packet()
    if first != 0x20:
        raise RuntimeError(f"{client_id}: no CONNACK")
    return sock, reader


def write_until_pushed_back(sock, chunk, total, stall=2.0):
    sock.settimeout(stall)
    sent = 0
    try:
        while sent < total:
            sent += sock.send(chunk)
    except OSError:
        pass
    return sent


# --- The broker -------------------------------------------------------------------------

class Broker:
    def __init__(self, name, memory_limit, threads, midge, io=None):
        self.name = name
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="hostile-soak-")
        conf = os.path.join(self.dir, "broker.conf")
        with open(conf, "w") as f:
            f.write(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                    f"memory_limit {memory_limit}\n")
        if name == "mosquitto":
            exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
            cmd = [exe, "-c", conf]
        else:
            cmd = [midge, "-c", conf, "--threads", str(threads)] + (["--io", io] if io else [])
        env = dict(os.environ, MIMALLOC_PURGE_DELAY="0")
        self.log = open(os.path.join(self.dir, "broker.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, env=env)
        wait_listening(self.port, self.proc, f"{name} (log in {self.dir})")

    def rss(self):
        return rss(self.proc.pid)

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# --- The well-behaved clients -------------------------------------------------------------

class WellBehaved:
    """A QoS 1 publisher at `rate` messages a second and a subscriber reading everything."""

    def __init__(self, port, rate):
        self.port, self.rate = port, rate
        self.sent = 0
        self.latencies = []
        self.seen = set()
        self.stop = threading.Event()
        self.sub, self.sub_reader = open_client(port, "good-sub")
        self.sub.sendall(subscribe(1, ["good/t"], qos=1))
        self.sub_reader.packet()  # SUBACK
        self.sub.settimeout(None)
        self.pub, self.pub_reader = open_client(port, "good-pub")
        self.pub.settimeout(None)
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._publish, self._read_acks, self._subscribe)]
        for t in self.threads:
            t.start()

    def _publish(self):
        start = self.start = time.monotonic()
        while not self.stop.is_set():
            intended = start + self.sent / self.rate
            now = time.monotonic()
            if intended > now:
                time.sleep(intended - now)
            payload = struct.pack(">Qd", self.sent, intended) + b"x" * 48
            pid = self.sent % 65535 + 1
            try:
                self.pub.sendall(publish("good/t", payload, qos=1, pid=pid))
            except OSError:
                return
            self.sent += 1

    def _read_acks(self):
        try:
            while True:
                self.pub_reader.packet()
        except (EOFError, OSError):
            pass

    def _subscribe(self):
        try:
            while True:
                first, body = self.sub_reader.packet()
                if first >> 4 != 3:
                    continue
                topic_len = struct.unpack(">H", body[:2])[0]
                pid = struct.unpack(">H", body[2 + topic_len:4 + topic_len])[0]
                seq, intended = struct.unpack(">Qd", body[4 + topic_len:20 + topic_len])
                self.latencies.append(time.monotonic() - intended)
                self.seen.add(seq)
                self.sub.sendall(puback(pid))
        except (EOFError, OSError):
            pass

    def finish(self, wait=15.0):
        self.stop.set()
        self.threads[0].join()
        # What the publisher should have sent by now and could not: the broker stopped
        # reading it (open loop: a stall must show, not lower the rate).
        behind = int((time.monotonic() - self.start) * self.rate) - self.sent
        until = time.monotonic() + wait
        while len(self.seen) < self.sent and time.monotonic() < until:
            time.sleep(0.05)
        for sock in (self.pub, self.sub):
            sock.close()
        lat = sorted(self.latencies) or [0.0]
        return {
            "behind": max(0, behind),
            "sent": self.sent,
            "lost": self.sent - len(self.seen),
            "p50": lat[len(lat) // 2],
            "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "max": lat[-1],
        }


# --- The hostile clients ------------------------------------------------------------------

class Hostiles:
    def __init__(self, port, quick, deadline):
        self.port, self.quick, self.deadline = port, quick, deadline
        self.sockets = []
        self.lock = threading.Lock()
        self.errors = []

    def keep(self, sock):
        with self.lock:
            self.sockets.append(sock)
        return sock

    def n(self, full, quick):
        return quick if self.quick else full

    def client(self, client_id, v5=False, props=b""):
        sock, reader = open_client(self.port, client_id, v5=v5, props=props)
        return self.keep(sock), reader

    def retained_wildcards(self):
        sock, reader = self.client("h-retainer")
        count = self.n(50_000, 5_000)
        batch = b"".join(publish(f"r/{i}", b"x", retain=True) for i in range(count))
        sock.sendall(batch + publish("r/last", b"x", qos=1, pid=1, retain=True))
        reader.packet()  # PUBACK: all stored
        sub, _ = self.client("h-wildcards")
        sub.sendall(subscribe(1, ["#"] * 5_000))
        # Reads nothing more: what it is owed waits for it.

    def user_properties(self):
        sock, reader = self.client("h-userprops", v5=True)
        # As many pairs as a packet may carry (65,536), each as long as makes the size.
        size = self.n(20 << 20, 4 << 20)
        value = size // 65_536 - 5
        for i in range(3):
            props = (b"\x26\x00\x00" + struct.pack(">H", value) + b"v" * value) * 65_536
            sock.sendall(publish(f"heavy/{i}", b"x", qos=1, pid=1, retain=True, v5=True, props=props))
            reader.packet()

    def mute_replies(self):
        sock, _ = self.client("h-mute", v5=True)
        one = publish("m", b"\xff\xff", qos=1, pid=1, v5=True, props=b"\x01\x01")
        write_until_pushed_back(sock, one * 8192, self.n(40 << 20, 8 << 20))

    def stalled_qos1(self):
        for i in range(10):
            sock, reader = self.client(f"h-stalled-{i}")
            sock.sendall(subscribe(1, ["big"], qos=1))
            reader.packet()
        pub, reader = self.client("h-bigpub")
        payload = b"B" * self.n(8 << 20, 2 << 20)
        for pid in range(1, 5):
            pub.sendall(publish("big", payload, qos=1, pid=pid))
            reader.packet()

    def alias_bloat(self):
        readers = []
        for i in range(10):
            sock, reader = self.client(f"h-alias-{i}", v5=True, props=b"\x22\xff\xff")
            sock.sendall(subscribe(1, ["a/#"], v5=True))
            reader.packet()
            readers.append(threading.Thread(target=drain, args=(reader,), daemon=True))
        for r in readers:
            r.start()
        pub, _ = self.client("h-alias-pub")
        for i in range(self.n(300, 60)):
            pub.sendall(publish(f"a/{i}/" + "x" * 60_000, b"x"))

    def big_connects(self):
        for _ in range(3):
            sock = self.keep(socket.create_connection(("127.0.0.1", self.port), 10))
            sock.sendall(b"\x10\xff\xff\xff\x7f\x00\x04MQTT")
            write_until_pushed_back(sock, bytes(1 << 20), 64 << 20)
        for _ in range(16):
            sock = self.keep(socket.create_connection(("127.0.0.1", self.port), 10))
            length = 500 * 1024 - 4
            sock.sendall(bytes([0x10, 0x80 | length & 0x7F, 0x80 | (length >> 7) & 0x7F, length >> 14]))
            write_until_pushed_back(sock, bytes(400 * 1024), 400 * 1024)

    def long_filters(self):
        sock, reader = self.client("h-filters")
        for batch in range(self.n(200, 40)):
            filters = [f"f/{batch * 10 + i}/" + "x" * 60_000 for i in range(10)]
            sock.sendall(subscribe(1, filters))
            reader.packet()

    def deep_retained(self):
        # Topics of 200 empty levels: 200 bytes each on the wire, a node a level in the store.
        sock, reader = self.client("h-deep-retainer")
        for start in range(0, self.n(20_000, 4_000), 500):
            sock.sendall(b"".join(publish(deep_topic(i), b"x", retain=True)
                                  for i in range(start, start + 500)))
        sock.sendall(publish("deep/last", b"x", qos=1, pid=1))
        reader.packet()

    def deep_filters(self):
        sock, reader = self.client("h-deep-filters")
        for start in range(0, self.n(20_000, 4_000), 100):
            sock.sendall(subscribe(1, [deep_topic(i) for i in range(start, start + 100)]))
            reader.packet()

    def connect_flood(self):
        for i in range(self.n(10_000, 1_000)):
            if time.monotonic() > self.deadline:
                return
            sock, _ = open_client(self.port, f"h-flood-{i % 100}")
            sock.sendall(DISCONNECT)
            sock.close()

    def slowloris(self):
        conns = []
        for _ in range(200):
            conns.append(self.keep(socket.create_connection(("127.0.0.1", self.port), 10)))
        whole = connect("h-slow")
        for i in range(len(whole)):
            if time.monotonic() > self.deadline:
                return
            for sock in conns:
                try:
                    sock.send(whole[i:i + 1])
                except OSError:
                    pass
            time.sleep(0.5)

    ALL = ["retained_wildcards", "user_properties", "mute_replies", "stalled_qos1", "alias_bloat",
           "big_connects", "long_filters", "deep_retained", "deep_filters", "connect_flood",
           "slowloris"]

    def run(self):
        def guarded(name):
            try:
                getattr(self, name)()
            except Exception as e:  # A broker that closes on a hostile client is fine.
                self.errors.append(f"{name}: {type(e).__name__}: {e}")
        threads = [threading.Thread(target=guarded, args=(n,), daemon=True) for n in self.ALL]
        for t in threads:
            t.start()
        return threads

    def leave(self):
        with self.lock:
            for sock in self.sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            self.sockets.clear()


def attack_for(port, quick, duration, errors):
    """Runs every hostile client for `duration` seconds, then leaves (a process of its own)."""
    deadline = time.monotonic() + duration
    hostiles = Hostiles(port, quick, deadline)
    threads = hostiles.run()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    time.sleep(max(0.0, deadline - time.monotonic()))
    for e in hostiles.errors:
        errors.put(e)
    hostiles.leave()


def clear_retained(port, quick):
    """Removes the retained messages the attack set: they stay by design, not by a leak."""
    try:
        sock, reader = open_client(port, "h-cleaner")
        count = 5_000 if quick else 50_000
        topics = [f"r/{i}" for i in range(count)] + ["r/last"] + [f"heavy/{i}" for i in range(3)]
        topics += [deep_topic(i) for i in range(4_000 if quick else 20_000)]
        sock.sendall(b"".join(publish(t, b"", retain=True) for t in topics)
                     + publish("clean/done", b"x", qos=1, pid=1))
        reader.packet()
        sock.sendall(DISCONNECT)
        sock.close()
    except (OSError, EOFError, RuntimeError):
        pass


def deep_topic(i):
    return f"{i}" + "/" * 200


def drain(reader):
    try:
        while True:
            reader.packet()
    except (EOFError, OSError):
        pass


# --- One run ------------------------------------------------------------------------------

def soak(name, args):
    broker = Broker(name, args.memory_limit, args.threads, args.midge, args.io)
    try:
        baseline = broker.rss()
        peak = [baseline]
        sampling = threading.Event()

        def sample():
            while not sampling.is_set():
                try:
                    peak[0] = max(peak[0], broker.rss())
                except OSError:
                    return
                time.sleep(0.1)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        good = WellBehaved(broker.port, args.rate)
        time.sleep(1.0)
        # The hostile clients in a process of their own, so that their work does not delay
        # the well-behaved clients' (Python runs one thread at a time per process).
        errors = multiprocessing.Queue()
        attack = multiprocessing.Process(
            target=attack_for, args=(broker.port, args.quick, args.duration, errors))
        attack.start()
        attack.join(args.duration + 5)
        if attack.is_alive():
            attack.kill()
            attack.join()
        during = broker.rss()
        result = good.finish()
        clear_retained(broker.port, args.quick)
        # Memory given back once they are gone.
        until = time.monotonic() + RETURN_WITHIN
        after = broker.rss()
        while after > baseline + RETURN_SLACK and time.monotonic() < until:
            time.sleep(0.2)
            after = broker.rss()
        sampling.set()
        alive = broker.proc.poll() is None
        failures = []
        while not errors.empty():
            failures.append(errors.get())
        result.update(name=name, baseline=baseline, peak=peak[0], during=during, after=after,
                      alive=alive, errors=failures)
        return result
    finally:
        broker.stop()


def verdict(r, memory_limit, overhead):
    checks = [
        ("alive", r["alive"]),
        ("peak RSS under memory_limit + overhead", r["peak"] <= memory_limit + overhead),
        ("nothing lost", r["lost"] == 0),
        ("publisher never held up", r["behind"] <= 100),
        (f"p99 under {P99_MAX} s", r["p99"] <= P99_MAX),
        ("RSS back", r["after"] <= r["baseline"] + RETURN_SLACK),
    ]
    return [(what, ok) for what, ok in checks]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", default="midge,mosquitto")
    parser.add_argument("--midge", default=os.path.join(ROOT, "target/release/midge"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--io", choices=["uring", "epoll"], help="midge's I/O backend")
    parser.add_argument("--memory-limit", type=int, default=64 << 20)
    parser.add_argument("--rate", type=float, default=200.0, help="well-behaved messages a second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of hostile load")
    parser.add_argument("--quick", action="store_true", help="smaller attacks, 8 s (for CI)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless midge passes")
    args = parser.parse_args()
    if args.quick:
        args.duration = min(args.duration, 8.0)
    mib = 1 << 20
    failed = False
    overhead = OVERHEAD_QUICK if args.quick else OVERHEAD
    print(f"memory_limit {args.memory_limit / mib:.0f} MiB, allowed peak "
          f"{(args.memory_limit + overhead) / mib:.0f} MiB; well-behaved QoS 1 at "
          f"{args.rate:.0f}/s; {args.duration:.0f} s of hostile load"
          f"{' (quick)' if args.quick else ''}")
    print(f"{'broker':10} {'start':>7} {'peak':>7} {'during':>7} {'after':>7} "
          f"{'sent':>6} {'behind':>6} {'lost':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  verdict")
    for name in args.brokers.split(","):
        r = soak(name, args)
        checks = verdict(r, args.memory_limit, overhead)
        bad = [what for what, ok in checks if not ok]
        print(f"{name:10} {r['baseline'] / mib:6.0f}M {r['peak'] / mib:6.0f}M "
              f"{r['during'] / mib:6.0f}M {r['after'] / mib:6.0f}M {r['sent']:6d} {r['behind']:6d} "
              f"{r['lost']:6d} "
              f"{r['p50'] * 1e3:8.1f} {r['p99'] * 1e3:8.1f} {r['max'] * 1e3:8.1f}  "
              + ("passes" if not bad else "fails: " + "; ".join(bad)), flush=True)
        for e in r["errors"]:
            print(f"    ({name}) {e}")
        if name == "midge" and bad:
            failed = True
    if args.check and failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
