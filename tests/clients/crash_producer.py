#!/usr/bin/env python3
"""Producer for crash tests: keeps writing numbered records and logs exactly what was acknowledged.

Produces keyless records whose value is an increasing zero-padded integer (%012d) to partition 0
of the topic, with acks=all and no retries, so a record whose request may have been written but
was not acknowledged is reported failed and never sent twice. Every successful delivery report
is appended to the --acked file as "<n> <offset>"; the file is flushed and fsynced at least every
100 ms and on exit. Broker restarts are ridden through: librdkafka reconnects by itself and
failed deliveries are only counted. The local queue is bounded; when it is full the producer
serves delivery reports until there is room.

Runs until SIGTERM (or SIGINT), then gives outstanding records a few seconds to be acknowledged,
writes the file, prints the counts and a last line "ok: ...", and exits 0. verify_log.py then
checks the partition against the --acked file.

    crash_producer.py --bootstrap HOST:PORT --topic NAME --acked FILE [--lib confluent]
                      [--rate RECORDS_PER_S]
"""

import argparse
import logging
import os
import signal
import sys
import time

PARTITION = 0
SYNC_INTERVAL_S = 0.1
FINAL_FLUSH_S = 5.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--acked", required=True, help="file to write '<n> <offset>' lines to (truncated first)")
    ap.add_argument("--lib", choices=["confluent"], default="confluent")
    ap.add_argument("--rate", type=float, default=0, help="records per second; 0 = as fast as the bounded queue allows")
    args = ap.parse_args()

    from confluent_kafka import Producer

    stop = False

    def on_signal(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    out = open(args.acked, "w")
    pending_lines = []
    counts = {"acked": 0, "failed": 0}
    failure_kinds = {}  # error name -> count

    def on_delivery(err, msg):
        if err is None:
            pending_lines.append(f"{int(msg.value())} {msg.offset()}\n")
            counts["acked"] += 1
        else:
            counts["failed"] += 1
            failure_kinds[err.name()] = failure_kinds.get(err.name(), 0) + 1

    # While the broker is down librdkafka reports every failed reconnect (every 50-500 ms);
    # keep stderr readable by letting each kind of message through once a second.
    last_logged = {}

    def first_this_second(kind):
        now = time.monotonic()
        if now - last_logged.get(kind, 0) < 1.0:
            return False
        last_logged[kind] = now
        return True

    log = logging.getLogger("librdkafka")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(lambda rec: first_this_second(("log", rec.getMessage().split(":")[-1])))
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False

    def on_error(err):
        if first_this_second(("error", err.name())):
            print(f"client error: {err}", file=sys.stderr, flush=True)

    producer = Producer(
        {
            "bootstrap.servers": args.bootstrap,
            "acks": "all",
            "enable.idempotence": False,
            # No retries: a request that may have been written but was not answered must be
            # reported as failed, never resent (a resend could duplicate it in the log).
            "message.send.max.retries": 0,
            "linger.ms": 5,
            # Records still unsent after this long (the broker is down) fail instead of waiting.
            "message.timeout.ms": 10000,
            "queue.buffering.max.messages": 20000,
            "reconnect.backoff.ms": 50,
            "reconnect.backoff.max.ms": 500,
            "error_cb": on_error,
            "logger": log,
        }
    )

    def sync():
        if pending_lines:
            out.writelines(pending_lines)
            pending_lines.clear()
        out.flush()
        os.fsync(out.fileno())

    n = 0
    started = time.monotonic()
    last_sync = started
    while not stop:
        now = time.monotonic()
        if now - last_sync >= SYNC_INTERVAL_S:
            sync()
            last_sync = now
        if args.rate > 0:
            wait = started + n / args.rate - now
            if wait > 0:
                producer.poll(min(wait, SYNC_INTERVAL_S))
                continue
        try:
            producer.produce(args.topic, value=b"%012d" % n, partition=PARTITION, on_delivery=on_delivery)
            n += 1
        except BufferError:  # local queue full: serve delivery reports until there is room
            producer.poll(0.05)
        producer.poll(0)

    left = producer.flush(FINAL_FLUSH_S)
    if left:
        producer.purge()  # the rest are reported failed (purged) by the next poll
        producer.poll(0.5)
    sync()
    out.close()
    unreported = n - counts["acked"] - counts["failed"]
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(failure_kinds.items())) or "none"
    print(f"produced {n}, acked {counts['acked']}, failed {counts['failed']} ({kinds}), unreported {unreported}")
    print(f"ok: crash producer stopped after {time.monotonic() - started:.1f}s; {counts['acked']} acked written to {args.acked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
