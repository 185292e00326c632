#!/usr/bin/env python3
"""A minimal Equilibrium client in Python, written from PROTOCOL.md alone.

It proves the protocol is plain QUIC (aioquic talks to the Rust node) and that the spec is
enough to implement it: frames and rkyv bodies are built and parsed here with `struct`, byte
by byte as the spec describes. Usage:

    eq_client.py HOST PORT TOKEN CAFILE ZONE_HEX [CLUSTER_KEY_HEX]

It authenticates, sends two rider-demand events (twice: the resend must come back as
duplicates), sends two more as an idempotent producer (numbered per zone; resent, and then
once more from an older epoch, which is fenced), quotes a trip from ZONE_HEX and a trip from
an invalid latitude, tries the rules of PROTOCOL.md §6 (a reply kind sent as a request, a bad
`origin`, a `client_name` over 64 bytes, a second HELLO), and prints one JSON object with what
the node answered. `check_vectors.py` checks the encoders and decoders here against
`protocol/vectors/`.
"""

import asyncio
import hashlib
import hmac
import json
import ssl
import struct
import sys

ALPN = "equilibrium/1"
HELLO, QUOTE, EVENT_BATCH, PRODUCER_BATCH = 0x01, 0x02, 0x04, 0x10
WELCOME, QUOTE_OK, EVENT_BATCH_OK, PRODUCER_BATCH_OK, ERROR = 0x81, 0x82, 0x84, 0x90, 0xFF


def frame(kind, request_id, body):
    """Section 3: len (u32, bytes after it), magic "EQ", version 1, kind, request id."""
    return struct.pack("<I2sBBQ", 12 + len(body), b"EQ", 1, kind, request_id) + body


def pad(buf, align):
    return buf + b"\0" * (-len(buf) % align)


def vec_field(field_pos, data_pos, length):
    """Section 4, rule 4: i32 offset from the field's own position, then u32 length."""
    return struct.pack("<iI", data_pos - field_pos, length)


def hello_body(token, name):
    # Out-of-line data first, then the 16-byte root (two vectors, align 4) at the end.
    data = token + name
    root_pos = len(pad(data, 4))
    root = vec_field(root_pos, 0, len(token)) + vec_field(root_pos + 8, len(token), len(name))
    return pad(data, 4) + root


def quote_body(zone=0, lat=0.0, lng=0.0, distance_m=5000, duration_s=900, origin=0):
    # QuoteRequest: size 40, align 8.
    return struct.pack("<QddIIB7x", zone, lat, lng, distance_m, duration_s, origin)


def event_batch_body(events):
    # WireEvent: size 32, align 8: id, zone, driver (u64), kind (u8), 7 bytes padding.
    # `driver` is the driver id for kinds 1-3 and the rider's session id for kinds 4-5
    # (a rider counts once per session; 0 = unknown, each event then counts), 0 for kind 6.
    data = b"".join(struct.pack("<QQQB7x", i, z, d, k) for (i, z, d, k) in events)
    root_pos = len(data)  # already a multiple of 8
    return data + vec_field(root_pos, 0, len(events))


def producer_batch_body(producer, epoch, events):
    # ProducerBatch: size 24, align 8: producer (u64) at 0, epoch (u32) at 8, events (vector)
    # at 12, 4 bytes of padding. The events first (each id is the event's sequence in its
    # zone), the root last.
    data = b"".join(struct.pack("<QQQB7x", i, z, d, k) for (i, z, d, k) in events)
    root_pos = len(data)
    root = struct.pack("<QI", producer, epoch) + vec_field(root_pos + 12, 0, len(events))
    return data + root + b"\0" * 4


class Producer:
    """An idempotent producer: an id kept across restarts, an epoch raised at each start, and
    the next sequence of each zone. Number an event once; resend it with its number."""

    def __init__(self, producer, epoch):
        self.producer, self.epoch, self.next = producer, epoch, {}

    def number(self, events):
        numbered = []
        for (_, zone, driver, kind) in events:
            seq = self.next.get(zone, 1)
            self.next[zone] = seq + 1
            numbered.append((seq, zone, driver, kind))
        return numbered

    def body(self, numbered):
        return producer_batch_body(self.producer, self.epoch, numbered)


def root_vec(body, root_pos, field_offset):
    field = root_pos + field_offset
    off, length = struct.unpack_from("<iI", body, field)
    return field + off, length


def parse(kind, body):
    if kind == WELCOME:
        ttl, frame_max, batch_max, in_flight, node, tier, res = struct.unpack("<QIIIHBB", body[-24:])
        return {"kind": "welcome", "node_id": node, "tier": tier, "resolution": res, "batch_len_max": batch_max}
    if kind == QUOTE_OK:
        root = body[-160:]
        token = root[:112]
        zone, amount, version, age, expires, mult, cur = struct.unpack_from("<QQQQQI3s", root, 112)
        return {"kind": "quote", "zone": f"{zone:x}", "amount_minor": amount, "multiplier_milli": mult,
                "currency": cur.decode(), "token": token.hex()}
    if kind in (EVENT_BATCH_OK, PRODUCER_BATCH_OK):
        start, n = root_vec(body, len(body) - 8, 0)
        return {"kind": "outcomes", "outcomes": list(body[start:start + n])}
    if kind == ERROR:
        root_pos = len(body) - 12
        (code,) = struct.unpack_from("<H", body, root_pos)
        start, n = root_vec(body, root_pos, 4)
        return {"kind": "error", "code": code, "message": body[start:start + n].decode()}
    return {"kind": f"0x{kind:02x}"}


async def request(reader, writer, kind, request_id, body):
    writer.write(frame(kind, request_id, body))
    head = await reader.readexactly(16)
    length, magic, version, rkind, rid = struct.unpack("<I2sBBQ", head)
    assert magic == b"EQ" and version == 1 and rid == request_id, (magic, version, rid)
    return parse(rkind, await reader.readexactly(length - 12))


def token_tag_ok(token_hex, cluster_key_hex):
    """Section 7: the tag (bytes 96..112) is the first 16 bytes of HMAC-SHA256 over bytes
    0..96, keyed with the bytes `cluster_key_hex` decodes to."""
    token = bytes.fromhex(token_hex)
    key = bytes.fromhex(cluster_key_hex.strip())
    return hmac.new(key, token[:96], hashlib.sha256).digest()[:16] == token[96:]


async def main(host, port, token, cafile, zone_hex, cluster_key_hex=None):
    # Imported here so that check_vectors.py can use the codecs without aioquic.
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name="localhost")
    config.load_verify_locations(cafile)
    config.verify_mode = ssl.CERT_REQUIRED
    zone = int(zone_hex, 16)
    out = {}
    async with connect(host, int(port), configuration=config) as client:
        reader, writer = await client.create_stream()
        # Before HELLO: a reply kind is unknown_kind (3) whatever its body; a client_name over
        # 64 bytes is invalid_value (25) and authenticates nothing.
        out["reply_kind"] = await request(reader, writer, WELCOME, 20, b"\x01\x02\x03")
        out["long_name"] = await request(reader, writer, HELLO, 21, hello_body(token.encode(), b"n" * 65))
        out["hello"] = await request(reader, writer, HELLO, 1, hello_body(token.encode(), b"python"))
        events = [(9001, zone, 0, 4), (9002, zone, 0, 4)]
        out["events"] = await request(reader, writer, EVENT_BATCH, 2, event_batch_body(events))
        out["resend"] = await request(reader, writer, EVENT_BATCH, 3, event_batch_body(events))
        old, new = Producer(0xC0FFEE, 1), Producer(0xC0FFEE, 2)
        numbered = old.number([(0, zone, 31, 4), (0, zone, 32, 4)])
        out["produced"] = await request(reader, writer, PRODUCER_BATCH, 6, old.body(numbered))
        out["produced_resend"] = await request(reader, writer, PRODUCER_BATCH, 7, old.body(numbered))
        restarted = new.number([(0, zone, 33, 4)])
        out["restarted"] = await request(reader, writer, PRODUCER_BATCH, 8, new.body(restarted))
        out["old_epoch"] = await request(reader, writer, PRODUCER_BATCH, 9, old.body(numbered))
        out["quote"] = await request(reader, writer, QUOTE, 4, quote_body(zone=zone, distance_m=5000, duration_s=900))
        out["bad_latitude"] = await request(reader, writer, QUOTE, 5, quote_body(lat=95.0, origin=1))
        out["bad_origin"] = await request(reader, writer, QUOTE, 22, quote_body(zone=zone, origin=2))
        # A second HELLO: the same token is welcomed again, another one forbidden (12).
        out["hello_again"] = await request(reader, writer, HELLO, 23, hello_body(token.encode(), b"python"))
        out["hello_other"] = await request(reader, writer, HELLO, 24, hello_body(b"not-this-one", b"python"))
    if cluster_key_hex and out["quote"].get("token"):
        out["tag_ok"] = token_tag_ok(out["quote"]["token"], cluster_key_hex)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:7]))
