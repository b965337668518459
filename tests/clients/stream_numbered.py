"""Streams N numbered plain-text records (`record-000000` ...) into a topic with confluent-kafka,
acks=all, spread over about SECONDS, and fails unless every one was acknowledged.

Usage: stream_numbered.py KAFKA TOPIC N SECONDS
"""

import sys
import time

from confluent_kafka import Producer

from kafka_helpers import Fail, run_main


def main():
    kafka, topic, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    failed = []
    producer = Producer({"bootstrap.servers": kafka, "acks": "all", "linger.ms": 5})

    def delivered(err, msg):
        if err is not None:
            failed.append(str(err))

    started = time.monotonic()
    for i in range(n):
        producer.produce(topic, f"record-{i:06d}".encode(), on_delivery=delivered)
        producer.poll(0)
        ahead = started + seconds * (i + 1) / n - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    left = producer.flush(60)
    if left or failed:
        raise Fail(f"{left} records unacknowledged, {len(failed)} failed: {failed[:3]}")
    print(f"{n} records acknowledged")


if __name__ == "__main__":
    sys.exit(run_main(main))
