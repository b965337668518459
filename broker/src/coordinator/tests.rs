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
    coordinator
        .commit(
            "idle",
            -1,
            "",
            vec![commit_request(0, 5), commit_request(1, 7)],
        )
        .await
        .unwrap();
    let committed = crate::now_ms();
    coordinator.expire_offsets(committed + 59_000).await;
    assert_eq!(coordinator.committed("idle").len(), 2);
    coordinator.expire_offsets(committed + 61_000).await;
    assert!(coordinator.committed("idle").is_empty());
    assert!(coordinator.list().is_empty());
    let reopened = open().await.unwrap();
    assert!(reopened.committed("idle").is_empty());
}
