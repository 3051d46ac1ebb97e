#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/<target>/) from real traffic and real files.

- mqtt_codec, connect_peek: what mosquitto_pub, mosquitto_sub and paho send a Mosquitto broker, and what it
  answers, recorded by a relay between them (MQTT 3.1, 3.1.1 and 5.0; QoS 0-2, retain, will, credentials, v5
  properties, subscription options, unsubscribe, ping, disconnect with a reason).
- cluster_frame: both directions of the peer links of two `fleetgate node`s with password authentication (sync,
  routes, claims, publishes, retained messages, a session taken over from one node to the other, a takeover
  refused to another identity, the drain at shutdown), recorded the same way. A stable test
  (broker-node `cluster::frame::tests`) checks that these seeds decode at the current protocol and hold every
  frame type.
- proxy_header: v1 and v2 headers written here from the PROXY protocol spec, with the TLVs the LB sends.
- config_parse: examples/*.toml and the configs of k8s/config/.
- topic_matcher: topics, filters and rule topics in the shape of examples/acl.toml, `$` topics included.

Usage: fuzz/seeds/capture.py PATH/TO/fleetgate [TARGET...]   (needs mosquitto, mosquitto-clients,
python3-paho-mqtt). Without targets, every target's seeds are written again; with some, only theirs (e.g.
`cluster_frame config_parse` after a wire or config change). Only the seeds are committed.
"""

import asyncio
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fuzz" / "seeds"
LEVELS = {"mqttv31": 0, "mqttv311": 1, "mqttv5": 2}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_seed(target, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


class Relay:
    """Forwards 127.0.0.1:port to upstream, keeping each connection's two byte streams."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.port = free_port()
        self.conversations = []

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)

    async def handle(self, reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        sent, received = bytearray(), bytearray()
        self.conversations.append((sent, received))

        async def pump(src, dst, log):
            try:
                while data := await src.read(65536):
                    log.extend(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer, sent), pump(up_reader, writer, received))


def mqtt_packets(stream):
    """Splits an MQTT byte stream into packets (stops at an incomplete one)."""
    i, out = 0, []
    while i + 2 <= len(stream):
        n, mult, j = 0, 1, i + 1
        while j < len(stream):
            n += (stream[j] & 0x7F) * mult
            mult *= 128
            j += 1
            if stream[j - 1] & 0x80 == 0:
                break
        if j + n > len(stream):
            break
        out.append(bytes(stream[i : j + n]))
        i = j + n
    return out


def frames(stream):
    """Splits a cluster link stream into length-prefixed frames."""
    i, out = 0, []
    while i + 4 <= len(stream):
        (n,) = struct.unpack(">I", stream[i : i + 4])
        if i + 4 + n > len(stream):
            break
        out.append(bytes(stream[i : i + 4 + n]))
        i += 4 + n
    return out


async def run(cmd, timeout=10):
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except asyncio.TimeoutError:
        proc.kill()


async def mqtt_traffic(relay):
    """Real clients through the relay; returns [(level index, client stream, broker stream)]."""
    port = str(relay.port)
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", port]
    sub = ["mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-W", "3"]
    runs = [
        ("mqttv31", pub + ["-V", "mqttv31", "-i", "old", "-t", "a/b", "-m", "retained", "-q", "2", "-r"]),
        ("mqttv311", pub + ["-V", "mqttv311", "-i", "dev-1", "-u", "alice", "-P", "secret", "-t", "fleet/dev-1/t",
                            "-m", "21.5", "-q", "1", "--will-topic", "fleet/dev-1/state", "--will-payload", "lost",
                            "--will-qos", "1", "--will-retain", "-k", "30"]),
        ("mqttv5", pub + ["-V", "mqttv5", "-i", "dev-5", "-t", "sensors/5/json", "-m", '{"t":1}', "-q", "2",
                          "-D", "connect", "session-expiry-interval", "60", "-D", "connect", "receive-maximum", "10",
                          "-D", "connect", "maximum-packet-size", "65536", "-D", "connect", "user-property", "k", "v",
                          "-D", "publish", "content-type", "application/json", "-D", "publish",
                          "message-expiry-interval", "30", "-D", "publish", "response-topic", "reply/5",
                          "-D", "publish", "correlation-data", "c0ffee", "-D", "publish", "payload-format-indicator",
                          "1", "-D", "publish", "user-property", "a", "b", "-D", "publish", "topic-alias", "1"]),
        ("mqttv311", sub + ["-V", "mqttv311", "-i", "sub-1", "-c", "-q", "2", "-t", "a/#", "-t", "+/b", "-C", "1"]),
        ("mqttv5", sub + ["-V", "mqttv5", "-i", "sub-5", "-q", "1", "-t", "a/+", "--nl", "--rap", "-C", "1",
                          "-D", "subscribe", "subscription-identifier", "7", "-D", "subscribe", "user-property",
                          "s", "1"]),
        ("mqttv5", sub + ["-V", "mqttv5", "-i", "unsub-5", "-t", "x/y", "-U", "x/y", "-E"]),
        ("mqttv31", sub + ["-V", "mqttv31", "-i", "sub-31", "-q", "1", "-t", "a/b", "-C", "1"]),
    ]
    for level, cmd in runs:
        await run(cmd)
    await run([os.environ.get("FLEETGATE_PYTHON", "/usr/bin/python3"), "-c", PAHO.format(port=port)])
    levels = [level for level, _ in runs] + ["mqttv5"]
    await asyncio.sleep(0.5)
    return [(LEVELS[l], bytes(s), bytes(r)) for l, (s, r) in zip(levels, relay.conversations)]


PAHO = """
import time, paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="paho-5", protocol=mqtt.MQTTv5)
c.connect("127.0.0.1", {port}, keepalive=1)
c.loop_start()
time.sleep(0.3)
c.subscribe([("q/#", SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True, retainHandling=1)),
             ("$share/g/q/+", SubscribeOptions(qos=1))])
time.sleep(0.3)
c.publish("q/1", b"to myself", qos=2, retain=False).wait_for_publish(2)
c.unsubscribe(["q/#", "$share/g/q/+"])
time.sleep(1.6)
p = Properties(PacketTypes.DISCONNECT)
p.SessionExpiryInterval = 0
c.disconnect(reasoncode=mqtt.ReasonCode(PacketTypes.DISCONNECT, identifier=4), properties=p)
c.loop_stop()
"""


def write_mqtt_seeds(conversations):
    for level, sent, received in conversations:
        # A broker's codec before the CONNECT, fed the client's whole stream, at once and in 3-byte reads.
        write_seed("mqtt_codec", bytes([0, 0]) + sent[:4096])
        write_seed("mqtt_codec", bytes([0, 3]) + sent[:4096])
        # A client's codec fed the broker's stream.
        write_seed("mqtt_codec", bytes([4 + level, 0]) + received[:4096])
        packets = mqtt_packets(sent)
        if packets:
            write_seed("connect_peek", b"\x10\x00" + packets[0])
            write_seed("connect_peek", b"\x10\x00" + b"".join(packets[:2]))
        # Each packet alone, to a connected broker codec.
        for p in packets[1:]:
            write_seed("mqtt_codec", bytes([1 + level, 0]) + p)


CLUSTER_ACL = """
[[rules]]
action = "allow"
access = "both"
match = { any_authenticated = true }
topics = ["#"]
"""
USERS = {"alice": "Alice-seed-pw", "bob": "Bob-seed-pw"}


def node_config(name, cluster_port, own_relay, peer_name, peer_port, auth_dir):
    return f"""[node]
name = "{name}"

[[listeners]]
bind = "127.0.0.1:0"

[admin]
bind = "127.0.0.1:0"

[cluster]
bind = "127.0.0.1:{cluster_port}"
advertise = "127.0.0.1:{own_relay}"
peers = [{{ name = "{peer_name}", addr = "127.0.0.1:{peer_port}" }}]

[auth]
policies = ["password"]
password_file = "{auth_dir / 'passwd'}"
acl_file = "{auth_dir / 'acl.toml'}"
"""


async def cluster_traffic(binary):
    """Two nodes whose links both go through relays; clients (alice and bob, with passwords) that make them sync,
    route, publish, retain, hand a session over and refuse one to another identity; then both drain. Returns the
    recorded conversations."""
    a_port, b_port = free_port(), free_port()
    relay_a, relay_b = Relay(a_port), Relay(b_port)
    await relay_a.start()
    await relay_b.start()
    tmp = pathlib.Path(tempfile.mkdtemp())
    (tmp / "acl.toml").write_text(CLUSTER_ACL)
    for user, password in USERS.items():
        subprocess.run([binary, "passwd", str(tmp / "passwd"), user], input=password + "\n", text=True,
                       check=True, stdout=subprocess.DEVNULL)
    procs, mqtt = [], {}
    # Each node advertises its relay, so that every dial (a redial after a Hello too) goes through one.
    for name, port, own, peer, other in [("a", a_port, relay_a, "b", relay_b), ("b", b_port, relay_b, "a", relay_a)]:
        conf = tmp / f"{name}.toml"
        conf.write_text(node_config(name, port, own.port, peer, other.port, tmp))
        log = open(tmp / f"{name}.log", "w+")
        procs.append((subprocess.Popen([binary, "node", "--config", str(conf)],
                                       stdout=log, stderr=subprocess.STDOUT), log))
    await asyncio.sleep(3)
    for name, (_, log) in zip("ab", procs):
        log.seek(0)
        for line in log:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "listening" and event.get("role") not in ("admin", "cluster"):
                mqtt[name] = event["addr"].rsplit(":", 1)[1]
                break
    alice = ["-u", "alice", "-P", USERS["alice"]]
    bob = ["-u", "bob", "-P", USERS["bob"]]
    sub_b = asyncio.create_task(run(["mosquitto_sub", "-p", mqtt["b"], "-V", "mqttv5", *alice, "-t", "x/#",
                                     "-t", "$share/g/y/+", "-C", "2", "-W", "5"], 8))
    await asyncio.sleep(1)
    await run(["mosquitto_pub", "-p", mqtt["a"], "-V", "mqttv5", *alice, "-t", "x/1", "-m", "hi", "-q", "1",
               "-D", "publish", "message-expiry-interval", "60", "-D", "publish", "user-property", "k", "v"])
    await run(["mosquitto_pub", "-p", mqtt["a"], *alice, "-t", "x/2", "-m", "kept", "-q", "1", "-r"])
    # A persistent session on a, with a queued message, taken over by a connect on b.
    await run(["mosquitto_sub", "-p", mqtt["a"], "-V", "mqttv5", *alice, "-i", "mover", "-c", "-q", "1",
               "-t", "m/#", "-x", "600", "-E"])
    await run(["mosquitto_pub", "-p", mqtt["a"], *alice, "-t", "m/1", "-m", "queued", "-q", "1"])
    await run(["mosquitto_sub", "-p", mqtt["b"], "-V", "mqttv5", *alice, "-i", "mover", "-c", "-q", "1",
               "-t", "m/#", "-x", "600", "-C", "1", "-W", "4"])
    # alice's persistent session on a, asked for by bob on b: a refuses the takeover, b the CONNECT.
    await run(["mosquitto_sub", "-p", mqtt["a"], "-V", "mqttv5", *alice, "-i", "owned", "-c", "-q", "1",
               "-t", "o/#", "-x", "600", "-E"])
    await run(["mosquitto_sub", "-p", mqtt["b"], "-V", "mqttv311", *bob, "-i", "owned", "-c", "-t", "o/#",
               "-C", "1", "-W", "2"])
    await sub_b
    await asyncio.sleep(2)
    # Each node drains at SIGTERM (its sessions pushed to the other, Leaving, barriers): waited for off the event
    # loop, which carries the relays' traffic meanwhile.
    for proc, log in procs:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 15)
        log.close()
    print("logs in", tmp) if os.environ.get("KEEP") else shutil.rmtree(tmp)
    return relay_a.conversations + relay_b.conversations


def write_cluster_seeds(conversations):
    for sent, received in conversations:
        for stream in (bytes(sent), bytes(received)):
            fs = frames(stream)
            for f in fs:
                write_seed("cluster_frame", f)
            write_seed("cluster_frame", b"".join(fs[:8]))


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def tlv(kind, value):
    return bytes([kind]) + struct.pack(">H", len(value)) + value


def v2(command, family, addresses, tlvs=b"", crc=False):
    if crc:
        tlvs = tlvs + tlv(0x03, b"\0\0\0\0")
    body = addresses + tlvs
    header = b"\r\n\r\n\0\r\nQUIT\n" + bytes([0x20 | command, family]) + struct.pack(">H", len(body)) + body
    if crc:
        header = header[:-4] + struct.pack(">I", crc32c(header))
    return header


def write_proxy_seeds():
    v4 = socket.inet_aton("192.0.2.10") + socket.inet_aton("10.0.0.1") + struct.pack(">HH", 51000, 1883)
    v6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::10") + socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1")
          + struct.pack(">HH", 51000, 8883))
    ssl_sub = (tlv(0x21, b"TLSv1.3") + tlv(0x22, b"device-17") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
               + tlv(0x26, b"X25519") + tlv(0x27, b"ecdsa_secp256r1_sha256") + tlv(0x28, bytes(range(48))))
    identity = (tlv(0x01, b"mqtt") + tlv(0x02, b"broker.example.com") + tlv(0x05, b"conn-42")
                + tlv(0x20, b"\x07\0\0\0\0" + ssl_sub) + tlv(0xE0, b"device-17")
                + tlv(0xE1, b"DNS:device-17.fleet") + tlv(0xE1, b"URI:spiffe://fleet/device-17")
                + tlv(0x04, b"\0\0\0"))
    headers = [
        b"PROXY TCP4 192.0.2.10 10.0.0.1 51000 1883\r\n",
        b"PROXY TCP6 2001:db8::10 ::ffff:10.0.0.1 51000 8883\r\n",
        b"PROXY UNKNOWN\r\n",
        v2(0, 0x00, b""),  # LOCAL (a health check)
        v2(1, 0x11, v4),
        v2(1, 0x11, v4, crc=True),
        v2(1, 0x21, v6, tlv(0x20, b"\x01\0\0\0\x01" + tlv(0x21, b"TLSv1.2"))),
        v2(1, 0x11, v4, identity, crc=True),
        v2(1, 0x31, bytes(108) + bytes(108)),  # AF_UNIX
    ]
    connect = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01c"
    for h in headers:
        write_seed("proxy_header", b"\x00" + h)
        write_seed("proxy_header", b"\x03" + h + connect)  # CRC on re-encode, 2-byte reads, MQTT behind


def write_config_seeds():
    files = sorted((ROOT / "examples").glob("*.toml")) + sorted((ROOT / "k8s" / "config").glob("*.toml"))
    for f in files:
        text = f.read_text()
        write_seed("config_parse", text.encode())
        # The same without comments and blank lines: within the target's 2 KiB input cap (scripts/fuzz).
        lines = [l for l in text.splitlines() if l.strip() and not l.lstrip().startswith("#")]
        stripped = "".join(re.sub(r"\s+#[^\"']*$", "", l) + "\n" for l in lines)
        write_seed("config_parse", stripped.encode())


def write_topic_seeds():
    """A topic, a filter, and rule topics in the example ACL's shape (examples/acl.toml), `$` topics included."""
    cases = [
        (0b101, 0b000110, ["fleet/dev-1/telemetry", "fleet/dev-1/#", "fleet/dev-1/cmd/#", "fleet/+/telemetry",
                           "fleet/dev-1/#"]),
        (0b001, 0b000000, ["$SYS/broker/load", "$SYS/broker/#", "$SYS/broker/#", "#"]),
        (0b011, 0b010110, ["public/news", "public/+", "public/#", "+/+", "#"]),
        (0b110, 0b101010, ["sport/tennis/player1", "sport/#", "sport/tennis/+", "sport/+/player1", "+/+/+"]),
        (0b001, 0b000000, ["a//b", "a/+/b", "+/+/+", "a/#"]),
        (0b000, 0b000000, ["/", "+/+", "#", "/#"]),
        (0b111, 0b111111, ["$share/g/x", "$share/g/x/#", "x/#", "$share/#", "+/g/#"]),
    ]
    for actions, accesses, strings in cases:
        write_seed("topic_matcher", bytes([actions, accesses]) + b"\xff".join(t.encode() for t in strings))


TARGETS = ["mqtt_codec", "connect_peek", "cluster_frame", "proxy_header", "config_parse", "topic_matcher"]


async def main(binary, targets):
    # Relays still open when the loop ends are cancelled; nothing to report.
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: None)
    unknown = set(targets) - set(TARGETS)
    if unknown:
        sys.exit(f"unknown targets {sorted(unknown)}; known: {TARGETS}")
    targets = targets or TARGETS
    for d in targets:
        shutil.rmtree(SEEDS / d, ignore_errors=True)
    if {"mqtt_codec", "connect_peek"} & set(targets):
        await write_mqtt_traffic_seeds()
    if "cluster_frame" in targets:
        write_cluster_seeds(await cluster_traffic(binary))
    if "proxy_header" in targets:
        write_proxy_seeds()
    if "config_parse" in targets:
        write_config_seeds()
    if "topic_matcher" in targets:
        write_topic_seeds()
    for d in sorted(SEEDS / t for t in targets):
        print(f"{d.name}: {len(list(d.iterdir()))} seeds")


async def write_mqtt_traffic_seeds():
    """mqtt_codec and connect_peek (both, from one recording against Mosquitto)."""
    broker_port = free_port()
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    conf.close()
    broker = subprocess.Popen(["mosquitto", "-c", conf.name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    relay = Relay(broker_port)
    await relay.start()
    write_mqtt_seeds(await mqtt_traffic(relay))
    broker.terminate()
    broker.wait(5)
    os.unlink(conf.name)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
