#!/usr/bin/env python3
"""A transactional producer of each library against a broker without transactions: each must
fail at once, with an error it does not retry that says why, not wait out its own timeout.

Usage: transactional.py BOOTSTRAP. Prints one line per library: its name, the seconds it took,
and the error; exit status 1 if a library's init_transactions succeeded.
"""
import sys
import time

from confluent_kafka import KafkaException, Producer
from kafka import KafkaProducer

bootstrap = sys.argv[1]
failed = False

started = time.time()
try:
    Producer({"bootstrap.servers": bootstrap, "transactional.id": "tx-confluent"}).init_transactions(60)
    print("confluent-kafka: init_transactions succeeded")
    failed = True
except KafkaException as e:
    print(f"confluent-kafka {time.time() - started:.1f} s: {e.args[0].str()}")

started = time.time()
try:
    producer = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="tx-python", max_block_ms=60000)
    producer.init_transactions()
    print("kafka-python: init_transactions succeeded")
    failed = True
except Exception as e:
    print(f"kafka-python {time.time() - started:.1f} s: {type(e).__name__} {e}")

sys.exit(1 if failed else 0)
