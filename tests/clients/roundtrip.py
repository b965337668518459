#!/usr/bin/env python3
"""Produce/consume round trip against a Kafka-compatible broker, with a third-party client.

Creates a 4-partition topic with the library's admin client, produces 400 keyed records with
two headers and explicit timestamps (base + i*10 ms) to explicit partitions (i % 4) with
acks=all, and records every delivered (partition, offset). Then, with a consumer of the same
library using manual assignment (no consumer group), checks:

  a) from the beginning: every partition holds exactly its records, in produce order, at
     contiguous offsets from 0 that equal the delivery reports, with identical key, value,
     headers and CreateTime timestamp; the low/high watermarks are 0 and the record count;
  b) from the end: a consumer positioned at the end sees exactly the 5 records produced after
     it was positioned, and nothing older;
  c) from an explicit offset: partition 1 read from offset 37 starts exactly at 37;
  d) by timestamp: offsets_for_times answers the first offset whose timestamp is >= the
     target (probed before the first record, at record #200, just after it, and past the last
     record, which must find nothing); reading from the #200 answer gives exactly the
     expected records.

Exit status 0 and a last line "ok: ..." on success; "FAIL: ..." and status 1 otherwise;
"SKIP: ..." and status 2 when kafka-python lacks the codec module for --compression
(python-snappy, lz4, zstandard are optional dependencies of kafka-python).

    roundtrip.py --lib confluent|kafka-python --bootstrap HOST:PORT --topic NAME
                 [--compression none|gzip|snappy|lz4|zstd]
"""

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from kafka_helpers import ListHandler, Fail, create_topic_confluent, create_topic_kafka_python

N_RECORDS = 400
N_PARTITIONS = 4
N_TAIL = 5
TIMEOUT_S = 30.0
# After the expected records have arrived, keep polling this long to catch unexpected extras.
SETTLE_S = 1.0
FROM_OFFSET = (1, 37)  # (partition, offset) for check c
TS_RECORD = 200  # check d looks up the timestamp of this record


class Skip(Exception):
    """The test cannot run here (a client library lacks a codec); not a broker failure."""


@dataclass
class Rec:
    """A record as sent (offset filled from the delivery report) or as consumed."""

    partition: int
    key: bytes
    value: bytes
    headers: list  # [(str, bytes)]
    timestamp: int
    offset: int = -1
    i: int = -1  # produce sequence number, for messages


def make_record(i, base_ts):
    return Rec(
        partition=i % N_PARTITIONS,
        key=f"key-{i % 20}".encode(),
        value=f"value-{i}-".encode() + b"p" * (i % 97) + b"." * 64,
        headers=[("h1", str(i).encode()), ("h2", b"\x00\x01")],
        timestamp=base_ts + i * 10,
        i=i,
    )


def deadline_passed(deadline):
    return time.monotonic() > deadline


# --------------------------------------------------------------------------------------------
# Library adapters: the same small interface over confluent-kafka and kafka-python.
#
#   create_topic(partitions)             create via the admin client; wait until metadata agrees
#   produce(recs)                        acks=all; fill rec.offset from the delivery reports
#   consumer()                           a consumer object with:
#       assign(starts)                     starts: {partition: offset | "beginning" | "end"};
#                                          returns once every partition is positioned (for
#                                          "end": the end offset has been resolved)
#       position_of(p)                     the resolved next offset to fetch
#       poll(timeout_s) -> [Rec]
#       watermarks(p) -> (low, high)
#       offsets_for_times(ts) -> {p: offset or None}
#       close()
# --------------------------------------------------------------------------------------------


class ConfluentLib:
    name = "confluent"

    def __init__(self, bootstrap, topic, compression):
        import confluent_kafka  # noqa: F401  (imported here so --help works without it)

        self.bootstrap = bootstrap
        self.topic = topic
        self.compression = compression
        self.client_errors = []  # from error_cb and librdkafka's log, shown on failure
        self.log = logging.getLogger("librdkafka")
        self.log.propagate = False
        self.log.addHandler(ListHandler(self.client_errors))

    def _error_cb(self, err):
        self.client_errors.append(str(err))

    def _common(self):
        return {"bootstrap.servers": self.bootstrap, "error_cb": self._error_cb, "logger": self.log}

    def create_topic(self, partitions):
        create_topic_confluent(self._common(), self.topic, partitions, TIMEOUT_S)

    def producer(self):
        from confluent_kafka import Producer

        return Producer(
            {
                **self._common(),
                "acks": "all",
                "enable.idempotence": False,
                "compression.type": self.compression,
                "linger.ms": 5,
            }
        )

    def produce(self, recs):
        p = self.producer()
        errors = []

        def make_cb(rec):
            def cb(err, msg):
                if err is not None:
                    errors.append(f"record #{rec.i}: {err}")
                elif msg.partition() != rec.partition:
                    errors.append(f"record #{rec.i}: delivered to partition {msg.partition()}, sent to {rec.partition}")
                else:
                    rec.offset = msg.offset()

            return cb

        for rec in recs:
            p.produce(
                self.topic,
                value=rec.value,
                key=rec.key,
                partition=rec.partition,
                timestamp=rec.timestamp,
                headers=rec.headers,
                on_delivery=make_cb(rec),
            )
            p.poll(0)
        left = p.flush(TIMEOUT_S)
        if left:
            raise Fail(f"{left} records still undelivered after {TIMEOUT_S}s (client errors: {self.client_errors[-5:]})")
        if errors:
            raise Fail(f"{len(errors)} delivery failures, first: {errors[:3]}")

    def consumer(self):
        return _ConfluentConsumer(self)


class _ConfluentConsumer:
    def __init__(self, lib):
        from confluent_kafka import Consumer

        self.lib = lib
        self.topic = lib.topic
        self.fetch_state = {}  # partition -> (fetch_state, next_offset), from statistics
        self.pending = []  # records that arrived while assign() waited
        self.resolved = {}  # partition -> next offset when fetching started
        self.stats_count = 0
        self.c = Consumer(
            {
                **lib._common(),
                # Required by the configuration; assign() never uses the group coordinator.
                "group.id": "roundtrip-unused",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": False,
                "statistics.interval.ms": 100,
                "stats_cb": self._stats_cb,
            }
        )

    def _stats_cb(self, stats_json):
        self.stats_count += 1
        parts = json.loads(stats_json).get("topics", {}).get(self.topic, {}).get("partitions", {})
        for p, st in parts.items():
            if int(p) >= 0:
                self.fetch_state[int(p)] = (st["fetch_state"], st["next_offset"])

    def assign(self, starts):
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        special = {"beginning": OFFSET_BEGINNING, "end": OFFSET_END}
        self.fetch_state.clear()
        self.c.assign([TopicPartition(self.topic, p, special.get(o, o)) for p, o in starts.items()])
        # librdkafka resolves logical offsets asynchronously; wait until every partition's
        # fetcher is active (its next offset resolved) so that "end" means "end as of now".
        deadline = time.monotonic() + TIMEOUT_S
        while not all(self.fetch_state.get(p, ("",))[0] == "active" for p in starts):
            if deadline_passed(deadline):
                raise Fail(
                    f"consumer did not start fetching within {TIMEOUT_S}s: fetch states {self.fetch_state}, "
                    f"client errors {self.lib.client_errors[-5:]}"
                )
            self.pending.extend(self._poll_one(0.05))
        # The statistics snapshot that first shows "active" may predate the fetcher taking the
        # resolved offset; read next_offset from a later snapshot.
        seen = self.stats_count
        while self.stats_count < seen + 2:
            if deadline_passed(deadline):
                raise Fail("consumer statistics stopped arriving")
            self.pending.extend(self._poll_one(0.05))
        self.resolved = {p: self.fetch_state[p][1] for p in starts}

    def position_of(self, p):
        return self.resolved[p]

    def poll(self, timeout_s):
        if self.pending:
            out, self.pending = self.pending, []
            return out
        return self._poll_one(timeout_s)

    def _poll_one(self, timeout_s):
        from confluent_kafka import TIMESTAMP_CREATE_TIME

        msg = self.c.poll(timeout_s)
        if msg is None:
            return []
        if msg.error():
            raise Fail(f"consumer error: {msg.error()}")
        ts_type, ts = msg.timestamp()
        if ts_type != TIMESTAMP_CREATE_TIME:
            raise Fail(f"partition {msg.partition()} offset {msg.offset()}: timestamp type {ts_type}, expected CreateTime")
        return [
            Rec(
                partition=msg.partition(),
                key=msg.key(),
                value=msg.value(),
                headers=list(msg.headers() or []),
                timestamp=ts,
                offset=msg.offset(),
            )
        ]

    def watermarks(self, p):
        from confluent_kafka import TopicPartition

        return self.c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)

    def offsets_for_times(self, ts):
        from confluent_kafka import TopicPartition

        res = self.c.offsets_for_times([TopicPartition(self.topic, p, ts) for p in range(N_PARTITIONS)], timeout=10)
        out = {}
        for tp in res:
            if tp.error is not None:
                raise Fail(f"offsets_for_times({ts}) partition {tp.partition}: {tp.error}")
            out[tp.partition] = tp.offset if tp.offset >= 0 else None
        return out

    def close(self):
        self.c.close()


class KafkaPythonLib:
    name = "kafka-python"

    def __init__(self, bootstrap, topic, compression):
        import kafka  # noqa: F401

        self.bootstrap = bootstrap
        self.topic = topic
        self.compression = None if compression == "none" else compression

    def create_topic(self, partitions):
        create_topic_kafka_python(self.bootstrap, self.topic, partitions, TIMEOUT_S)

    def produce(self, recs):
        from kafka import KafkaProducer

        try:
            p = KafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                compression_type=self.compression,
                linger_ms=5,
            )
        except RuntimeError as e:  # "Libraries for lz4 compression codec not found"
            raise Skip(f"kafka-python cannot use compression {self.compression!r} here ({e}); "
                       "it needs the python module python-snappy, lz4 or zstandard")
        futures = []
        for rec in recs:
            futures.append(
                (
                    rec,
                    p.send(
                        self.topic,
                        value=rec.value,
                        key=rec.key,
                        headers=rec.headers,
                        partition=rec.partition,
                        timestamp_ms=rec.timestamp,
                    ),
                )
            )
        p.flush(timeout=TIMEOUT_S)
        errors = []
        for rec, fut in futures:
            try:
                md = fut.get(timeout=TIMEOUT_S)
            except Exception as e:
                errors.append(f"record #{rec.i}: {e!r}")
                continue
            if md.partition != rec.partition:
                errors.append(f"record #{rec.i}: delivered to partition {md.partition}, sent to {rec.partition}")
            rec.offset = md.offset
        p.close(timeout=10)
        if errors:
            raise Fail(f"{len(errors)} delivery failures, first: {errors[:3]}")

    def consumer(self):
        return _KafkaPythonConsumer(self)


class _KafkaPythonConsumer:
    def __init__(self, lib):
        from kafka import KafkaConsumer

        self.topic = lib.topic
        self.c = KafkaConsumer(
            bootstrap_servers=lib.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="none",
        )

    def _tp(self, p):
        from kafka import TopicPartition

        return TopicPartition(self.topic, p)

    def assign(self, starts):
        self.c.assign([self._tp(p) for p in starts])
        for p, o in starts.items():
            if o == "beginning":
                self.c.seek_to_beginning(self._tp(p))
            elif o == "end":
                self.c.seek_to_end(self._tp(p))
            else:
                self.c.seek(self._tp(p), o)
        for p in starts:  # position() blocks until a logical offset is resolved
            self.c.position(self._tp(p), timeout_ms=TIMEOUT_S * 1000)

    def position_of(self, p):
        return self.c.position(self._tp(p))

    def poll(self, timeout_s):
        out = []
        for tp, msgs in self.c.poll(timeout_ms=int(timeout_s * 1000)).items():
            for m in msgs:
                if m.timestamp_type != 0:
                    raise Fail(f"partition {tp.partition} offset {m.offset}: timestamp type {m.timestamp_type}, expected 0 (CreateTime)")
                out.append(
                    Rec(
                        partition=tp.partition,
                        key=m.key,
                        value=m.value,
                        headers=[(k, v) for k, v in (m.headers or [])],
                        timestamp=m.timestamp,
                        offset=m.offset,
                    )
                )
        return out

    def watermarks(self, p):
        tp = self._tp(p)
        return (
            self.c.beginning_offsets([tp], timeout_ms=10000)[tp],
            self.c.end_offsets([tp], timeout_ms=10000)[tp],
        )

    def offsets_for_times(self, ts):
        res = self.c.offsets_for_times({self._tp(p): ts for p in range(N_PARTITIONS)}, timeout_ms=10000)
        return {tp.partition: (None if ot is None else ot.offset) for tp, ot in res.items()}

    def close(self):
        self.c.close()


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def by_partition(recs):
    out = {p: [] for p in range(N_PARTITIONS)}
    for r in recs:
        out[r.partition].append(r)
    for p in out:
        out[p].sort(key=lambda r: r.offset)
    return out


def consume(consumer, starts, expected):
    """Assign `starts`, read until every partition has delivered its expected records, keep
    polling SETTLE_S longer, and compare what arrived with `expected` ({partition: [Rec]})."""
    consumer.assign(starts)
    return read_and_compare(consumer, expected, label=f"from {starts}")


def read_and_compare(consumer, expected, label):
    got = {p: [] for p in expected}
    want = {p: len(recs) for p, recs in expected.items()}
    deadline = time.monotonic() + TIMEOUT_S
    while any(len(got[p]) < want[p] for p in want):
        if deadline_passed(deadline):
            counts = {p: f"{len(got[p])}/{want[p]}" for p in want}
            raise Fail(f"{label}: timed out after {TIMEOUT_S}s, records received per partition {counts}")
        for r in consumer.poll(0.2):
            got.setdefault(r.partition, []).append(r)
    settle = time.monotonic() + SETTLE_S
    while time.monotonic() < settle:
        for r in consumer.poll(0.1):
            got.setdefault(r.partition, []).append(r)
    for p in sorted(got):
        compare(expected.get(p, []), got[p], f"{label}, partition {p}")


def compare(expected, got, label):
    for idx, (e, g) in enumerate(zip(expected, got)):
        diffs = []
        for field in ("partition", "offset", "key", "value", "headers", "timestamp"):
            ev, gv = getattr(e, field), getattr(g, field)
            if ev != gv:
                diffs.append(f"{field}: expected {ev!r}, got {gv!r}")
        if diffs:
            raise Fail(f"{label}: record {idx} (sent as #{e.i}) differs: " + "; ".join(diffs))
    if len(got) != len(expected):
        if len(got) > len(expected):
            extra = got[len(expected)]
            raise Fail(f"{label}: {len(got)} records, expected {len(expected)}; first extra at offset {extra.offset} value {extra.value[:40]!r}")
        raise Fail(f"{label}: {len(got)} records, expected {len(expected)}")


def check_delivery_reports(sent):
    for p, recs in by_partition(sent).items():
        in_produce_order = sorted(recs, key=lambda r: r.i)
        offsets = [r.offset for r in in_produce_order]
        if offsets != list(range(len(recs))):
            raise Fail(f"partition {p}: delivery-report offsets in produce order are {offsets[:10]}..., expected 0..{len(recs) - 1} contiguous")


def check_from_beginning(lib, sent):
    expected = by_partition(sent)
    c = lib.consumer()
    try:
        for p in range(N_PARTITIONS):
            wm = tuple(c.watermarks(p))
            if wm != (0, len(expected[p])):
                raise Fail(f"partition {p}: watermarks {wm}, expected (0, {len(expected[p])})")
        consume(c, {p: "beginning" for p in range(N_PARTITIONS)}, expected)
    finally:
        c.close()


def check_from_end(lib, sent, base_ts):
    before = by_partition(sent)
    c = lib.consumer()
    try:
        c.assign({p: "end" for p in range(N_PARTITIONS)})
        for p in range(N_PARTITIONS):
            pos = c.position_of(p)
            if pos != len(before[p]):
                raise Fail(f"partition {p}: end offset resolved to {pos}, expected {len(before[p])}")
        tail = [make_record(i, base_ts) for i in range(N_RECORDS, N_RECORDS + N_TAIL)]
        lib.produce(tail)
        sent.extend(tail)
        read_and_compare(c, by_partition(tail), label="from the end")
    finally:
        c.close()


def check_from_offset(lib, sent):
    p, off = FROM_OFFSET
    expected = by_partition(sent)[p][off:]
    if not expected or expected[0].offset != off:
        raise Fail(f"test setup: partition {p} has no record at offset {off}")
    c = lib.consumer()
    try:
        consume(c, {p: off}, {p: expected})
    finally:
        c.close()


def expected_offset_for_time(recs, ts):
    hits = [r.offset for r in recs if r.timestamp >= ts]
    return min(hits) if hits else None


def check_by_timestamp(lib, sent):
    parts = by_partition(sent)
    ts200 = next(r.timestamp for r in sent if r.i == TS_RECORD)
    last_ts = max(r.timestamp for r in sent)
    first_ts = min(r.timestamp for r in sent)
    c = lib.consumer()
    try:
        answer200 = None
        for label, ts in (
            ("before the first record", first_ts - 1000),
            (f"of record #{TS_RECORD}", ts200),
            (f"just after record #{TS_RECORD}", ts200 + 1),
            ("past the last record", last_ts + 1000),
        ):
            got = c.offsets_for_times(ts)
            want = {p: expected_offset_for_time(parts[p], ts) for p in range(N_PARTITIONS)}
            if got != want:
                raise Fail(f"offsets_for_times(timestamp {label} = {ts}): got {got}, expected {want} (None = no such record)")
            if ts == ts200:
                answer200 = got
        expected = {p: [r for r in parts[p] if r.offset >= answer200[p]] for p in range(N_PARTITIONS)}
        consume(c, dict(answer200), expected)
    finally:
        c.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", choices=["confluent", "kafka-python"], required=True)
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", required=True, help="a topic that does not exist yet")
    ap.add_argument("--compression", choices=["none", "gzip", "snappy", "lz4", "zstd"], default="none")
    args = ap.parse_args()

    lib_cls = ConfluentLib if args.lib == "confluent" else KafkaPythonLib
    lib = lib_cls(args.bootstrap, args.topic, args.compression)
    # Whole seconds ago, so timestamps are clearly CreateTime values from this run.
    base_ts = (int(time.time()) - 60) * 1000
    step = "setup"
    try:
        step = "create topic"
        lib.create_topic(N_PARTITIONS)
        step = "produce"
        sent = [make_record(i, base_ts) for i in range(N_RECORDS)]
        lib.produce(sent)
        check_delivery_reports(sent)
        step = "a) from the beginning"
        check_from_beginning(lib, sent)
        step = "b) from the end"
        check_from_end(lib, sent, base_ts)
        step = "c) from an offset"
        check_from_offset(lib, sent)
        step = "d) by timestamp"
        check_by_timestamp(lib, sent)
    except Skip as e:
        print(f"SKIP: [{args.lib}, compression={args.compression}] {e}")
        return 2
    except Exception as e:  # Fail, or a client library exception
        msg = str(e) if isinstance(e, Fail) else f"{type(e).__name__}: {e}"
        print(f"FAIL: [{args.lib}, compression={args.compression}] {step}: {msg}")
        errs = getattr(lib, "client_errors", [])
        if errs:
            print(f"  client errors seen: {errs[-10:]}")
        return 1
    print(
        f"ok: {args.lib} compression={args.compression}: {N_RECORDS}+{N_TAIL} records on {N_PARTITIONS} partitions "
        f"read back identical from beginning, end, offset {FROM_OFFSET[1]} and timestamp"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
