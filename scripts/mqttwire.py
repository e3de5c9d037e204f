"""MQTT on the wire for the measurement scripts (memory.py, hostile-soak.py): the few
encoders they need, a free loopback port, and a process's resident memory. Loopback only."""
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
