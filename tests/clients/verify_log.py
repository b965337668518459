#!/usr/bin/env python3
"""Checks a partition written by crash_producer.py against its file of acknowledged records.

Reads the whole partition, from the low to the high watermark, with confluent-kafka (manual
assignment, no consumer group), and checks that:

  - offsets are contiguous from the low watermark to the high watermark;
  - every record is intact: keyless, and its value is a zero-padded integer (nothing corrupt);
  - every number acknowledged in the --acked file ("<n> <offset>" lines) is in the log exactly
    once, at the offset its delivery report gave;
  - the acknowledged numbers appear in increasing order.

Numbers that were not acknowledged may or may not be in the log; how many are is reported.
Exit status 0 with a last line "ok: N acked records found once, in order; M unacked also
present", or "FAIL: ..." and status 1.

    verify_log.py --bootstrap HOST:PORT --topic NAME --acked FILE [--partition 0]
"""

import argparse
import logging
import sys
import time
from collections import Counter
from kafka_helpers import Fail

# Give up when no record has arrived for this long (the whole read may take longer).
STALL_TIMEOUT_S = 30.0
SHOW = 5  # how many examples to print per kind of problem


def read_acked(path):
    """[(n, offset)] in file order. A torn last line (writer killed mid-line) is ignored."""
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn = lines.pop()  # b"" when the file ends with a newline
    acked = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise Fail(f"{path}:{lineno}: malformed line {line!r}")
        acked.append((int(parts[0]), int(parts[1])))
    if torn:
        print(f"note: ignoring unterminated last line of {path}: {torn!r}")
    return acked


def read_partition(bootstrap, topic, partition):
    """Returns (low, high, [(offset, key, value)]) for the whole partition."""
    from confluent_kafka import Consumer, TopicPartition

    log = logging.getLogger("librdkafka")
    log.addHandler(logging.StreamHandler(sys.stderr))
    log.setLevel(logging.WARNING)
    log.propagate = False
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # Required by the configuration; assign() never uses the group coordinator.
            "group.id": "verify-log-unused",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "logger": log,
        }
    )
    try:
        tp = TopicPartition(topic, partition)
        low, high = c.get_watermark_offsets(tp, timeout=STALL_TIMEOUT_S, cached=False)
        records = []
        if high > low:
            c.assign([TopicPartition(topic, partition, low)])
            last_progress = time.monotonic()
            next_offset = low
            while next_offset < high:
                msgs = c.consume(num_messages=10000, timeout=0.5)
                if not msgs and time.monotonic() - last_progress > STALL_TIMEOUT_S:
                    raise Fail(
                        f"read stalled at offset {next_offset} of [{low}, {high}) for {STALL_TIMEOUT_S}s"
                    )
                for m in msgs:
                    if m.error():
                        raise Fail(f"consumer error at offset {next_offset}: {m.error()}")
                    records.append((m.offset(), m.key(), m.value()))
                    next_offset = m.offset() + 1
                    last_progress = time.monotonic()
        return low, high, records
    finally:
        c.close()


def verify(acked, low, high, records):
    """Returns (problems, unacked_present, info_lines)."""
    problems = []
    info = []

    def problem(kind, examples):
        if examples:
            problems.append(f"{kind}: {len(examples)}, e.g. {examples[:SHOW]}")

    # The acked file itself must be consistent: one report per number and per offset.
    problem("numbers acknowledged twice in the acked file", [n for n, c in Counter(n for n, _ in acked).items() if c > 1])
    problem("offsets acknowledged twice in the acked file", [o for o, c in Counter(o for _, o in acked).items() if c > 1])

    # Offsets contiguous over [low, high).
    gaps = []
    expect = low
    for off, _, _ in records:
        if off != expect:
            gaps.append((expect, off))
        expect = off + 1
    if expect != high:
        gaps.append(("end", expect, "high watermark", high))
    problem("offset gaps or jumps (expected, got)", gaps)

    # Every record parses.
    at_offset = {}  # offset -> n
    corrupt = []
    for off, key, value in records:
        if key is not None or value is None or len(value) != 12 or not value.isdigit():
            corrupt.append((off, key, value[:40] if value else value))
        else:
            at_offset[off] = int(value)
    problem("records that do not parse (offset, key, value)", corrupt)

    # Each acknowledged number once, at its reported offset.
    occurrences = Counter(at_offset.values())
    wrong_place = []
    missing = []
    duplicated = []
    for n, off in acked:
        if occurrences[n] == 0:
            missing.append((n, off))
        elif at_offset.get(off) != n:
            wrong_place.append((n, off, "found at", [o for o, v in at_offset.items() if v == n][:3]))
        if occurrences[n] > 1:
            duplicated.append((n, occurrences[n]))
    problem("acknowledged records missing from the log (n, reported offset)", missing)
    problem("acknowledged records not at their reported offset", wrong_place)
    problem("acknowledged records present more than once (n, count)", duplicated)

    # Acknowledged numbers in increasing order along the log.
    acked_set = {n for n, _ in acked}
    out_of_order = []
    prev = None
    for off in sorted(at_offset):
        n = at_offset[off]
        if n in acked_set:
            if prev is not None and n <= prev[1]:
                out_of_order.append((prev, (off, n)))
            prev = (off, n)
    problem("acknowledged numbers out of order ((offset, n) then (offset, n))", out_of_order)

    unacked = [n for n in occurrences if n not in acked_set]
    unacked_dups = [(n, occurrences[n]) for n in unacked if occurrences[n] > 1]
    if unacked_dups:
        info.append(f"note: {len(unacked_dups)} unacknowledged numbers appear more than once, e.g. {unacked_dups[:SHOW]}")
    return problems, len(unacked), info


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--acked", required=True, help="the file crash_producer.py wrote")
    ap.add_argument("--partition", type=int, default=0)
    args = ap.parse_args()

    try:
        acked = read_acked(args.acked)
        low, high, records = read_partition(args.bootstrap, args.topic, args.partition)
        print(f"partition {args.topic}[{args.partition}]: offsets [{low}, {high}), {len(records)} records read; {len(acked)} acknowledged in {args.acked}")
        problems, unacked_present, info = verify(acked, low, high, records)
    except Fail as e:
        print(f"FAIL: {e}")
        return 1
    for line in info:
        print(line)
    if problems:
        for p in problems:
            print(f"  {p}")
        print(f"FAIL: {len(problems)} kinds of problem in {args.topic}[{args.partition}]: " + "; ".join(p.split(':')[0] for p in problems))
        return 1
    print(f"ok: {len(acked)} acked records found once, in order; {unacked_present} unacked also present")
    return 0


if __name__ == "__main__":
    sys.exit(main())
