#!/usr/bin/env python3
"""Consumer groups across rebalances: member processes of one client library share a topic.

Orchestrator (the default mode):

  1. creates the topic (--partitions, default 6) with the library's admin client and produces
     --records numbered records (key and value = str(i), so the keys spread the records over
     the partitions; acks=all), recording every delivery report's (partition, offset);
  2. starts 3 member processes (this script with --member), each a consumer of the same
     library in the group (with --lib mixed: alternately confluent-kafka and kafka-python;
     session timeout 6 s, heartbeat every 1 s, no auto commit, reset to earliest, the eager
     assignors range/roundrobin). A member appends every record it consumes
     ("partition offset value") to its own output file, flushes and fsyncs it, and only then
     commits the consumed offsets synchronously (commit after processing). After every
     rebalance callback it atomically rewrites a state file with its current assignment;
  3. checks that the 3 members' assignments are disjoint and cover every partition;
  4. SIGKILLs one member and checks that within session timeout + 10 s the other two own
     every partition between them, disjointly;
  5. starts a new member and checks that it gets a non-empty share, the 3 live members again
     owning every partition disjointly;
  6. meanwhile produces another --records records in small bursts, so consumption goes on
     across the rebalances; then waits until every acknowledged record has been consumed;
  7. stops the members with SIGTERM: each closes its consumer (leaving the group) and must
     exit 0 within 20 s;
  8. checks, from the output files, that every acknowledged record was consumed at least once
     at the partition and offset its delivery report gave, and nothing else was consumed;
     records consumed more than once (allowed with commit after processing) are counted.

Throughout, the state files of the live members are sampled every 100 ms: with eager
rebalancing a member gives up its partitions (revoke callback) before it rejoins, so two live
members must never claim the same partition at the same time.

Exit status 0 and a last line "ok: ..." on success; "FAIL: ..." and status 1 otherwise. The
whole run is bounded by --deadline seconds (default 120); on any failure or timeout the
member processes are killed. Their logs are kept in --workdir (default: a fresh temporary
directory, removed on success) and their tails are printed on failure.

    group_consumers.py --lib confluent|kafka-python|mixed --bootstrap HOST:PORT --topic NAME
                       --group NAME [--partitions 6] [--records 6000] [--deadline 120]
                       [--workdir DIR]
"""

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from kafka_helpers import ListHandler, Fail, create_topic_confluent, create_topic_kafka_python

SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
N_MEMBERS = 3
# How long after the SIGKILL the survivors may take to own everything: the session timeout
# (the broker notices the silence) plus margin for the rebalance itself.
KILL_MARGIN_S = 10.0
STEP_TIMEOUT_S = 30.0  # any other single step
STOP_TIMEOUT_S = 20.0  # a member's clean exit after SIGTERM
SAMPLE_S = 0.1
BURST_PAUSE_S = 0.2
BURSTS = 100  # the second batch of records goes out in this many bursts (~20 s)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Orchestrator side: topic creation and producing, per library.
# --------------------------------------------------------------------------------------------


class Deliveries:
    """Delivery reports of the numbered records: i -> (partition, offset), thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ok = {}
        self.errors = []

    def delivered(self, i, partition, offset):
        with self.lock:
            self.ok[i] = (partition, offset)

    def failed(self, i, err):
        with self.lock:
            self.errors.append(f"record #{i}: {err}")


class ConfluentProducerSide:
    def __init__(self, bootstrap, topic):
        import confluent_kafka  # noqa: F401

        self.bootstrap, self.topic = bootstrap, topic
        self.client_errors = []
        self.log = logging.getLogger("librdkafka.orchestrator")
        self.log.propagate = False
        self.log.addHandler(ListHandler(self.client_errors))
        self.producer = None

    def _common(self):
        return {
            "bootstrap.servers": self.bootstrap,
            "error_cb": lambda err: self.client_errors.append(str(err)),
            "logger": self.log,
        }

    def create_topic(self, partitions):
        create_topic_confluent(self._common(), self.topic, partitions, STEP_TIMEOUT_S)

    def produce(self, numbers, deliveries):
        """Queues the records; delivery reports arrive during later produce()/flush() calls."""
        from confluent_kafka import Producer

        if self.producer is None:
            self.producer = Producer(
                {**self._common(), "acks": "all", "enable.idempotence": False, "linger.ms": 5}
            )

        def make_cb(i):
            def cb(err, msg):
                if err is not None:
                    deliveries.failed(i, err)
                elif int(msg.value()) != i:
                    deliveries.failed(i, f"delivery report for value {msg.value()!r}")
                else:
                    deliveries.delivered(i, msg.partition(), msg.offset())

            return cb

        for i in numbers:
            while True:
                try:
                    self.producer.produce(self.topic, key=str(i).encode(), value=str(i).encode(), on_delivery=make_cb(i))
                    break
                except BufferError:
                    self.producer.poll(0.1)
            self.producer.poll(0)

    def flush(self, timeout_s):
        left = self.producer.flush(timeout_s) if self.producer is not None else 0
        if left:
            raise Fail(f"{left} records still undelivered after {timeout_s}s (client errors: {self.client_errors[-5:]})")


class KafkaPythonProducerSide:
    def __init__(self, bootstrap, topic):
        import kafka  # noqa: F401

        self.bootstrap, self.topic = bootstrap, topic
        self.client_errors = []
        self.producer = None

    def create_topic(self, partitions):
        create_topic_kafka_python(self.bootstrap, self.topic, partitions, STEP_TIMEOUT_S)

    def produce(self, numbers, deliveries):
        from kafka import KafkaProducer

        if self.producer is None:
            self.producer = KafkaProducer(
                bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=False, linger_ms=5
            )
        for i in numbers:
            fut = self.producer.send(self.topic, key=str(i).encode(), value=str(i).encode())
            fut.add_callback(lambda md, i=i: deliveries.delivered(i, md.partition, md.offset))
            fut.add_errback(lambda e, i=i: deliveries.failed(i, repr(e)))

    def flush(self, timeout_s):
        if self.producer is None:
            return
        try:
            self.producer.flush(timeout=timeout_s)
        except Exception as e:
            raise Fail(f"producer flush failed after {timeout_s}s: {e!r}")

    def close(self):
        if self.producer is not None:
            self.producer.close(timeout=10)


# --------------------------------------------------------------------------------------------
# Member side: one consumer process.
# --------------------------------------------------------------------------------------------


class MemberIO:
    """The member's output file (commit after processing) and its state file."""

    def __init__(self, name, out_path, state_path, topic):
        self.name, self.state_path, self.topic = name, state_path, topic
        self.out = open(out_path, "a")
        self.assigned = []
        self.rebalances = 0
        self.consumed = 0
        self.commits_ok = 0
        self.commit_failures = Counter()
        # kafka-python runs rebalance callbacks on its IO thread, not the polling thread.
        self.state_lock = threading.Lock()
        self.write_state()

    def write_state(self):
        with self.state_lock:
            self._write_state()

    def _write_state(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(
                {
                    "pid": os.getpid(),
                    "assigned": sorted(self.assigned),
                    "rebalances": self.rebalances,
                    "consumed": self.consumed,
                    "time": time.time(),
                },
                f,
            )
        os.replace(tmp, self.state_path)

    def set_assignment(self, partitions, why):
        self.assigned = sorted(partitions)
        self.rebalances += 1
        self.write_state()
        print(f"{self.name}: {why}: now own {self.assigned}", file=sys.stderr, flush=True)

    def process(self, records):
        """records: [(partition, offset, value bytes)]; durable when this returns."""
        if not records:
            return
        self.out.write("".join(f"{p} {o} {int(v)}\n" for p, o, v in records))
        self.out.flush()
        os.fsync(self.out.fileno())
        self.consumed += len(records)

    def commit_failed(self, e):
        kind = type(e).__name__ + ": " + str(e)[:120]
        self.commit_failures[kind] += 1
        if self.commit_failures[kind] <= 3:
            print(f"{self.name}: commit failed (allowed during a rebalance): {kind}", file=sys.stderr, flush=True)

    def close(self):
        self.write_state()
        self.out.close()


def next_offsets(records):
    """{partition: last offset + 1} of a batch."""
    out = {}
    for p, o, _ in records:
        out[p] = max(out.get(p, -1), o + 1)
    return out


def run_confluent_member(args, io, stop):
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    client_errors = []
    lg = logging.getLogger("librdkafka")
    lg.addHandler(logging.StreamHandler(sys.stderr))
    lg.setLevel(logging.WARNING)
    lg.propagate = False

    def error_cb(err):
        client_errors.append(str(err))
        print(f"{io.name}: client error: {err}", file=sys.stderr, flush=True)

    c = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "client.id": io.name,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
            "partition.assignment.strategy": "range,roundrobin",
            "error_cb": error_cb,
            "logger": lg,
        }
    )

    # Rebalance callbacks are served inside consume(), between batches: everything returned
    # earlier has been written and committed when a revoke is seen.
    def on_assign(consumer, partitions):
        io.set_assignment([tp.partition for tp in partitions if tp.topic == args.topic], "assigned")

    def on_revoke(consumer, partitions):
        io.set_assignment([], f"revoked {sorted(tp.partition for tp in partitions)}")

    def on_lost(consumer, partitions):
        io.set_assignment([], f"LOST {sorted(tp.partition for tp in partitions)}")

    c.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost)
    try:
        while not stop.is_set():
            msgs = c.consume(num_messages=200, timeout=0.2)
            batch = []
            for m in msgs:
                if m.error():
                    print(f"{io.name}: consumer error: {m.error()}", file=sys.stderr, flush=True)
                    continue
                batch.append((m.partition(), m.offset(), m.value()))
            if not batch:
                continue
            io.process(batch)  # durable first ...
            owned = set(io.assigned)
            offsets = [TopicPartition(args.topic, p, o) for p, o in next_offsets(batch).items() if p in owned]
            if offsets:
                try:  # ... then committed
                    c.commit(offsets=offsets, asynchronous=False)
                    io.commits_ok += 1
                except KafkaException as e:
                    io.commit_failed(e)
            io.write_state()
    finally:
        print(f"{io.name}: closing the consumer", file=sys.stderr, flush=True)
        c.close()


def run_kafka_python_member(args, io, stop):
    from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            io.set_assignment([], f"revoked {sorted(tp.partition for tp in revoked)}")

        def on_partitions_assigned(self, assigned):
            io.set_assignment([tp.partition for tp in assigned if tp.topic == args.topic], "assigned")

        def on_partitions_lost(self, lost):
            io.set_assignment([], f"LOST {sorted(tp.partition for tp in lost)}")

    c = KafkaConsumer(
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        client_id=io.name,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
    )
    c.subscribe([args.topic], listener=Listener())
    try:
        while not stop.is_set():
            batch = []
            for tp, msgs in c.poll(timeout_ms=200, max_records=200).items():
                for m in msgs:
                    batch.append((tp.partition, m.offset, m.value))
            if not batch:
                continue
            io.process(batch)
            owned = set(io.assigned)
            offsets = {
                TopicPartition(args.topic, p): OffsetAndMetadata(o, "", -1)
                for p, o in next_offsets(batch).items()
                if p in owned
            }
            if offsets:
                try:
                    c.commit(offsets)
                    io.commits_ok += 1
                except Exception as e:  # CommitFailedError, RebalanceInProgressError, ...
                    io.commit_failed(e)
            io.write_state()
    finally:
        print(f"{io.name}: closing the consumer", file=sys.stderr, flush=True)
        c.close(autocommit=False)


def member_main(args):
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()

    # Never outlive the orchestrator, and never run forever.
    def watchdog():
        end = time.monotonic() + args.deadline + 30
        while not stop.is_set():
            if os.getppid() != parent or time.monotonic() > end:
                print(f"{args.name}: orchestrator gone or deadline passed; exiting", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.5)
        # Asked to stop: the close must not hang.
        time.sleep(STOP_TIMEOUT_S - 5)
        print(f"{args.name}: close did not finish; exiting", file=sys.stderr, flush=True)
        os._exit(4)

    threading.Thread(target=watchdog, daemon=True).start()
    io = MemberIO(args.name, args.out, args.state, args.topic)
    run = run_confluent_member if args.lib == "confluent" else run_kafka_python_member
    run(args, io, stop)
    io.close()
    failed = sum(io.commit_failures.values())
    print(
        f"{args.name}: closed cleanly: consumed {io.consumed}, {io.commits_ok} commits, "
        f"{failed} failed {dict(io.commit_failures)}, {io.rebalances} assignment changes",
        file=sys.stderr,
        flush=True,
    )
    return 0


# --------------------------------------------------------------------------------------------
# Orchestrator.
# --------------------------------------------------------------------------------------------


class Member:
    def __init__(self, args, workdir, index):
        self.name = f"member{index}"
        # --lib mixed: odd members use confluent-kafka, even ones kafka-python.
        self.lib = args.lib if args.lib != "mixed" else ("confluent" if index % 2 else "kafka-python")
        self.out = os.path.join(workdir, f"{self.name}.out")
        self.state = os.path.join(workdir, f"{self.name}.state")
        self.log_path = os.path.join(workdir, f"{self.name}.log")
        self.log_file = open(self.log_path, "w")
        self.killed = False
        cmd = [
            sys.executable, os.path.abspath(__file__), "--member",
            "--lib", self.lib, "--bootstrap", args.bootstrap, "--topic", args.topic,
            "--group", args.group, "--name", self.name, "--out", self.out,
            "--state", self.state, "--deadline", str(args.deadline),
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def assigned(self):
        """The partitions the member's state file claims, or None before it wrote one."""
        try:
            with open(self.state) as f:
                return set(json.load(f)["assigned"])
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=25):
        """The last lines of the member's log, indented (librdkafka's own log lines start with
        words like FAIL that are not this test's verdict)."""
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f"  | {line}" for line in f.readlines()[-n:])
        except OSError:
            return ""


class Orchestrator:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.members = []
        self.all_parts = set(range(args.partitions))
        self.overlaps = []  # (time, description) of live members claiming the same partition

    def start_member(self):
        m = Member(self.args, self.workdir, len(self.members) + 1)
        self.members.append(m)
        return m

    def live(self):
        return [m for m in self.members if not m.killed]

    def sample(self):
        """{member name: assigned set or None} for live members; records overlaps; fails on a
        member that exited on its own."""
        for m in self.live():
            if not m.alive():
                raise Fail(f"{m.name} exited unexpectedly with status {m.proc.returncode}; its log:\n{m.tail()}")
        claims = {m.name: m.assigned() for m in self.live()}
        owner = {}
        for name, parts in claims.items():
            for p in parts or ():
                if p in owner:
                    desc = f"partition {p} claimed by both {owner[p]} and {name} (claims {claims})"
                    if not self.overlaps or self.overlaps[-1][1] != desc:
                        self.overlaps.append((time.monotonic(), desc))
                else:
                    owner[p] = name
        return claims

    def wait_balanced(self, label, timeout_s, must_include=None):
        """Waits until the live members' claims are disjoint, cover every partition, and (if
        given) `must_include` claims something. Returns (claims, seconds waited)."""
        start = time.monotonic()
        claims = {}
        while time.monotonic() - start < timeout_s:
            claims = self.sample()
            if all(c is not None for c in claims.values()):
                sets = list(claims.values())
                union = set().union(*sets)
                disjoint = sum(len(s) for s in sets) == len(union)
                ok = disjoint and union == self.all_parts
                if must_include is not None and not claims[must_include.name]:
                    ok = False
                if ok:
                    return claims, time.monotonic() - start
            time.sleep(SAMPLE_S)
        shown = {k: (sorted(v) if v is not None else None) for k, v in claims.items()}
        raise Fail(
            f"{label}: after {timeout_s:.0f}s the live members' assignments are {shown}, expected disjoint "
            f"and covering partitions {sorted(self.all_parts)}"
            + (f" with {must_include.name} owning some" if must_include else "")
        )

    def sleep_sampling(self, seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(SAMPLE_S)

    def consumed(self):
        """Every (partition, offset, value) line of every member's output file, with counts."""
        seen = Counter()
        for m in self.members:
            try:
                with open(m.out) as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            lines = data.split("\n")
            torn = lines.pop()  # a SIGKILLed member may leave a torn last line
            if torn and not m.killed:
                raise Fail(f"{m.name}: unterminated last line {torn!r} in {m.out}")
            for line in lines:
                parts = line.split()
                if len(parts) != 3 or not all(x.isdigit() for x in parts):
                    raise Fail(f"{m.name}: malformed line {line!r} in {m.out}")
                seen[tuple(int(x) for x in parts)] += 1
        return seen

    def kill_all(self):
        for m in self.members:
            if m.proc.poll() is None:
                m.proc.kill()
        for m in self.members:
            try:
                m.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            m.log_file.close()


def expected_lines(deliveries):
    return {(p, o, i) for i, (p, o) in deliveries.ok.items()}


def orchestrate(args, orch, side):
    a = args
    deliveries = Deliveries()
    step = "create topic"
    log(f"creating {a.topic} ({a.partitions} partitions), producing {a.records} records")
    side.create_topic(a.partitions)
    step = "produce the first records"
    side.produce(range(a.records), deliveries)
    side.flush(STEP_TIMEOUT_S)
    if deliveries.errors:
        raise Fail(f"{step}: {len(deliveries.errors)} delivery failures, first: {deliveries.errors[:3]}")
    per_part = Counter(p for p, _ in deliveries.ok.values())
    if set(per_part) != orch.all_parts:
        raise Fail(f"{step}: the records landed only on partitions {sorted(per_part)}")

    step = f"start {N_MEMBERS} members"
    for _ in range(N_MEMBERS):
        orch.start_member()
    claims, took = orch.wait_balanced(step, STEP_TIMEOUT_S)
    log(f"{N_MEMBERS} members balanced after {took:.1f}s: { {k: sorted(v) for k, v in claims.items()} }")

    # More records in small bursts while the group changes.
    producer_error = []

    def produce_more():
        try:
            burst = max(1, a.records // BURSTS)
            for start in range(a.records, 2 * a.records, burst):
                side.produce(range(start, min(start + burst, 2 * a.records)), deliveries)
                time.sleep(BURST_PAUSE_S)
            side.flush(STEP_TIMEOUT_S)
        except Exception as e:
            producer_error.append(f"{type(e).__name__}: {e}")

    producer = threading.Thread(target=produce_more, daemon=True)
    producer.start()
    orch.sleep_sampling(2.0)  # let them consume a while first

    step = "SIGKILL one member"
    victim = orch.members[0]
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(timeout=5)
    victim.killed = True
    log(f"killed {victim.name} ({victim.lib}; it owned {sorted(claims[victim.name])})")
    limit = SESSION_TIMEOUT_MS / 1000 + KILL_MARGIN_S
    claims, took = orch.wait_balanced(f"after killing {victim.name}", limit)
    log(f"survivors own every partition {took:.1f}s after the kill: { {k: sorted(v) for k, v in claims.items()} }")

    orch.sleep_sampling(2.0)
    step = "start a new member"
    newcomer = orch.start_member()
    claims, took = orch.wait_balanced(f"after starting {newcomer.name}", STEP_TIMEOUT_S, must_include=newcomer)
    log(f"{newcomer.name} ({newcomer.lib}) got {sorted(claims[newcomer.name])} after {took:.1f}s: { {k: sorted(v) for k, v in claims.items()} }")

    step = "produce the second records"
    producer.join(timeout=STEP_TIMEOUT_S + 30)
    if producer.is_alive():
        raise Fail(f"{step}: the producer did not finish")
    if producer_error:
        raise Fail(f"{step}: {producer_error[0]}")
    if deliveries.errors:
        raise Fail(f"{step}: {len(deliveries.errors)} delivery failures, first: {deliveries.errors[:3]}")
    if len(deliveries.ok) != 2 * a.records:
        raise Fail(f"{step}: {len(deliveries.ok)} delivery reports for {2 * a.records} records")

    step = "consume everything"
    want = expected_lines(deliveries)
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while True:
        missing = want - set(orch.consumed())
        if not missing:
            break
        if time.monotonic() > deadline:
            by_part = Counter(p for p, _, _ in missing)
            raise Fail(
                f"{step}: {len(missing)} acknowledged records never consumed after {STEP_TIMEOUT_S:.0f}s "
                f"(per partition {dict(sorted(by_part.items()))}; first {sorted(missing)[:5]} as partition offset value)"
            )
        orch.sleep_sampling(0.5)
    orch.sleep_sampling(1.0)  # a little longer, to catch unexpected extras

    step = "stop the members with SIGTERM"
    live = orch.live()
    for m in live:
        m.proc.send_signal(signal.SIGTERM)
    for m in live:
        try:
            rc = m.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Fail(f"{step}: {m.name} still running {STOP_TIMEOUT_S:.0f}s after SIGTERM; its log:\n{m.tail()}")
        if rc != 0:
            raise Fail(f"{step}: {m.name} exited with status {rc}; its log:\n{m.tail()}")

    step = "check the output files"
    seen = orch.consumed()
    unexpected = set(seen) - want
    if unexpected:
        raise Fail(
            f"{step}: {len(unexpected)} consumed records do not match any delivery report, first "
            f"{sorted(unexpected)[:5]} (partition offset value)"
        )
    missing = want - set(seen)
    if missing:
        raise Fail(f"{step}: {len(missing)} acknowledged records never consumed, first {sorted(missing)[:5]}")
    if orch.overlaps:
        raise Fail(f"live members claimed a partition at the same time {len(orch.overlaps)} times, first: {orch.overlaps[0][1]}")
    duplicates = sum(n - 1 for n in seen.values())
    dup_records = sum(1 for n in seen.values() if n > 1)
    dup_parts = Counter()
    for (p, _, _), n in seen.items():
        dup_parts[p] += n - 1
    per_member = {}
    for m in orch.members:
        try:
            with open(m.out) as f:
                per_member[m.name] = sum(1 for _ in f)
        except FileNotFoundError:
            per_member[m.name] = 0
    for m in live:
        with open(m.log_path, errors="replace") as f:
            for line in f:
                if "closed cleanly" in line:
                    log(line.strip())
    return (
        f"{a.lib}: {len(want)} records on {a.partitions} partitions all consumed across 3 members, "
        f"a SIGKILL and a new member (assignments always disjoint and complete); "
        f"duplicates: {duplicates} extra deliveries of {dup_records} records "
        f"(per partition {dict(sorted((p, n) for p, n in dup_parts.items() if n))}); records consumed per member {per_member}"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--lib",
        choices=["confluent", "kafka-python", "mixed"],
        required=True,
        help="mixed: members alternate between the two libraries in one group; confluent produces",
    )
    ap.add_argument("--bootstrap", required=True, help="HOST:PORT")
    ap.add_argument("--topic", required=True, help="a topic that does not exist yet")
    ap.add_argument("--group", required=True)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--records", type=int, default=6000, help="produced before the members start, and again during the rebalances")
    ap.add_argument("--deadline", type=float, default=120.0, help="seconds for the whole run")
    ap.add_argument("--workdir", help="where member files go (default: a temporary directory, removed on success)")
    # Member mode (internal).
    ap.add_argument("--member", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--state", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.member:
        return member_main(args)
    if args.partitions < N_MEMBERS:
        ap.error(f"--partitions must be at least {N_MEMBERS} so that every member can get a share")

    workdir = args.workdir or tempfile.mkdtemp(prefix="group_consumers.")
    os.makedirs(workdir, exist_ok=True)
    side = (KafkaPythonProducerSide if args.lib == "kafka-python" else ConfluentProducerSide)(args.bootstrap, args.topic)
    orch = Orchestrator(args, workdir)

    def on_alarm(signum, frame):
        raise Fail(f"the whole run took longer than --deadline {args.deadline:.0f}s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.deadline))
    try:
        summary = orchestrate(args, orch, side)
    except Exception as e:
        signal.alarm(0)
        msg = str(e) if isinstance(e, Fail) else f"{type(e).__name__}: {e}"
        orch.kill_all()
        for m in orch.members:
            print(f"--- last lines of {m.name}'s log ({m.log_path}):\n{m.tail()}")
        for _, desc in orch.overlaps[:3]:
            print(f"  overlap seen: {desc}")
        errs = getattr(side, "client_errors", [])
        if errs:
            print(f"  orchestrator client errors seen: {errs[-10:]}")
        print(f"member files kept in {workdir}")
        print(f"FAIL: [{args.lib}] {msg}")
        sys.stdout.flush()
        os._exit(1)  # a client thread may still be blocked; do not wait for it
    signal.alarm(0)
    orch.kill_all()
    if hasattr(side, "close"):
        side.close()
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"ok: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
