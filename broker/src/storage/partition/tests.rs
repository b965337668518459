use super::super::batch::{split_batches, testing::batch};
use super::*;
use crate::config::IoBackendKind;

#[tokio::test]
async fn direct_appends_survive_a_clean_stop_and_none_follow_it() {
    let dir = tempfile::tempdir().unwrap();
    let settings = LogSettings {
        segment_bytes: 1 << 20,
        segment_ms: u64::MAX,
        index_interval_bytes: 4096,
    };
    let io = Io::start(IoBackendKind::IoUring, true).unwrap();
    let partition = Arc::new(Partition::open(dir.path(), io.clone(), settings, false).unwrap());
    let records = batch(3, 1000, 1);
    let batches = split_batches(&records).unwrap();
    for _ in 0..5 {
        partition.append(&batches, &records).await.unwrap();
    }
    let size = partition.size_bytes();
    assert_eq!(size, 5 * records.len() as u64);
    let stopping = partition.clone();
    tokio::task::spawn_blocking(move || stopping.sync())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        partition.append(&batches, &records).await,
        Err(AppendError::Closed)
    ));
    drop(partition);
    let log = dir.path().join(format!("{:020}.log", 0));
    assert_eq!(
        std::fs::metadata(&log).unwrap().len(),
        size,
        "the padding of the last direct write is cut"
    );
    let reopened = Partition::open(dir.path(), io, settings, true).unwrap();
    assert_eq!(reopened.log_end_offset(), 15);
    let read = reopened.read(12, 1 << 20, true).await.unwrap();
    assert_eq!(read.records.len(), records.len(), "the last batch, whole");
}

async fn append(partition: &Partition, records: Vec<u8>) {
    let batches = split_batches(&records).unwrap();
    partition.append(&batches, &records).await.unwrap();
}

/// A batch of `count` records from idempotent producer `id`, starting at `sequence`.
fn idempotent(id: i64, sequence: i32, count: i32) -> Vec<u8> {
    let mut records = batch(count, 100, 1);
    records[43..51].copy_from_slice(&id.to_be_bytes());
    records[51..53].copy_from_slice(&0i16.to_be_bytes());
    records[53..57].copy_from_slice(&sequence.to_be_bytes());
    super::super::batch::testing::seal(&mut records);
    records
}

/// After a clean stop the producer state comes from the snapshot taken at the log end, not
/// from the log: a producer whose batches retention removed carries on with its sequence
/// across the restart (read from the log, it would be an unknown producer), and the batches
/// since the snapshot taken at a roll are replayed after a crash.
#[tokio::test]
async fn producer_state_survives_restarts_through_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let settings = LogSettings {
        segment_bytes: 4096,
        segment_ms: u64::MAX,
        index_interval_bytes: 4096,
    };
    let io = Io::start(IoBackendKind::Plain, false).unwrap();
    let partition = Arc::new(Partition::open(dir.path(), io.clone(), settings, false).unwrap());
    append(&partition, idempotent(7, 0, 10)).await;
    for sequence in 0..40 {
        append(&partition, idempotent(8, sequence * 10, 10)).await;
    }
    let stopping = partition.clone();
    tokio::task::spawn_blocking(move || stopping.sync())
        .await
        .unwrap()
        .unwrap();
    drop(partition);
    // Retention's work: producer 7's only segment is gone.
    std::fs::remove_file(dir.path().join(format!("{:020}.log", 0))).unwrap();
    std::fs::remove_file(dir.path().join(format!("{:020}.index", 0))).unwrap();
    let partition = Arc::new(Partition::open(dir.path(), io.clone(), settings, false).unwrap());
    let next = split_batches(&idempotent(7, 10, 1)).unwrap()[0].0;
    assert_eq!(
        partition.producers.lock().unwrap().check(&next),
        Sequence::Append
    );
    // A crash (no stop): the batches after the last roll's snapshot are replayed.
    append(&partition, idempotent(8, 400, 10)).await;
    drop(partition);
    let partition = Partition::open(dir.path(), io, settings, true).unwrap();
    let retry = split_batches(&idempotent(8, 400, 10)).unwrap()[0].0;
    assert!(matches!(
        partition.producers.lock().unwrap().check(&retry),
        Sequence::Duplicate(_)
    ));
    let snapshots = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().ends_with(".producers")
        })
        .count();
    assert_eq!(snapshots, 2, "the newest two are kept");
}

/// The active segment is closed for retention once its records are all past it; records without
/// timestamps go by when their file was written, as in Kafka, not at once.
#[tokio::test]
async fn an_expired_active_segment_is_closed_by_its_records_time() {
    let settings = LogSettings {
        segment_bytes: 1 << 20,
        segment_ms: u64::MAX,
        index_interval_bytes: 4096,
    };
    let now = crate::now_ms();
    for (timestamp, rolled_now, rolled_in_a_minute) in
        [(now - 5_000, true, true), (-1, false, true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let io = Io::start(IoBackendKind::Plain, false).unwrap();
        let partition = Partition::open(dir.path(), io, settings, false).unwrap();
        assert!(
            !partition.roll_if_expired(1_000, now).await.unwrap(),
            "empty"
        );
        append(&partition, batch(2, 100, timestamp)).await;
        assert_eq!(
            partition.roll_if_expired(1_000, now).await.unwrap(),
            rolled_now,
            "{timestamp}"
        );
        assert_eq!(
            partition
                .roll_if_expired(1_000, now + 60_000)
                .await
                .unwrap(),
            rolled_in_a_minute && !rolled_now,
            "{timestamp}"
        );
        if rolled_now {
            // Closed, it goes with retention (which looks at the clock); the log goes on from
            // its end.
            assert_eq!(partition.enforce_retention(1_000, -1).unwrap(), 1);
            assert_eq!(partition.log_start_offset(), 2);
        }
        assert!(!partition.roll_if_expired(-1, now + 60_000).await.unwrap());
    }
}
