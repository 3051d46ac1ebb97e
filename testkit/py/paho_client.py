#!/usr/bin/env python3
"""One configurable paho-mqtt client for Fleetgate's end-to-end tests (testkit/src/clients.rs runs it).

Connects, subscribes, publishes, waits for messages, and prints one JSON object per event on stdout:
  {"ev":"connack","rc":0,"session_present":false}   {"ev":"suback","mid":1,"codes":[1]}   {"ev":"ready"}
  {"ev":"published","topic":"t","mid":2}   {"ev":"msg","topic":"t","payload":"x","qos":1,"retain":false}
  {"ev":"disconnect","rc":142,"reason":"Session taken over"}   {"ev":"done","received":3}
Works with paho-mqtt 1.6 (Debian bookworm) and 2.x (callback API version 1). It runs its own network loop, so
paho never reconnects behind the test's back (unless --reconnect asks it to). Every wait is bounded by --timeout.
"""
import argparse
import json
import os
import sys
import time

import paho.mqtt.client as mqtt


def emit(**event):
    print(json.dumps(event), flush=True)


def code(rc):
    """A reason code as an int, whether paho gives an int (3.1.1) or a ReasonCodes object (5)."""
    return getattr(rc, "value", rc)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--version", choices=["3", "5"], default="5")
    p.add_argument("--id", default="")
    p.add_argument("--clean", type=int, default=1, help="clean session (3.1.1) / clean start (5)")
    p.add_argument("--session-expiry", type=int, default=None, help="v5 Session Expiry Interval, seconds")
    p.add_argument("--keepalive", type=int, default=30)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--will-topic")
    p.add_argument("--will-payload", default="")
    p.add_argument("--will-qos", type=int, default=0)
    p.add_argument("--will-retain", action="store_true")
    p.add_argument("--sub", action="append", default=[], help="TOPIC or TOPIC@QOS")
    p.add_argument("--pub", action="append", default=[], help="QOS,RETAIN(0|1),TOPIC,PAYLOAD")
    p.add_argument("--expect", type=int, default=0, help="wait for this many messages")
    p.add_argument("--hold", action="store_true", help="stay connected until the server disconnects or --timeout")
    p.add_argument("--abrupt", action="store_true", help="exit without sending DISCONNECT")
    p.add_argument("--reconnect", action="store_true",
                   help="after losing the connection, reconnect (keeping the client's session state) until --timeout")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--cafile", help="connect with TLS, verifying the server against this CA (PEM)")
    p.add_argument("--cert", help="client certificate (PEM), with --cafile")
    p.add_argument("--key", help="client private key (PEM), with --cert")
    a = p.parse_args()

    v5 = a.version == "5"
    proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    kwargs = {"client_id": a.id, "protocol": proto}
    if not v5:
        kwargs["clean_session"] = bool(a.clean)
    if hasattr(mqtt, "CallbackAPIVersion"):
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, **kwargs)
    else:
        client = mqtt.Client(**kwargs)

    state = {"connack": None, "subacks": set(), "published": set(), "received": 0, "disconnected": False}

    def on_connect(c, userdata, flags, rc, properties=None):
        state["connack"] = code(rc)
        emit(ev="connack", rc=code(rc), session_present=bool(flags.get("session present", 0)))

    def on_subscribe(c, userdata, mid, granted, properties=None):
        state["subacks"].add(mid)
        emit(ev="suback", mid=mid, codes=[code(g) for g in granted])

    def on_publish(c, userdata, mid):
        state["published"].add(mid)

    def on_message(c, userdata, msg):
        state["received"] += 1
        emit(ev="msg", topic=msg.topic, payload=msg.payload.decode("utf-8", "replace"), qos=msg.qos,
             retain=bool(msg.retain))

    def on_disconnect(c, userdata, rc, properties=None):
        state["disconnected"] = True
        emit(ev="disconnect", rc=code(rc), reason=str(rc))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_publish = on_publish
    client.on_message = on_message
    client.on_disconnect = on_disconnect

    if a.cafile:
        client.tls_set(ca_certs=a.cafile, certfile=a.cert, keyfile=a.key)
    if a.username is not None:
        client.username_pw_set(a.username, a.password)
    if a.will_topic:
        client.will_set(a.will_topic, a.will_payload, a.will_qos, a.will_retain)

    deadline = time.monotonic() + a.timeout

    def pump(until):
        while not until() and time.monotonic() < deadline:
            if state["disconnected"]:
                if not a.reconnect:
                    break
                # The same client object: paho keeps its QoS 2 state (messages waiting for PUBREL) when the
                # session is not clean, as a device that lost its link would.
                try:
                    client.reconnect()
                    state["disconnected"] = False
                except OSError:
                    time.sleep(0.05)
                    continue
            client.loop(timeout=0.05)
        return until()

    if v5:
        from paho.mqtt.properties import Properties
        from paho.mqtt.packettypes import PacketTypes
        props = None
        if a.session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = a.session_expiry
        client.connect(a.host, a.port, a.keepalive, clean_start=bool(a.clean), properties=props)
    else:
        client.connect(a.host, a.port, a.keepalive)

    if not pump(lambda: state["connack"] is not None):
        emit(ev="done", received=0, error="no CONNACK")
        return 2
    if state["connack"] != 0:
        emit(ev="done", received=0, error="refused")
        return 3

    for sub in a.sub:
        topic, _, qos = sub.partition("@")
        _, mid = client.subscribe(topic, int(qos or 0))
        if not pump(lambda: mid in state["subacks"]):
            emit(ev="done", received=state["received"], error="no SUBACK")
            return 4
    emit(ev="ready")

    for pub in a.pub:
        qos, retain, topic, payload = pub.split(",", 3)
        info = client.publish(topic, payload, int(qos), retain == "1")
        if int(qos) > 0 and not pump(lambda: info.mid in state["published"]):
            emit(ev="done", received=state["received"], error="publish not acknowledged")
            return 5
        emit(ev="published", topic=topic, mid=info.mid)

    if a.hold:
        pump(lambda: False)
    else:
        pump(lambda: state["received"] >= a.expect)
        # Let in-flight acknowledgements (PUBACK/PUBCOMP of received messages) go out before leaving.
        end = time.monotonic() + 0.2
        while time.monotonic() < end and not state["disconnected"]:
            client.loop(timeout=0.05)

    emit(ev="done", received=state["received"])
    if a.abrupt:
        sys.stdout.flush()
        os._exit(0)
    if not state["disconnected"]:
        client.disconnect()
        client.loop(timeout=0.2)
    return 0 if state["received"] >= a.expect else 6


if __name__ == "__main__":
    sys.exit(main())
