"""Helpers the client test scripts share: the failure they report, a log handler that keeps a
client's last lines, and creating a topic through each library's admin client and waiting until a
client's metadata shows all its partitions."""

import logging
import sys
import time


class Fail(Exception):
    """A check failed; the message says what differed."""


class ListHandler(logging.Handler):
    """Keeps the last log lines of a client in a list instead of spamming stderr."""

    def __init__(self, sink, keep=50):
        super().__init__()
        self.sink, self.keep = sink, keep

    def emit(self, record):
        self.sink.append(record.getMessage())
        del self.sink[: -self.keep]


def create_topic_confluent(conf, topic, partitions, timeout_s):
    """CreateTopics through confluent-kafka's AdminClient (conf: the client settings)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(conf)
    futures = admin.create_topics(
        [NewTopic(topic, num_partitions=partitions, replication_factor=1)],
        operation_timeout=10,
        request_timeout=15,
    )
    try:
        futures[topic].result(timeout=timeout_s)
    except Exception as e:  # KafkaException carrying the broker's error
        raise Fail(f"CreateTopics {topic!r} ({partitions} partitions) failed: {e}")
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None:
            seen = sorted(t.partitions)
            if seen == list(range(partitions)):
                return
        time.sleep(0.2)
    raise Fail(f"after CreateTopics, metadata shows partitions {seen}, expected 0..{partitions - 1}")


def create_topic_kafka_python(bootstrap, topic, partitions, timeout_s):
    """CreateTopics through kafka-python's KafkaAdminClient; metadata is checked with a plain
    consumer, whose metadata request for the topic must not auto-create it differently."""
    from kafka import KafkaConsumer
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}})
    except Exception as e:
        raise Fail(f"CreateTopics {topic!r} ({partitions} partitions) failed: {e!r}")
    finally:
        admin.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        seen = None
        while time.monotonic() < deadline:
            seen = consumer.partitions_for_topic(topic)
            if seen == set(range(partitions)):
                return
            time.sleep(0.2)
        raise Fail(f"after CreateTopics, metadata shows partitions {sorted(seen or [])}, expected 0..{partitions - 1}")
    finally:
        consumer.close()


def run_main(main):
    """Runs a script's main(): a Fail is one line on stderr and exit status 1."""
    try:
        main()
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    return 0
