#!/usr/bin/env python3
"""OffsetDelete through kafka-python's admin client (`delete_group_offsets`), as
`kafka-consumer-groups --delete-offsets` uses it.

With kafka-python: commits offsets 5 and 7 of partitions 0 and 1 of --topic (2 partitions, made
by the caller) for --group without joining it; deletes partition 0's; checks that only
partition 1's is left; then, with a consumer of the group subscribed to the topic, checks that
deleting partition 1's is refused (GROUP_SUBSCRIBED_TO_TOPIC) and that it is still there; and
that a partition the topic lacks is unknown, and that a group with no offsets and no members is
not found.

Exit status 0 and a last line "ok: ..." on success; "FAIL: ..." and status 1 otherwise. Every
wait is bounded.

    offset_delete.py --bootstrap HOST:PORT --topic NAME --group NAME
"""

import argparse
import sys
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import (
    GroupIdNotFoundError,
    GroupSubscribedToTopicError,
    NoError,
    UnknownTopicOrPartitionError,
)
from kafka.structs import OffsetAndMetadata


def fail(why):
    print(f"FAIL: {why}")
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    tp0, tp1 = TopicPartition(args.topic, 0), TopicPartition(args.topic, 1)

    committer = KafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=args.group, enable_auto_commit=False
    )
    committer.assign([tp0, tp1])
    committer.commit({tp0: OffsetAndMetadata(5, "", -1), tp1: OffsetAndMetadata(7, "", -1)})
    committer.close()

    admin = KafkaAdminClient(bootstrap_servers=args.bootstrap)
    deleted = admin.delete_group_offsets(args.group, [tp0])
    if deleted.get(tp0) is not NoError:
        fail(f"deleting partition 0's offset: {deleted}")
    left = {tp.partition: om.offset for tp, om in admin.list_group_offsets(args.group)[args.group].items()}
    if left != {1: 7}:
        fail(f"offsets left after the delete: {left}")

    member = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    member.subscribe([args.topic])
    deadline = time.time() + 60
    while not member.assignment():
        if time.time() > deadline:
            fail("the subscribed consumer got no assignment in 60 s")
        member.poll(timeout_ms=500)
    refused = admin.delete_group_offsets(args.group, [tp1])
    if refused.get(tp1) is not GroupSubscribedToTopicError:
        fail(f"deleting a subscribed topic's offset: {refused}")
    member.close(autocommit=False)
    left = {tp.partition: om.offset for tp, om in admin.list_group_offsets(args.group)[args.group].items()}
    if left != {1: 7}:
        fail(f"offsets left after the refused delete: {left}")

    beyond = TopicPartition(args.topic, 9)
    unknown = admin.delete_group_offsets(args.group, [beyond])
    if unknown.get(beyond) is not UnknownTopicOrPartitionError:
        fail(f"deleting the offset of a partition the topic lacks: {unknown}")

    try:
        admin.delete_group_offsets(args.group + "-none", [tp0])
        fail("a group that does not exist was found")
    except GroupIdNotFoundError:
        pass
    admin.close()
    print("ok: deleted, refused while subscribed, unknown group not found")


if __name__ == "__main__":
    main()
