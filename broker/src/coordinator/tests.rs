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
