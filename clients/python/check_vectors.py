#!/usr/bin/env python3
"""Checks this client's codecs against the published vectors, from the spec's files alone.

For every vector in `protocol/vectors/` (PROTOCOL.md §11): the header matches the entry of
`values.json` (length, magic, version, kind, request id); each request this client builds
(HELLO, QUOTE, EVENT_BATCH, PRODUCER_BATCH), built from the entry's fields, is byte for byte
the vector; each reply it parses (WELCOME, QUOTE_OK, EVENT_BATCH_OK, PRODUCER_BATCH_OK,
ERROR), parsed from the vector, has the entry's values. Prints one JSON line; exits 1 on a
mismatch. Usage: check_vectors.py VECTORS_DIR
"""

import json
import os
import struct
import sys

import eq_client as eq


def unhex(text):
    return bytes(int(h, 16) for h in text.split())


def event_tuples(events):
    return [(e["id"], e["zone"], e["driver"], e["kind"]) for e in events]


def build(kind, f):
    """The body this client writes for a request of `kind` with fields `f`, or None."""
    if kind == eq.HELLO:
        return eq.hello_body(bytes.fromhex(f["client_token"]), bytes.fromhex(f["client_name"]))
    if kind == eq.QUOTE:
        return eq.quote_body(f["zone"], f["lat"], f["lng"], f["distance_m"], f["duration_s"], f["origin"])
    if kind == eq.EVENT_BATCH:
        return eq.event_batch_body(event_tuples(f["events"]))
    if kind == eq.PRODUCER_BATCH:
        return eq.producer_batch_body(f["producer"], f["epoch"], event_tuples(f["events"]))
    return None


def expected_parse(kind, f):
    """What `eq.parse` must return for a reply of `kind` with fields `f`, or None."""
    if kind == eq.WELCOME:
        return {"kind": "welcome", "node_id": f["node_id"], "tier": f["tier"],
                "resolution": f["resolution"], "batch_len_max": f["batch_len_max"]}
    if kind == eq.QUOTE_OK:
        return {"kind": "quote", "zone": f"{f['zone']:x}", "amount_minor": f["amount_minor"],
                "multiplier_milli": f["multiplier_milli"],
                "currency": bytes.fromhex(f["currency"]).decode(), "token": f["token"]}
    if kind in (eq.EVENT_BATCH_OK, eq.PRODUCER_BATCH_OK):
        return {"kind": "outcomes", "outcomes": list(bytes.fromhex(f["outcomes"]))}
    if kind == eq.ERROR:
        return {"kind": "error", "code": f["code"], "message": bytes.fromhex(f["message"]).decode()}
    return None


def main(vectors):
    with open(os.path.join(vectors, "values.json")) as fh:
        values = json.load(fh)
    failures, built, parsed = [], 0, 0
    for name, entry in sorted(values.items()):
        with open(os.path.join(vectors, name + ".hex")) as fh:
            frame = unhex(fh.read())
        length, magic, version, kind, rid = struct.unpack_from("<I2sBBQ", frame)
        if (length + 4, magic, version, kind, rid) != (len(frame), b"EQ", 1, entry["kind"], entry["request_id"]):
            failures.append(f"{name}: header")
            continue
        body = frame[16:]
        mine = build(kind, entry["fields"])
        if mine is not None:
            built += 1
            if eq.frame(kind, rid, mine) != frame:
                failures.append(f"{name}: built {mine.hex()} but the vector's body is {body.hex()}")
        want = expected_parse(kind, entry["fields"])
        if want is not None:
            parsed += 1
            have = eq.parse(kind, body)
            if have != want:
                failures.append(f"{name}: parsed {have} but values.json says {want}")
    print(json.dumps({"vectors": len(values), "built": built, "parsed": parsed, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
