#!/usr/bin/env python3
"""Disk baseline for the broker's acknowledgement latency: appends to one file at RATE MB/s in
64 KiB writes, fdatasyncs as soon as the previous fdatasync ended (group commit, as the broker
does), and reports how long a write waited until an fdatasync covering it had finished. With
`direct`, the writes bypass the page cache (O_DIRECT), as the broker's do by default.
Usage: benches/sync_latency.py RATE_MB SECONDS PATH [direct]   (PATH on the broker's file system)"""
import mmap
import os
import sys
import time


def main():
    rate, secs, path = float(sys.argv[1]) * 1e6, float(sys.argv[2]), sys.argv[3]
    direct = sys.argv[4:] == ["direct"]
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags, 0o644)
    # An anonymous mapping is page-aligned, as O_DIRECT wants its buffers.
    chunk = mmap.mmap(-1, 64 << 10)
    chunk.write(os.urandom(64 << 10))
    waits, syncs, pending = [], [], []
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < secs:
        due = (time.monotonic() - start) * rate
        while sent < due:
            began = time.monotonic()
            os.write(fd, chunk)
            sent += len(chunk)
            pending.append(began)
        if not pending:
            time.sleep(0.0002)
            continue
        began = time.monotonic()
        os.fdatasync(fd)
        ended = time.monotonic()
        syncs.append(ended - began)
        waits.extend(ended - w for w in pending)
        pending = []
    os.close(fd)
    os.unlink(path)
    waits.sort()
    syncs.sort()

    def ms(values, q):
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    print(
        f"{sent / secs / 1e6:.0f} MB/s: write to durable p50 {ms(waits, .5):.2f} ms, "
        f"p99 {ms(waits, .99):.2f} ms, max {waits[-1] * 1000:.1f} ms; "
        f"fdatasync p50 {ms(syncs, .5):.2f} ms, p99 {ms(syncs, .99):.2f} ms ({len(syncs)} cycles)"
    )


main()
