#!/usr/bin/env python3
"""Changes a topic's configs in place with each library's admin client and reads them back.

Usage: alter_configs.py BOOTSTRAP TOPIC. The topic must exist with no overrides. Steps:
confluent-kafka incremental_alter_configs sets retention.ms and segment.bytes; a refused value
(segment.bytes=10) comes back with the broker's reason and changes nothing; a delete of
segment.bytes keeps retention.ms; kafka-python's alter_configs sets retention.bytes; and
confluent-kafka's alter_configs (the older request, which replaces the overrides whole) leaves
only the retention.bytes it sets. The broker's configs are described read-only. Prints "ok" or
"FAIL: ..." (exit 1).
"""
import sys

from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ResourceType)
from kafka.admin import ConfigResource as PyConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient

bootstrap, topic = sys.argv[1], sys.argv[2]
admin = AdminClient({"bootstrap.servers": bootstrap})


def fail(why):
    print(f"FAIL: {why}")
    sys.exit(1)


def overrides():
    resource = ConfigResource(ResourceType.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(30)
    return {k: e.value for k, e in entries.items() if not e.is_default}


def incremental(*entries):
    resource = ConfigResource(ResourceType.TOPIC, topic, incremental_configs=list(entries))
    return admin.incremental_alter_configs([resource])[resource].result(30)


incremental(ConfigEntry("retention.ms", "3600000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("segment.bytes", "1048576", incremental_operation=AlterConfigOpType.SET))
if overrides() != {"retention.ms": "3600000", "segment.bytes": "1048576"}:
    fail(f"after the set: {overrides()}")
try:
    incremental(ConfigEntry("segment.bytes", "10", incremental_operation=AlterConfigOpType.SET))
    fail("segment.bytes=10 was taken")
except Exception as e:
    if "1024" not in str(e):
        fail(f"the refusal does not say why: {e}")
if overrides().get("segment.bytes") != "1048576":
    fail(f"a refused change changed something: {overrides()}")
incremental(ConfigEntry("segment.bytes", None, incremental_operation=AlterConfigOpType.DELETE))
if overrides() != {"retention.ms": "3600000"}:
    fail(f"after the delete: {overrides()}")

python_admin = KafkaAdminClient(bootstrap_servers=bootstrap)
python_admin.alter_configs([PyConfigResource(ConfigResourceType.TOPIC, topic,
                                             configs={"retention.bytes": "5000000"})])
if overrides().get("retention.bytes") != "5000000":
    fail(f"after kafka-python's alter_configs: {overrides()}")
# The older request (AlterConfigs) replaces the overrides whole.
resource = ConfigResource(ResourceType.TOPIC, topic, set_config={"retention.bytes": "6000000"})
admin.alter_configs([resource])[resource].result(30)
if overrides() != {"retention.bytes": "6000000"}:
    fail(f"after confluent-kafka's alter_configs: {overrides()}")
# The broker's own configs come from its file: described read-only, as AlterConfigs refuses them.
node = str(next(iter(admin.list_topics(timeout=10).brokers)))
broker = ConfigResource(ResourceType.BROKER, node)
writable = [k for k, e in admin.describe_configs([broker])[broker].result(30).items()
            if not e.is_read_only]
if writable:
    fail(f"broker configs described as writable: {writable}")
print("ok")
