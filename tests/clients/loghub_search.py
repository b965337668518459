"""Sends every Loghub sample through the broker with kcat and checks the search API's hit counts
against what the structured CSVs say.

Each CSV row becomes one JSON event: `message` is the row's Content, `level` its Level, `source`
its Component, and `fields.system` names the sample. For every system the script asks, through
`/api/v1/search`:
  - each level (`level:X`): hits must equal the rows with that Level;
  - the three most common components (`source:"X"`): rows with that Component;
  - three phrases taken from the Content of fixed rows: rows whose Content holds the phrase,
    with words as Tantivy's default tokenizer splits them (runs of letters and digits,
    lower-cased, words of 40 bytes or more dropped);
  - the words of three EventIds' templates (the longest run of words between `<*>` holes):
    rows with that EventId. Only templates whose words pick out exactly their own rows in the
    CSV are used, so a wrong count is the index's fault, not the query's.

With a SYSTEM argument it instead sends that system's raw `.log` lines as plain text and asks
the phrase and EventId queries of them.

Usage: loghub_search.py KAFKA HTTP LOGHUB_DIR [SYSTEM]
"""

import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter

from kafka_helpers import Fail, run_main

SYSTEMS = ["Android", "Apache", "HDFS", "Hadoop", "Linux", "OpenSSH", "Spark", "Zookeeper"]
WORD = re.compile(r"[^\W_]+")


def words(text):
    """Tantivy's default tokenizer, positions kept: a dropped long word is a gap (None)."""
    return [w.lower() if len(w.encode()) < 40 else None for w in WORD.findall(text)]


def holds_phrase(text_words, phrase):
    n = len(phrase)
    return any(text_words[i : i + n] == phrase for i in range(len(text_words) - n + 1))


def search(http, q):
    url = f"http://{http}/api/v1/search?" + urllib.parse.urlencode({"q": q, "limit": 1})
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return json.load(r)["total"]
    except urllib.error.HTTPError as e:
        raise Fail(f"query {q!r} refused: {e.code} {e.read().decode()}")


def quoted(value):
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def load(directory, system):
    with open(os.path.join(directory, f"{system}_2k.log_structured.csv"), newline="") as f:
        return list(csv.DictReader(f))


def event(system, row):
    e = {"message": row["Content"], "fields": {"system": system.lower(), "line": int(row["LineId"])}}
    if row.get("Level"):
        e["level"] = row["Level"]
    if row.get("Component"):
        e["source"] = row["Component"]
    return e


def queries(system, rows):
    """(query, expected hits, what) for one system's JSON events."""
    scope = f"fields.system:{system.lower()}"
    out = [(scope, len(rows), "all rows")]
    levels = Counter(r["Level"].lower() for r in rows if r.get("Level"))
    for level, n in sorted(levels.items()):
        out.append((f"{scope} AND level:{quoted(level)}", n, f"Level {level}"))
    components = Counter(r["Component"].lower() for r in rows if r.get("Component"))
    for component, n in components.most_common(3):
        out.append((f"{scope} AND source:{quoted(component)}", n, f"Component {component}"))
    return out + text_queries(scope, rows, [words(r["Content"]) for r in rows])


def text_queries(scope, rows, contents):
    """Phrase and EventId queries over `contents`, the words of each row's indexed text."""
    out = []
    for index in (10, 700, 1500):
        phrase = [w for w in contents[index] if w][:3]
        if len(phrase) < 2:
            continue
        expected = sum(holds_phrase(c, phrase) for c in contents)
        if expected < 1:
            raise Fail(f"the phrase {phrase} of row {index + 1} is not in its own row")
        out.append((f"{scope} AND {quoted(' '.join(phrase))}", expected, f"phrase of row {index + 1}"))
    by_event = Counter(r["EventId"] for r in rows)
    chosen = 0
    for event_id, n in by_event.most_common():
        template = next(r["EventTemplate"] for r in rows if r["EventId"] == event_id)
        runs = [[w for w in words(part) if w] for part in template.split("<*>")]
        phrase = max(runs, key=len)
        if len(phrase) < 2:
            continue
        matching = [r["EventId"] for r, c in zip(rows, contents) if holds_phrase(c, phrase)]
        if len(matching) != n or set(matching) != {event_id}:
            continue
        out.append((f"{scope} AND {quoted(' '.join(phrase))}", n, f"EventId {event_id}"))
        chosen += 1
        if chosen == 3:
            break
    return out


def produce(kafka, lines):
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.writelines(line + "\n" for line in lines)
        path = f.name
    subprocess.run(["kcat", "-P", "-b", kafka, "-t", "logs", "-l", path], check=True, timeout=120)
    os.unlink(path)


def wait_for(http, total):
    deadline = time.monotonic() + 60
    while (seen := search(http, "*")) < total:
        if time.monotonic() > deadline:
            raise Fail(f"only {seen} of {total} events searchable after 60 s")
        time.sleep(0.5)


def check(http, named_queries):
    failures, checked = [], 0
    for name, (q, expected, what) in named_queries:
        got = search(http, q)
        checked += 1
        if got != expected:
            failures.append(f"{name} {what}: {q!r} gave {got}, the CSV says {expected}")
    if failures:
        raise Fail(f"{len(failures)} of {checked} queries differ:\n" + "\n".join(failures))
    return checked


def plain(kafka, http, directory, system):
    """The raw log lines of one system as plain-text records: the same phrase and EventId
    queries, counted over the raw lines."""
    rows = load(directory, system)
    with open(os.path.join(directory, f"{system}_2k.log"), newline="") as f:
        lines = f.read().split("\n")[: len(rows)]
    produce(kafka, lines)
    wait_for(http, len(rows))
    if search(http, "*") != len(rows):
        raise Fail(f"{search(http, '*')} documents for {len(rows)} lines")
    named = [(system, q) for q in text_queries("*", rows, [words(line) for line in lines])]
    checked = check(http, named)
    print(f"{checked} queries over {len(rows)} plain {system} lines match the CSV")


def main():
    kafka, http, directory = sys.argv[1:4]
    if len(sys.argv) > 4:
        return plain(kafka, http, directory, sys.argv[4])
    data = {s: load(directory, s) for s in SYSTEMS}
    produce(kafka, [json.dumps(event(s, row)) for s, rows in data.items() for row in rows])

    total = sum(len(rows) for rows in data.values())
    wait_for(http, total)
    named = [(system, q) for system, rows in data.items() for q in queries(system, rows)]
    checked = check(http, named)
    print(f"{checked} queries over {len(data)} systems ({total} events) match the CSVs")


if __name__ == "__main__":
    sys.exit(run_main(main))
