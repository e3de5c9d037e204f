"""paho-mqtt (PyPI) taken over across two nodes of a midge cluster: an MQTT 5.0 client with
a persistent session on the node at PORT_A connects again with the same client id to the
node at PORT_B. The first connection is told 0x8E (Session taken over), the second finds
its session (session present) and its subscription: a message published on node A reaches
it. Exits non-zero with a message on any failure. Every wait has a deadline.

    paho_takeover.py PORT_A PORT_B"""

import queue
import sys
import time

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

PORT_A, PORT_B = int(sys.argv[1]), int(sys.argv[2])
DEADLINE = 10.0


def connected(port, client_id, clean_start):
    """A 5.0 client on `port` with an hour's session expiry; (client, messages, events)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    got, events = queue.Queue(), queue.Queue()
    c.on_message = lambda _c, _u, m: got.put((m.topic, m.payload))
    c.on_connect = lambda _c, _u, flags, reason, _p: events.put(("connect", flags.session_present, reason.value))
    c.on_disconnect = lambda _c, _u, _f, reason, _p: events.put(("disconnect", None, reason.value))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, keepalive=60, clean_start=clean_start, properties=props)
    c.loop_start()
    kind, present, reason = events.get(timeout=DEADLINE)
    if kind != "connect" or reason != 0:
        sys.exit(f"{client_id} on {port}: {kind} {reason}")
    return c, got, events, present


def main():
    first, _, first_events, present = connected(PORT_A, "paho-dev", True)
    if present:
        sys.exit("a clean start found a session")
    done = queue.Queue()
    first.on_subscribe = lambda *_: done.put(True)
    first.subscribe("pt/#", qos=1)
    done.get(timeout=DEADLINE)

    second, got, _, present = connected(PORT_B, "paho-dev", False)
    if not present:
        sys.exit("the session did not follow the client to the other node")
    kind, _, reason = first_events.get(timeout=DEADLINE)
    if (kind, reason) != ("disconnect", 142):
        sys.exit(f"the first connection was not told it was taken over: {kind} {reason}")
    first.loop_stop()

    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-pub", protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", PORT_A)
    publisher.loop_start()
    # Until the new node's subscription is in place on NATS: probes, then the message.
    until = time.monotonic() + DEADLINE
    while True:
        publisher.publish("pt/x", b"crossed", qos=1).wait_for_publish(timeout=DEADLINE)
        try:
            topic, payload = got.get(timeout=0.2)
            break
        except queue.Empty:
            if time.monotonic() > until:
                sys.exit("nothing published on node A reached the session on node B")
    if (topic, payload) != ("pt/x", b"crossed"):
        sys.exit(f"unexpected {topic} {payload!r}")
    second.loop_stop()
    publisher.loop_stop()
    print("ok")


main()
