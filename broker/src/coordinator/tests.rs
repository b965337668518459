use super::*;

fn commit_request(partition: i32, offset: i64) -> CommitRequest {
    CommitRequest {
        topic: "events".into(),
        partition,
        offset,
        metadata: String::new(),
    }
}

/// The offsets of a group without members go once the retention has passed since its last
/// commit, for good (a restart replays the tombstones), and not before.
#[tokio::test]
async fn offsets_of_a_group_without_members_expire_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::scratch(dir.path()).await;
    let metrics = BrokerMetrics::register(&prometheus::Registry::new()).unwrap();
    let open = || Coordinator::open(storage.clone(), metrics.clone(), Duration::ZERO, 60_000);
    let coordinator = open().await.unwrap();
    // Before the commits: their time is at least this, however long their fsyncs take.
    let committed = crate::now_ms();
    for group in ["idle", "emptied"] {
        coordinator
            .commit(
                group,
                -1,
                "",
                vec![commit_request(0, 5), commit_request(1, 7)],
            )
            .await
            .unwrap();
    }
    // A group whose members left 30 s after its last commit: its retention counts from then.
    coordinator.with_group("emptied", |group| group.empty_since_ms = committed + 30_000);
    coordinator.expire_offsets(committed + 59_000).await;
    assert_eq!(coordinator.committed("idle").len(), 2);
    coordinator.expire_offsets(committed + 61_000).await;
    assert!(coordinator.committed("idle").is_empty());
    assert_eq!(coordinator.committed("emptied").len(), 2);
    coordinator.expire_offsets(committed + 91_000).await;
    assert!(coordinator.committed("emptied").is_empty());
    assert!(coordinator.list().is_empty());
    let reopened = open().await.unwrap();
    assert!(reopened.committed("idle").is_empty());
    assert!(reopened.committed("emptied").is_empty());
}

/// Offsets of a topic that no longer exists (deleted while a stop or a crash cut its forgetting
/// short) are forgotten when the coordinator opens; a group left with none is gone too.
#[tokio::test]
async fn offsets_of_a_missing_topic_are_forgotten_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let storage = crate::storage::scratch(dir.path()).await;
    storage
        .create_topic("kept", 1, BTreeMap::new(), false)
        .await
        .unwrap();
    let metrics = BrokerMetrics::register(&prometheus::Registry::new()).unwrap();
    let open = || Coordinator::open(storage.clone(), metrics.clone(), Duration::ZERO, 60_000);
    let coordinator = open().await.unwrap();
    let kept = CommitRequest {
        topic: "kept".into(),
        ..commit_request(0, 3)
    };
    coordinator
        .commit("both", -1, "", vec![kept, commit_request(0, 5)])
        .await
        .unwrap();
    coordinator
        .commit("gone-only", -1, "", vec![commit_request(1, 7)])
        .await
        .unwrap();
    let reopened = open().await.unwrap();
    let both: Vec<_> = reopened.committed("both").into_keys().collect();
    assert_eq!(both, vec![("kept".to_owned(), 0)]);
    assert!(reopened.committed("gone-only").is_empty());
    assert!(!reopened.offsets.lock().unwrap().contains_key("gone-only"));
    // For good: the tombstones were written.
    let again = open().await.unwrap();
    assert_eq!(again.committed("both").len(), 1);
}
