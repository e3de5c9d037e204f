"""MQTT on the wire for the measurement scripts (memory.py, hostile-soak.py, the cluster's
benches): the few encoders and readers they need, a free loopback port, brokers and a NATS
server started for them, and a process's resident memory. Loopback only."""
import os
import socket
import subprocess
import struct
import time


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def varint(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def s(text):
    """An MQTT string (or binary data): two bytes of length, then the bytes."""
    data = text if isinstance(text, bytes) else text.encode()
    return struct.pack(">H", len(data)) + data


def rss(pid):
    """Resident memory of process `pid`, bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def wait_listening(port, proc, what, seconds=10.0):
    """Waits until something accepts connections on `port`; fails with `what` if process
    `proc` exits first or `seconds` pass."""
    until = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > until or proc.poll() is not None:
                raise RuntimeError(f"{what} does not listen")
            time.sleep(0.01)


def stop_process(proc):
    """Ends `proc` (a broker started by the script): SIGTERM, then SIGKILL after 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise SystemExit("the broker closed the connection")
        out += chunk
    return bytes(out)


def read_packet(sock):
    """The next packet: its first byte and its body."""
    first = read_exact(sock, 1)[0]
    length, shift = 0, 0
    while True:
        byte = read_exact(sock, 1)[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return first, read_exact(sock, length)


def start_midge(binary, work, port, text):
    """midge on loopback `port` with `text` added to its configuration (in `work`)."""
    path = os.path.join(work, f"midge-{port}.conf")
    with open(path, "w") as f:
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\n{text}")
    proc = subprocess.Popen([binary, "-c", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc, "midge")
    return proc


def start_nats(work):
    """Debian's nats-server on a free loopback port, JetStream on in `work`: (port, process)."""
    port = free_port()
    conf = os.path.join(work, "nats.conf")
    with open(conf, "w") as f:
        f.write(f'listen: 127.0.0.1:{port}\njetstream {{ store_dir: "{work}/js" }}\n')
    proc = subprocess.Popen(["nats-server", "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port, proc, "nats-server")
    return port, proc


def connect(port, client_id, clean=True, will=None):
    """Connects to loopback `port` (3.1.1), with `will` (a topic; QoS 1, payload "gone") if
    given: (socket, seconds from CONNECT to CONNACK, session present)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = (0x02 if clean else 0) | (0x04 | 0x08 if will else 0)
    body = s("MQTT") + bytes([4, flags]) + struct.pack(">H", 60) + s(client_id)
    if will:
        body += s(will) + struct.pack(">H", 4) + b"gone"
    start = time.perf_counter()
    sock.sendall(packet(0x10, body))
    first, ack = read_packet(sock)
    took = time.perf_counter() - start
    if first >> 4 != 2 or ack[1] != 0:
        raise SystemExit(f"{client_id}: not accepted")
    return sock, took, bool(ack[0] & 1)


def subscribe(sock, topic, qos=1):
    """Subscribes to `topic` and waits for the SUBACK."""
    sock.sendall(packet(0x82, struct.pack(">H", 1) + s(topic) + bytes([qos])))
    if read_packet(sock)[0] >> 4 != 9:
        raise SystemExit("no SUBACK")
