#!/usr/bin/env python3
"""Idempotent producer for crash tests, and the check of what it left in the log.

produce: sends --count records whose values are 0..count-1 (%012d) to partition 0 with
enable.idempotence=true (acks=all, retries on, in-flight 5) and a long message timeout, so it rides
through broker restarts; every record must end up delivered. Exits 1 if any delivery failed.

verify: reads partition 0 from the beginning and checks the values are exactly 0..count-1, in
order: nothing lost, nothing duplicated by the retries that the restarts caused.

    idempotent_producer.py produce --bootstrap HOST:PORT --topic NAME --count N
    idempotent_producer.py verify  --bootstrap HOST:PORT --topic NAME --count N
"""

import argparse
import sys
import time

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(args):
    failures = []
    delivered = [0]

    def on_delivery(err, _msg):
        if err is not None:
            failures.append(str(err))
        else:
            delivered[0] += 1

    producer = Producer({
        "bootstrap.servers": args.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 180000,
        "log_level": 3,
    })
    for i in range(args.count):
        while True:
            try:
                producer.produce(args.topic, value=b"%012d" % i, partition=0, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if i % 100 == 0:
            time.sleep(0.01)  # about 10k records/s, so the run spans the broker restarts
    remaining = producer.flush(180)
    if failures or remaining:
        print(f"FAIL: {len(failures)} deliveries failed ({failures[:3]}), {remaining} never answered")
        return 1
    print(f"ok: {delivered[0]} records delivered")
    return 0


def verify(args):
    consumer = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": "idempotence-verify",
        "enable.auto.commit": False,
        "log_level": 3,
    })
    low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, 0), timeout=10)
    consumer.assign([TopicPartition(args.topic, 0, low)])
    values = []
    deadline = time.time() + 120
    while len(values) < high - low and time.time() < deadline:
        for msg in consumer.consume(1000, timeout=1):
            if msg.error():
                print(f"FAIL: consume error {msg.error()}")
                return 1
            values.append(int(msg.value()))
    consumer.close()
    expected = list(range(args.count))
    if values != expected:
        dups = len(values) - len(set(values))
        missing = sorted(set(expected) - set(values))
        first_bad = next((i for i, (a, b) in enumerate(zip(values, expected)) if a != b), None)
        print(f"FAIL: {len(values)} records, {dups} duplicates, {len(missing)} missing "
              f"(first {missing[:5]}), first difference at index {first_bad}")
        return 1
    print(f"ok: {len(values)} records, each exactly once, in order")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["produce", "verify"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, required=True)
    args = ap.parse_args()
    sys.exit(produce(args) if args.mode == "produce" else verify(args))


if __name__ == "__main__":
    main()
