use super::*;

/// A topics.json that cannot be written (its temporary file's name taken by a directory)
/// refuses the change, and nothing of it is left in memory for a producer to write to.
#[tokio::test]
async fn a_topic_change_that_cannot_be_saved_is_not_made() {
    let dir = tempfile::tempdir().unwrap();
    let storage = scratch(dir.path()).await;
    storage
        .create_topic("kept", 1, BTreeMap::new(), false)
        .await
        .unwrap();
    std::fs::create_dir(dir.path().join("topics.tmp")).unwrap();
    assert!(storage
        .create_topic("new", 2, BTreeMap::new(), false)
        .await
        .is_err());
    assert!(storage.topic("new").is_none());
    assert!(!storage.partition_dir("new", 0).exists());
    assert!(storage.add_partitions("kept", 3, false).await.is_err());
    assert_eq!(storage.topic("kept").unwrap().partition_count(), 1);
    assert!(storage.delete_topic("kept").await.is_err());
    assert!(storage.topic("kept").is_some());
    std::fs::remove_dir(dir.path().join("topics.tmp")).unwrap();
    storage.add_partitions("kept", 3, false).await.unwrap();
    assert_eq!(storage.topic("kept").unwrap().partition_count(), 3);
}

#[tokio::test]
async fn a_stop_after_a_failed_fsync_is_not_marked_clean() {
    for failed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let storage = scratch(dir.path()).await;
        if failed {
            // fdatasync of a pipe fails (EINVAL), standing in for a disk's writeback error.
            let (pipe, _writer) = std::io::pipe().unwrap();
            let pipe = Arc::new(File::from(std::os::fd::OwnedFd::from(pipe)));
            assert!(storage.io.sync_all(&[pipe]).await.is_err());
        }
        let closing = storage.clone();
        tokio::task::spawn_blocking(move || closing.close())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(dir.path().join(CLEAN_MARKER).exists(), !failed);
    }
}

/// A topic's counters are there at zero from its creation, so the first corrupt batch shows as
/// an increase; deleting the topic removes every series it had.
#[tokio::test]
async fn a_topics_series_exist_from_its_creation_and_go_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry = prometheus::Registry::new();
    let metrics = BrokerMetrics::register(&registry).unwrap();
    let storage = Storage::open(BrokerConfig::default(), dir.path(), metrics)
        .await
        .unwrap();
    storage
        .create_topic("gone", 2, BTreeMap::new(), false)
        .await
        .unwrap();
    let text = || {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    };
    assert!(text().contains("sluice_broker_corrupt_batches_total{topic=\"gone\"} 0"));
    assert!(text().contains("sluice_broker_bytes_in_total{topic=\"gone\"} 0"));
    storage.delete_topic("gone").await.unwrap();
    assert!(!text().contains("topic=\"gone\""), "{}", text());
}

/// As Kafka, a name that differs from an existing one only by '.' against '_' is refused.
#[tokio::test]
async fn names_that_collide_in_metrics_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let storage = scratch(dir.path()).await;
    storage
        .create_topic("app.logs", 1, BTreeMap::new(), false)
        .await
        .unwrap();
    let refused = storage
        .create_topic("app_logs", 1, BTreeMap::new(), false)
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(&refused, TopicError::InvalidName(why) if why.contains("collides with the existing topic app.logs")),
        "{refused}"
    );
    assert!(storage.topic("app_logs").is_none());
}
