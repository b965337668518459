#!/usr/bin/env python3
"""Committed offsets survive a broker restart: a consumer group resumes where it committed.

Two phases, run with the broker restarted in between (by the caller):

  --phase produce-and-consume-half
      creates the topic (3 partitions) with confluent-kafka's admin client, produces 300
      numbered records (key and value = str(i), acks=all) and records their delivery reports;
      then a confluent-kafka consumer in --group (subscribe, no auto commit, reset to earliest)
      consumes exactly 150 of them, one at a time, about 50 from each partition (so that every
      partition's committed offset is in its middle; a partition that has had its share is
      paused and its further records are left unprocessed), committing each record's offset + 1
      synchronously after processing it, and closes cleanly (leaving the group). Prints one
      line of JSON (the consumed numbers, the committed offsets per partition and the
      delivery reports) and then "ok: ...". Save the output for the second phase.

  --phase resume --previous FILE
      FILE is the first phase's output. After the restart, checks that
        - the topic still holds the 300 records (watermarks 0..end per partition as delivered);
        - OffsetFetch for the group answers exactly the offsets the first phase committed;
      then a new consumer in the same group (subscribe, reset to earliest, commit after
      processing) consumes until every record the first phase did not consume has arrived and
      nothing more arrives for 5 s, and checks that
        - phase 2 consumed no record below the committed offset of its partition, i.e. no
          record the first phase had committed (no rewind), each at its delivered offset;
        - phase 1 and phase 2 together consumed all 300 records (nothing skipped) and phase 2
          saw none twice.

Exit status 0 and a last line "ok: ..." on success; "FAIL: ..." and status 1 otherwise. Every
wait is bounded (60 s at most per step).

    group_resume.py --bootstrap HOST:PORT --topic NAME --group NAME
                    --phase produce-and-consume-half|resume [--previous FILE]
"""

import argparse
import json
import logging
import sys
import time
from kafka_helpers import ListHandler, Fail, create_topic_confluent

N_RECORDS = 300
N_PARTITIONS = 3
FIRST_HALF = 150
SESSION_TIMEOUT_MS = 6000
STEP_TIMEOUT_S = 60.0
IDLE_S = 5.0


CLIENT_ERRORS = []
LOG = logging.getLogger("librdkafka")
LOG.propagate = False
LOG.addHandler(ListHandler(CLIENT_ERRORS))


def common(bootstrap):
    return {
        "bootstrap.servers": bootstrap,
        "error_cb": lambda err: CLIENT_ERRORS.append(str(err)),
        "logger": LOG,
    }


def note(msg):
    print(msg, file=sys.stderr, flush=True)


def group_consumer(args):
    from confluent_kafka import Consumer

    return Consumer(
        {
            **common(args.bootstrap),
            "group.id": args.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 1000,
            "enable.partition.eof": False,
        }
    )


def create_topic(args):
    create_topic_confluent(common(args.bootstrap), args.topic, N_PARTITIONS, STEP_TIMEOUT_S)


def produce(args):
    """Returns {number: (partition, offset)} from the delivery reports."""
    from confluent_kafka import Producer

    p = Producer({**common(args.bootstrap), "acks": "all", "enable.idempotence": False, "linger.ms": 5})
    delivered, errors = {}, []

    def cb(err, msg):
        if err is not None:
            errors.append(f"{msg.value()!r}: {err}")
        else:
            delivered[int(msg.value())] = (msg.partition(), msg.offset())

    for i in range(N_RECORDS):
        p.produce(args.topic, key=str(i).encode(), value=str(i).encode(), on_delivery=cb)
        p.poll(0)
    left = p.flush(STEP_TIMEOUT_S)
    if left or errors or len(delivered) != N_RECORDS:
        raise Fail(f"produce: {left} undelivered, {len(errors)} failed (first {errors[:3]}), {len(delivered)} acknowledged")
    return delivered


def commit_one(consumer, topic, partition, next_offset):
    from confluent_kafka import KafkaException, TopicPartition

    try:
        res = consumer.commit(offsets=[TopicPartition(topic, partition, next_offset)], asynchronous=False)
    except KafkaException as e:
        raise Fail(f"synchronous commit of partition {partition} offset {next_offset} failed: {e}")
    for tp in res or []:
        if tp.error is not None:
            raise Fail(f"commit of partition {tp.partition} offset {next_offset}: {tp.error}")


def quotas(counts):
    """How many records phase 1 takes from each partition: FIRST_HALF in all, as evenly as
    the partitions allow, so that every partition gets a committed offset in its middle."""
    quota = {p: 0 for p in counts}
    for _ in range(FIRST_HALF):
        open_ = [p for p in counts if quota[p] < counts[p] - 1] or [p for p in counts if quota[p] < counts[p]]
        quota[min(open_, key=lambda p: (quota[p], p))] += 1
    return quota


def phase1(args):
    from confluent_kafka import TopicPartition

    create_topic(args)
    delivered = produce(args)
    note(f"produced {N_RECORDS} records; per partition " + str({p: sum(1 for q, _ in delivered.values() if q == p) for p in range(N_PARTITIONS)}))
    quota = quotas({p: sum(1 for q, _ in delivered.values() if q == p) for p in range(N_PARTITIONS)})
    note(f"consuming per partition {quota}")
    c = group_consumer(args)
    c.subscribe([args.topic])
    consumed, committed = [], {}
    taken = {p: 0 for p in range(N_PARTITIONS)}
    deadline = time.monotonic() + STEP_TIMEOUT_S
    try:
        while len(consumed) < FIRST_HALF:
            if time.monotonic() > deadline:
                raise Fail(f"consumed only {len(consumed)} of {FIRST_HALF} records in {STEP_TIMEOUT_S:.0f}s ({taken})")
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise Fail(f"consumer error: {m.error()}")
            if taken[m.partition()] >= quota[m.partition()]:
                # Left unprocessed and uncommitted, for phase 2; stop fetching the partition.
                c.pause([TopicPartition(args.topic, m.partition())])
                continue
            i = int(m.value())
            if delivered.get(i) != (m.partition(), m.offset()):
                raise Fail(f"record {i} consumed at partition {m.partition()} offset {m.offset()}, delivered at {delivered.get(i)}")
            taken[m.partition()] += 1
            consumed.append(i)  # processed ...
            commit_one(c, args.topic, m.partition(), m.offset() + 1)  # ... then committed
            committed[m.partition()] = m.offset() + 1
    finally:
        c.close()
    if len(set(consumed)) != len(consumed):
        raise Fail(f"phase 1 consumed some record twice: {len(consumed)} records, {len(set(consumed))} distinct")
    print(
        json.dumps(
            {
                "topic": args.topic,
                "group": args.group,
                "consumed": consumed,
                "committed": {str(p): o for p, o in sorted(committed.items())},
                "delivered": {str(i): list(po) for i, po in sorted(delivered.items())},
            }
        )
    )
    return f"phase 1: produced {N_RECORDS}, consumed and committed {len(consumed)}; committed offsets {dict(sorted(committed.items()))}"


def load_previous(path):
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                prev = json.loads(line)
                return (
                    prev,
                    {int(p): o for p, o in prev["committed"].items()},
                    {int(i): tuple(po) for i, po in prev["delivered"].items()},
                )
    raise Fail(f"{path}: no JSON line from phase 1")


def phase2(args):
    from confluent_kafka import TopicPartition

    if not args.previous:
        raise Fail("--phase resume needs --previous FILE (phase 1's output)")
    prev, committed, delivered = load_previous(args.previous)
    if prev["topic"] != args.topic or prev["group"] != args.group:
        raise Fail(f"--previous is for topic {prev['topic']!r} group {prev['group']!r}")
    phase1_set = set(prev["consumed"])
    c = group_consumer(args)
    try:
        # The data survived the restart.
        ends = {p: 1 + max((o for q, o in delivered.values() if q == p), default=-1) for p in range(N_PARTITIONS)}
        for p in range(N_PARTITIONS):
            wm = tuple(c.get_watermark_offsets(TopicPartition(args.topic, p), timeout=STEP_TIMEOUT_S, cached=False))
            if wm != (0, ends[p]):
                raise Fail(f"after the restart partition {p} has watermarks {wm}, expected (0, {ends[p]})")
        # The committed offsets survived the restart (OffsetFetch).
        got = c.committed([TopicPartition(args.topic, p) for p in range(N_PARTITIONS)], timeout=STEP_TIMEOUT_S)
        fetched = {}
        for tp in got:
            if tp.error is not None:
                raise Fail(f"OffsetFetch partition {tp.partition}: {tp.error}")
            if tp.offset >= 0:
                fetched[tp.partition] = tp.offset
        if fetched != committed:
            raise Fail(f"after the restart OffsetFetch answers committed offsets {fetched}, phase 1 committed {committed} (partition: next offset)")
        note(f"committed offsets after the restart: {fetched}")

        remaining = set(range(N_RECORDS)) - phase1_set
        c.subscribe([args.topic])
        seen = []
        below = []  # records below their partition's committed offset
        deadline = time.monotonic() + STEP_TIMEOUT_S
        last_new = time.monotonic()
        while True:
            now = time.monotonic()
            done = remaining <= set(seen)
            if done and now - last_new >= IDLE_S:
                break
            if now > deadline:
                missing = sorted(remaining - set(seen))
                raise Fail(
                    f"phase 2 consumed {len(set(seen) & remaining)} of the {len(remaining)} records phase 1 left "
                    f"in {STEP_TIMEOUT_S:.0f}s; first missing {[(i, delivered[i]) for i in missing[:5]]} (number, (partition, offset))"
                )
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                raise Fail(f"consumer error: {m.error()}")
            i = int(m.value())
            if delivered.get(i) != (m.partition(), m.offset()):
                raise Fail(f"record {i} consumed at partition {m.partition()} offset {m.offset()}, delivered at {delivered.get(i)}")
            if m.offset() < committed.get(m.partition(), 0):
                below.append((i, m.partition(), m.offset()))
            seen.append(i)
            last_new = time.monotonic()
            commit_one(c, args.topic, m.partition(), m.offset() + 1)
    finally:
        c.close()
    if below:
        raise Fail(
            f"phase 2 re-consumed {len(below)} records phase 1 had committed (offset below the committed one), "
            f"first {below[:5]} (number, partition, offset); committed offsets were {committed}"
        )
    again = phase1_set & set(seen)
    if again:
        raise Fail(f"phase 2 consumed {len(again)} records phase 1 had consumed and committed, first {sorted(again)[:5]}")
    if len(seen) != len(set(seen)):
        raise Fail(f"phase 2 consumed {len(seen)} records but only {len(set(seen))} distinct")
    union = phase1_set | set(seen)
    if union != set(range(N_RECORDS)):
        raise Fail(f"phase 1 and 2 together consumed {len(union)} of {N_RECORDS} records; missing {sorted(set(range(N_RECORDS)) - union)[:10]}")
    return (
        f"phase 2: resumed from the committed offsets {committed} after the restart, consumed the remaining "
        f"{len(seen)} records once each; phase 1 + phase 2 = all {N_RECORDS}, no committed record re-consumed"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--phase", required=True, choices=["produce-and-consume-half", "resume"])
    ap.add_argument("--previous", help="phase 1's output (for --phase resume)")
    args = ap.parse_args()
    try:
        summary = phase1(args) if args.phase == "produce-and-consume-half" else phase2(args)
    except Exception as e:
        msg = str(e) if isinstance(e, Fail) else f"{type(e).__name__}: {e}"
        if CLIENT_ERRORS:
            print(f"  client errors seen: {CLIENT_ERRORS[-10:]}")
        print(f"FAIL: [{args.phase}] {msg}")
        return 1
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
