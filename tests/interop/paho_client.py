"""Interop with paho-mqtt (PyPI): QoS 0/1/2 publish and subscribe, retained messages and a
will, against the broker on 127.0.0.1:PORT. Exits non-zero with a message on any failure.
Every wait has a deadline.

    paho_client.py PORT [--websockets | --unix PATH] [CAFILE [CERTFILE KEYFILE]]

With CAFILE, every client connects over TLS to localhost:PORT, checking the broker's
certificate against CAFILE and presenting CERTFILE/KEYFILE if given; with --websockets,
over WebSockets (inside TLS with CAFILE); with --unix, to the Unix socket at PATH instead
of the port."""

import queue
import sys
import time

import paho.mqtt.client as mqtt

ARGS = [a for a in sys.argv[1:] if a != "--websockets"]
TRANSPORT = "websockets" if "--websockets" in sys.argv else "tcp"
UNIX_PATH = None
if "--unix" in ARGS:
    at = ARGS.index("--unix")
    UNIX_PATH = ARGS[at + 1]
    del ARGS[at : at + 2]
    TRANSPORT = "unix"
PORT = int(ARGS[0])
CAFILE = ARGS[1] if len(ARGS) > 1 else None
IDENTITY = ARGS[2:4] if len(ARGS) > 3 else [None, None]
HOST = UNIX_PATH or ("localhost" if CAFILE else "127.0.0.1")
DEADLINE = 10.0


def make(client_id, **kwargs):
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, transport=TRANSPORT, **kwargs
    )
    if CAFILE:
        c.tls_set(ca_certs=CAFILE, certfile=IDENTITY[0], keyfile=IDENTITY[1])
    return c


def client(client_id, **kwargs):
    c = make(client_id, **kwargs)
    got = queue.Queue()
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload, m.qos, m.retain))
    c.connect(HOST, PORT, keepalive=60)
    c.loop_start()
    return c, got


def wait(result, what):
    """Waits for a paho MQTTMessageInfo or subscribe result."""
    if hasattr(result, "wait_for_publish"):
        result.wait_for_publish(timeout=DEADLINE)
        if not result.is_published():
            sys.exit(f"{what}: not acknowledged")


def subscribe(c, topic, qos):
    done = queue.Queue()
    c.on_subscribe = lambda _c, _u, mid, codes, _p: done.put(codes)
    c.subscribe(topic, qos)
    codes = done.get(timeout=DEADLINE)
    if any(code.is_failure for code in codes):
        sys.exit(f"subscribe {topic}: {codes}")


def expect(got, topic, payload, qos, retain):
    try:
        message = got.get(timeout=DEADLINE)
    except queue.Empty:
        sys.exit(f"nothing received on {topic}")
    if message != (topic, payload, qos, retain):
        sys.exit(f"expected {(topic, payload, qos, retain)}, got {message}")


sub, got = client("paho-sub")
subscribe(sub, "paho/#", 2)
pub, _ = client("paho-pub")
for qos in (0, 1, 2):
    wait(pub.publish(f"paho/q{qos}", f"m{qos}".encode(), qos=qos), f"publish QoS {qos}")
    expect(got, f"paho/q{qos}", f"m{qos}".encode(), qos, False)

wait(pub.publish("paho/retained", b"kept", qos=1, retain=True), "retained publish")
expect(got, "paho/retained", b"kept", 1, False)
late, late_got = client("paho-late")
subscribe(late, "paho/retained", 1)
expect(late_got, "paho/retained", b"kept", 1, True)

doomed = make("paho-doomed")
doomed.will_set("paho/will", b"bye", qos=1)
doomed.connect(HOST, PORT, keepalive=60)
doomed.loop(timeout=1.0)
doomed.socket().close()  # no DISCONNECT: the broker must publish the will
expect(got, "paho/will", b"bye", 1, False)

# MQTT 5: user properties and a response topic pass through unchanged.
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

got5 = queue.Queue()
sub5 = make("paho-sub5", protocol=mqtt.MQTTv5)
sub5.on_message = lambda _c, _u, m: got5.put(m)
sub5.connect(HOST, PORT, keepalive=60)
sub5.loop_start()
subscribe(sub5, "paho5/#", 1)
pub5 = make("paho-pub5", protocol=mqtt.MQTTv5)
pub5.connect(HOST, PORT, keepalive=60)
pub5.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = [("a", "1"), ("b", "2")]
props.ResponseTopic = "paho5/reply"
props.CorrelationData = b"id-7"
wait(pub5.publish("paho5/req", b"ask", qos=1, properties=props), "MQTT 5 publish")
try:
    m = got5.get(timeout=DEADLINE)
except queue.Empty:
    sys.exit("MQTT 5: nothing received")
if (m.topic, m.payload) != ("paho5/req", b"ask"):
    sys.exit(f"MQTT 5: got {m.topic} {m.payload}")
if m.properties.UserProperty != [("a", "1"), ("b", "2")]:
    sys.exit(f"MQTT 5: user properties {m.properties.UserProperty}")
if m.properties.ResponseTopic != "paho5/reply" or m.properties.CorrelationData != b"id-7":
    sys.exit(f"MQTT 5: response topic / correlation data {m.properties}")

for c in (sub, pub, late, sub5, pub5):
    c.disconnect()
    c.loop_stop()
print("paho interop: ok")
