#!/usr/bin/env python3
"""Reads a topic from its beginning as an outside consumer would (confluent-kafka, librdkafka
2.x), printing one JSON line per message: {"key", "value" (the payload parsed), "headers"}.

Usage: kafka_consume.py BOOTSTRAP TOPIC COUNT [TIMEOUT_S] [PROTO]
Stops after COUNT messages and one quiet second more (so duplicates beyond COUNT show), or
at the timeout; exits 1 if fewer than COUNT arrived. With PROTO (a .proto file), payloads are
protobuf `Flow`s, decoded with the module protoc (grpcio-tools) generates from it; "value"
then holds every field the message has (those without presence always).
"""
import importlib
import json
import os
import sys
import tempfile
import time

from confluent_kafka import Consumer, KafkaError


def compile_proto(proto):
    """The Python module protoc (grpcio-tools) generates from the .proto file `proto`."""
    from grpc_tools import protoc
    out = tempfile.mkdtemp(prefix="hawking-pb-")
    directory, name = os.path.split(os.path.abspath(proto))
    if protoc.main(["protoc", f"-I{directory}", f"--python_out={out}", name]) != 0:
        sys.exit(f"protoc could not compile {proto}")
    sys.path.insert(0, out)
    return importlib.import_module(name[: -len(".proto")] + "_pb2")


def protobuf_decoder(proto):
    module = compile_proto(proto)

    def decode(payload):
        flow = module.Flow()
        flow.ParseFromString(payload)
        value = {}
        for field in flow.DESCRIPTOR.fields:
            if field.has_presence and not flow.HasField(field.name):
                continue
            value[field.name] = getattr(flow, field.name)
        return value

    return decode


def main():
    bootstrap, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    decode = protobuf_decoder(sys.argv[5]) if len(sys.argv) > 5 else json.loads
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"e2e-{time.time_ns()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen, deadline, quiet_until = 0, time.monotonic() + timeout, None
    out = sys.stdout
    while time.monotonic() < deadline:
        if quiet_until is not None and time.monotonic() > quiet_until:
            break
        msg = consumer.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            print(f"consumer error: {msg.error()}", file=sys.stderr)
            continue
        key = msg.key().decode() if msg.key() is not None else None
        headers = {k: (v.decode() if v is not None else None) for k, v in (msg.headers() or [])}
        out.write(json.dumps({"key": key, "value": decode(msg.value()), "headers": headers}))
        out.write("\n")
        seen += 1
        if seen >= count and quiet_until is None:
            quiet_until = time.monotonic() + 1.0
    consumer.close()
    out.flush()
    if seen < count:
        print(f"{seen} of {count} messages in {timeout} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
