#!/usr/bin/env python3
"""Publishes goflow2 flow messages to a topic as goflow2 does (confluent-kafka, librdkafka
2.x): one message per flow, read as goflow2 JSON lines from standard input.

Usage: kafka_produce.py BOOTSTRAP TOPIC FORMAT RATE PROTO
FORMAT `json` publishes each line as it is (goflow2 -format=json); `protobuf` publishes the
flow as a `flowpb.FlowMessage` of PROTO prefixed with its length as a varint (goflow2
-format=bin). RATE is messages per second (0: as fast as the producer takes them). Prints
the number of messages the broker acknowledged; exits 1 if any was not.
"""
import ipaddress
import json
import os
import sys
import time

from confluent_kafka import Producer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kafka_consume import compile_proto  # noqa: E402

PROTOCOLS = {"ICMP": 1, "TCP": 6, "UDP": 17}
ETYPES = {"IPv4": 0x800, "IPv6": 0x86DD}


def varint(n):
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def flow_message(module, line):
    """goflow2's JSON of one flow as its protobuf: names become numbers, text addresses bytes."""
    m = module.FlowMessage()
    for name, value in line.items():
        if name == "type":
            m.type = module.FlowMessage.FlowType.Value(value)
        elif name in ("sampler_address", "src_addr", "dst_addr"):
            if value:
                setattr(m, name, ipaddress.ip_address(value).packed)
        elif name == "proto":
            m.proto = PROTOCOLS[value] if isinstance(value, str) else value
        elif name == "etype":
            m.etype = ETYPES[value] if isinstance(value, str) else value
        elif name in module.FlowMessage.DESCRIPTOR.fields_by_name:
            setattr(m, name, value)
    body = m.SerializeToString()
    return varint(len(body)) + body


def main():
    bootstrap, topic, fmt, rate, proto = sys.argv[1:6]
    rate = float(rate)
    module = compile_proto(proto) if fmt == "protobuf" else None
    failed = []
    acked = [0]

    def delivered(err, _msg):
        if err is not None:
            failed.append(err)
        else:
            acked[0] += 1

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    started = time.monotonic()
    for i, text in enumerate(sys.stdin):
        line = json.loads(text)
        payload = flow_message(module, line) if module else text.rstrip("\n").encode()
        while True:
            try:
                producer.produce(topic, payload, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if rate > 0:
            ahead = (i + 1) / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush(60)
    print(acked[0])
    if failed or len(producer) > 0:
        print(f"not delivered: {len(producer)} queued, errors {failed[:3]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
