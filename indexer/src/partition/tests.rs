use super::*;

fn settings() -> WriterSettings {
    WriterSettings {
        memory_bytes: 15_000_000,
        threads: 1,
        bucket_ms: 1000,
        retention_ms: 3000,
        max_document_bytes: 1 << 20,
        lock_wait: Duration::from_millis(200),
    }
}

fn record(offset: i64, timestamp_ms: i64, payload: &[u8]) -> Record<'_> {
    Record {
        partition: 0,
        offset,
        timestamp_ms,
        payload,
    }
}

fn open(dir: &std::path::Path) -> PartitionIndex {
    PartitionIndex::open(dir, 0, LogSchema::new(), settings()).unwrap()
}

#[test]
fn commit_carries_the_next_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    assert_eq!(index.committed_next_offset(), None);
    for offset in 0..5 {
        let added = index.add(&record(offset, 10, b"line"), 10).unwrap();
        assert_eq!(added, Added::Indexed(None));
    }
    assert_eq!(index.commit().unwrap().docs, 5);
    index.close().unwrap();

    let mut index = open(tmp.path());
    assert_eq!(index.committed_next_offset(), Some(5));
    let added = index.add(&record(5, 10, b"line"), 10).unwrap();
    assert_eq!(added, Added::Indexed(None));
    assert_eq!(index.generation(), 0);
}

/// A bucket that lost files (a deletion cut short by a crash, before deletions were atomic;
/// a damaged disk) is left out: the partition opens and the other buckets are searched.
/// A deletion cut short now leaves a `.deleting` directory, removed at the next open.
/// Partition 0 with a record in bucket 0 and one in bucket 1000, committed, and then the
/// bucket starting at `damaged` stripped of all but its `meta.json`; its directory.
fn two_buckets_one_damaged(topic_dir: &std::path::Path, damaged: i64) -> std::path::PathBuf {
    let mut index = PartitionIndex::open(topic_dir, 0, LogSchema::new(), settings()).unwrap();
    index.add(&record(0, 10, b"old"), 10).unwrap();
    index.commit().unwrap();
    index.add(&record(1, 1500, b"new"), 1500).unwrap();
    index.commit().unwrap();
    index.close().unwrap();
    let partition_dir = layout::partition_dir(topic_dir, 0);
    let bucket = layout::bucket_dir(&partition_dir, damaged);
    for entry in std::fs::read_dir(&bucket).unwrap().flatten() {
        if entry.file_name() != "meta.json" {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    partition_dir
}

#[test]
fn a_damaged_bucket_is_left_out_of_indexing_and_search() {
    let tmp = tempfile::tempdir().unwrap();
    let topic_dir = layout::topic_dir(tmp.path(), "logs");
    let partition_dir = two_buckets_one_damaged(&topic_dir, 0);
    std::fs::create_dir(partition_dir.join("0.deleting")).unwrap();
    let index = PartitionIndex::open(&topic_dir, 0, LogSchema::new(), settings()).unwrap();
    assert_eq!(index.committed_next_offset(), Some(2));
    assert!(!partition_dir.join("0.deleting").exists());
    index.close().unwrap();
    let limits = crate::search::SearchLimits {
        max_limit: 100,
        max_window: 100,
    };
    let search = crate::search::SearchService::new(tmp.path(), "logs", limits);
    assert_eq!(search.views().unwrap().len(), 1);
}

/// The newest bucket damaged: the records of its time, read again from the older bucket's
/// offset, go to a new bucket of the same start (the damaged one moved aside), rather than
/// failing on it at every try.
#[test]
fn a_damaged_newest_bucket_is_moved_aside_and_its_time_indexed_again() {
    let tmp = tempfile::tempdir().unwrap();
    let topic_dir = layout::topic_dir(tmp.path(), "logs");
    let partition_dir = two_buckets_one_damaged(&topic_dir, 1000);
    let mut index = PartitionIndex::open(&topic_dir, 0, LogSchema::new(), settings()).unwrap();
    assert_eq!(index.committed_next_offset(), Some(1));
    assert!(partition_dir.join("1000.damaged").exists());
    index.add(&record(1, 1500, b"new"), 1500).unwrap();
    assert_eq!(index.commit().unwrap().docs, 1);
    assert_eq!(index.committed_next_offset(), Some(2));
}

/// An index of offsets 0 to 4, committed, closed and opened again.
fn reopened_after_five_records(dir: &std::path::Path) -> PartitionIndex {
    let mut index = open(dir);
    for offset in 0..5 {
        index.add(&record(offset, 10, b"old"), 10).unwrap();
    }
    index.commit().unwrap();
    index.close().unwrap();
    open(dir)
}

/// After the log restarted, its records are pending even when their next offset is the one
/// the old log's last commit held (five then, five now): they are committed, not dropped.
#[test]
fn a_restarted_log_reaching_the_old_next_offset_is_still_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = reopened_after_five_records(tmp.path());
    for offset in 0..5 {
        index.add(&record(offset, 10, b"new"), 10).unwrap();
    }
    assert!(index.has_pending());
    assert_eq!(index.commit().unwrap().docs, 5);
    index.close().unwrap();
    assert_eq!(open(tmp.path()).generation(), 1);
}

/// The consumer starts where the index ends; a first record below that means the log began
/// again (the topic made again): it and what follows are indexed, and the new, smaller
/// offsets are where the next start resumes.
#[test]
fn a_log_that_restarted_below_the_index_is_indexed_from_its_start() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = reopened_after_five_records(tmp.path());
    for offset in 0..2 {
        let added = index.add(&record(offset, 10, b"new"), 10).unwrap();
        assert_eq!(added, Added::Indexed(None), "offset {offset}");
    }
    assert_eq!(index.generation(), 1);
    assert_eq!(index.commit().unwrap().docs, 2);
    index.close().unwrap();
    let index = open(tmp.path());
    assert_eq!(index.committed_next_offset(), Some(2));
    assert_eq!(index.generation(), 1);
}

/// The broker's log cut short under the index (its recovery cut a tail it had not synced, after
/// the indexer read it): the records up to the cut come again from the log's start and are
/// skipped, being the very ones indexed; the first that differs, written where the lost tail
/// was, and what follows are indexed, and the next start resumes after them.
#[test]
fn a_log_cut_short_under_the_index_is_not_indexed_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = reopened_after_five_records(tmp.path());
    for offset in 0..3 {
        let added = index.add(&record(offset, 10, b"old"), 10).unwrap();
        assert_eq!(added, Added::Duplicate, "offset {offset}");
    }
    assert_eq!(index.generation(), 0);
    for offset in 3..6 {
        let added = index
            .add(&record(offset, 20, b"after the cut"), 20)
            .unwrap();
        assert_eq!(added, Added::Indexed(None), "offset {offset}");
    }
    assert_eq!(index.generation(), 1);
    assert_eq!(index.commit().unwrap().docs, 3);
    index.close().unwrap();
    let index = open(tmp.path());
    assert_eq!(index.committed_next_offset(), Some(6));
}

/// Read again after a cut, a record at an offset where the index holds no document (skipped
/// as a repeat when first read) is still the log indexed; a record of the same content but
/// another time where the lost tail was (a service saying the same line again) is new.
#[test]
fn a_reread_log_goes_past_repeats_and_tells_a_same_line_of_another_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    let event = br#"{"id":"e1","message":"started"}"#;
    for (offset, payload) in [(0, &b"GET /health 200"[..]), (1, event), (2, event)] {
        index.add(&record(offset, 10, payload), 10).unwrap();
    }
    index.add(&record(3, 10, b"GET /health 200"), 10).unwrap();
    index.commit().unwrap();
    index.close().unwrap();
    let mut index = open(tmp.path());
    for (offset, payload) in [(0, &b"GET /health 200"[..]), (1, event), (2, event)] {
        let added = index.add(&record(offset, 10, payload), 10).unwrap();
        assert_eq!(added, Added::Duplicate, "offset {offset}");
    }
    assert_eq!(index.generation(), 0);
    let added = index.add(&record(3, 20, b"GET /health 200"), 20).unwrap();
    assert_eq!(
        added,
        Added::Indexed(None),
        "the same line, said again later"
    );
    assert_eq!(index.generation(), 1);
}

#[test]
fn uncommitted_records_are_not_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    index.add(&record(0, 10, b"a"), 10).unwrap();
    index.commit().unwrap();
    index.add(&record(1, 10, b"b"), 10).unwrap();
    drop(index);
    assert_eq!(open(tmp.path()).committed_next_offset(), Some(1));
}

#[test]
fn ids_already_indexed_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    let event = br#"{"id":"src:1","message":"m"}"#;
    assert_eq!(
        index.add(&record(0, 10, event), 10).unwrap(),
        Added::Indexed(None)
    );
    assert_eq!(
        index.add(&record(1, 10, event), 10).unwrap(),
        Added::Duplicate
    );
    index.commit().unwrap();
    index.close().unwrap();
    let mut index = open(tmp.path());
    assert_eq!(
        index.add(&record(2, 10, event), 10).unwrap(),
        Added::Duplicate
    );
    // A re-sent line may carry another read time: still the same event.
    let later = br#"{"id":"src:1","message":"m","timestamp":"2026-01-01T00:00:00Z"}"#;
    assert_eq!(
        index.add(&record(3, 10, later), 10).unwrap(),
        Added::Duplicate
    );
}

/// Another producer's events that reuse an id (an order's) but say something else are all
/// kept, and each is found by `id:`.
#[test]
fn a_reused_id_with_other_content_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    let created = br#"{"id":42,"message":"order 42 created"}"#;
    let shipped = br#"{"id":42,"message":"order 42 shipped"}"#;
    for (offset, event) in [created, shipped].into_iter().enumerate() {
        assert_eq!(
            index.add(&record(offset as i64, 10, event), 10).unwrap(),
            Added::Indexed(None)
        );
    }
    index.commit().unwrap();
    let term = Term::from_field_text(index.schema.id, "42");
    let searcher = &index.buckets.last().unwrap().searcher;
    let hits: u64 = searcher
        .segment_readers()
        .iter()
        .map(|s| {
            s.inverted_index(index.schema.id)
                .unwrap()
                .doc_freq(&term)
                .unwrap() as u64
        })
        .sum();
    assert_eq!(hits, 2);
}

#[test]
fn retention_deletes_whole_old_buckets_and_keeps_the_offset() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    index.add(&record(0, 1_500, b"old"), 1_500).unwrap();
    index.add(&record(1, 2_500, b"newer"), 2_500).unwrap();
    index.commit().unwrap();
    assert_eq!(layout::buckets(&tmp.path().join("0")).len(), 2);
    // At 5.5 s the bucket [1 s, 2 s) is wholly older than the 3 s retention; [2 s, 3 s) is not.
    assert_eq!(index.apply_retention(5_500).unwrap(), 1);
    let left: Vec<i64> = layout::buckets(&tmp.path().join("0"))
        .into_iter()
        .map(|(start, _)| start)
        .collect();
    assert_eq!(left, vec![2_000, 5_000]);
    assert_eq!(index.apply_retention(60_000).unwrap(), 2);
    index.close().unwrap();
    assert_eq!(open(tmp.path()).committed_next_offset(), Some(2));
}

/// Buckets made narrower on a running data dir: the wide bucket's records stay until their own
/// time is past the retention, not until the narrow width after its start is.
#[test]
fn retention_after_a_narrower_bucket_width_waits_for_the_records_own_time() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    index.add(&record(0, 1_500, b"wide"), 1_500).unwrap();
    index.close().unwrap();
    let narrow = WriterSettings {
        bucket_ms: 100,
        ..settings()
    };
    let mut index = PartitionIndex::open(tmp.path(), 0, LogSchema::new(), narrow).unwrap();
    index.add(&record(1, 1_600, b"narrow"), 1_600).unwrap();
    index.commit().unwrap();
    let starts = |dir: &std::path::Path| -> Vec<i64> {
        layout::buckets(&dir.join("0"))
            .into_iter()
            .map(|(start, _)| start)
            .collect()
    };
    assert_eq!(starts(tmp.path()), vec![1_000, 1_600]);
    // At 4.4 s the 3 s retention reaches back to 1.4 s: [1 s, 1.1 s) would be past it, but the
    // bucket holds a record of 1.5 s.
    assert_eq!(index.apply_retention(4_400).unwrap(), 0);
    assert_eq!(starts(tmp.path()), vec![1_000, 1_600, 4_400]);
    // Then it goes, with the empty bucket the idle partition moved to at 4.4 s.
    assert_eq!(index.apply_retention(4_501).unwrap(), 2);
    assert_eq!(starts(tmp.path()), vec![1_600, 4_500]);
    index.close().unwrap();
}

/// A bucket written before its newest time was kept: its records count as being as new as its
/// last commit, so it outlives every record it may hold, whatever width cut it.
#[test]
fn a_bucket_without_its_newest_time_lasts_from_its_last_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut index = open(tmp.path());
    index
        .add(&record(0, 1_500, b"before the upgrade"), 1_500)
        .unwrap();
    index.close().unwrap();
    let bucket = layout::bucket_dir(&layout::partition_dir(tmp.path(), 0), 1_000);
    let old = tantivy::Index::open_in_dir(&bucket).unwrap();
    let mut writer: tantivy::IndexWriter = old.writer(15_000_000).unwrap();
    let mut commit = writer.prepare_commit().unwrap();
    commit.set_payload(r#"{"next_offset":1,"generation":0}"#);
    commit.commit().unwrap();
    drop(writer);
    let committed_ms = layout::last_commit_ms(&bucket);

    let mut index = open(tmp.path());
    // Long past the record's own time and its bucket's end, not past its last commit.
    assert_eq!(index.apply_retention(4_400).unwrap(), 0);
    // The next bucket's start is past the retention now; only the empty bucket in between goes.
    assert_eq!(index.apply_retention(10_000).unwrap(), 1);
    assert!(bucket.exists());
    assert_eq!(index.apply_retention(committed_ms + 3_001).unwrap(), 2);
    assert!(!bucket.exists());
    index.close().unwrap();
}

#[test]
fn a_second_owner_waits_then_gives_up() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = open(tmp.path());
    let err = PartitionIndex::open(tmp.path(), 0, LogSchema::new(), settings())
        .err()
        .unwrap();
    assert!(err.to_string().contains("another indexer"), "{err}");
}
