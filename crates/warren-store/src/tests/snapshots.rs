//! Pause and resume transitions, memory snapshot records, image expiry.

use super::{memory_store, new_sandbox, workspace, T0};
use crate::{
    ListFilter, MemorySnapshotRecord, SandboxState, Termination, TerminationReason, LOCAL_NODE_ID,
};

#[tokio::test]
async fn pause_stops_the_clock_and_resume_restarts_it() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let mut new = new_sandbox(&ws.id, Some("app"));
    new.spec.idle_timeout_secs = Some(10);
    let rec = store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&rec.id).await.unwrap();

    clock.advance(100_000);
    assert!(store.begin_pause(&rec.id).await.unwrap());
    assert!(
        !store.begin_pause(&rec.id).await.unwrap(),
        "second pauser wins nothing"
    );
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Pausing);
    assert!(store.finish_pause(&rec.id).await.unwrap());
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Paused);
    assert_eq!(got.deadline_at, None);
    assert_eq!(got.paused_at, Some(T0 + 100_000));

    // Paused for far longer than both timeouts: nothing expires, activity
    // is not recorded, and the name stays taken.
    clock.advance(10_000_000);
    assert!(store.expired(T0 + 10_200_000).await.unwrap().is_empty());
    store.record_activity(&rec.id).await.unwrap();
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.last_activity_at, T0);
    assert!(store
        .insert_sandbox(&new_sandbox(&ws.id, Some("app")))
        .await
        .is_err());

    // Filters and counts see `paused`, not `running`.
    let mut f = ListFilter::workspace(ws.id.clone());
    f.state = Some(SandboxState::Running);
    assert!(store.list_sandboxes(&f).await.unwrap().items.is_empty());
    f.state = Some(SandboxState::Paused);
    assert_eq!(store.list_sandboxes(&f).await.unwrap().items.len(), 1);
    let counts = store.count_by_state().await.unwrap();
    assert!(counts.contains(&(SandboxState::Paused, 1)), "{counts:?}");
    assert!(!counts.iter().any(|(s, _)| *s == SandboxState::Running));

    assert!(store.begin_resume(&rec.id).await.unwrap());
    assert!(!store.begin_resume(&rec.id).await.unwrap());
    assert!(store.abort_resume(&rec.id).await.unwrap());
    assert!(store.begin_resume(&rec.id).await.unwrap());
    assert!(store.finish_resume(&rec.id).await.unwrap());
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Running);
    // 300 s timeout, 100 s used before the pause: 200 s left from now.
    let now = T0 + 10_100_000;
    assert_eq!(got.deadline_at, Some(now + 200_000));
    assert_eq!(got.last_activity_at, now);
    assert_eq!(got.paused_at, None);
}

#[tokio::test]
async fn a_paused_sandbox_can_be_terminated() {
    let (store, _clock) = memory_store().await;
    let ws = workspace(&store, "w").await;
    let rec = store
        .insert_sandbox(&new_sandbox(&ws.id, None))
        .await
        .unwrap();
    store.mark_running(&rec.id).await.unwrap();
    assert!(store.begin_pause(&rec.id).await.unwrap());
    assert!(store.finish_pause(&rec.id).await.unwrap());
    let t = Termination::new(TerminationReason::Terminated);
    assert!(store.begin_termination(&rec.id, &t).await.unwrap());
    let got = store.get_sandbox(&ws.id, &rec.id).await.unwrap().unwrap();
    assert_eq!(got.state, SandboxState::Terminating);
    assert!(store.finish_sandbox(&rec.id, &t).await.unwrap());
    assert!(!store.begin_resume(&rec.id).await.unwrap());
}

#[tokio::test]
async fn memory_snapshots_are_scoped_and_expire() {
    let (store, _clock) = memory_store().await;
    let a = workspace(&store, "a").await;
    let b = workspace(&store, "b").await;
    let snap = MemorySnapshotRecord {
        id: "ms-1".into(),
        workspace_id: a.id.clone(),
        sandbox_id: "sb-1".into(),
        image: "host".into(),
        image_id: Some("abc".into()),
        spec: new_sandbox(&a.id, None).spec,
        size_bytes: 42,
        took_ms: 7,
        created_at: T0,
        expires_at: Some(T0 + 1000),
        node_id: LOCAL_NODE_ID.into(),
    };
    store.insert_memory_snapshot(&snap).await.unwrap();
    assert_eq!(
        store.get_memory_snapshot(&a.id, "ms-1").await.unwrap(),
        Some(snap.clone())
    );
    assert_eq!(
        store.get_memory_snapshot(&b.id, "ms-1").await.unwrap(),
        None
    );
    assert_eq!(
        store.list_memory_snapshots(&a.id, 10).await.unwrap().len(),
        1
    );
    assert!(store
        .list_memory_snapshots(&b.id, 10)
        .await
        .unwrap()
        .is_empty());
    // A snapshot keeps its image alive.
    assert_eq!(
        store.live_image_ids().await.unwrap(),
        vec!["abc".to_string()]
    );
    assert!(store
        .expired_memory_snapshots(T0 + 999)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .expired_memory_snapshots(T0 + 1000)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(store.delete_memory_snapshot("ms-1").await.unwrap());
    assert!(!store.delete_memory_snapshot("ms-1").await.unwrap());
}

#[tokio::test]
async fn image_expiry_round_trip() {
    let (store, _clock) = memory_store().await;
    store.set_image_expiry("img1", T0 + 5).await.unwrap();
    store.set_image_expiry("img1", T0 + 10).await.unwrap();
    assert_eq!(store.image_expiry("img1").await.unwrap(), Some(T0 + 10));
    assert!(store.expired_images(T0 + 9).await.unwrap().is_empty());
    assert_eq!(
        store.expired_images(T0 + 10).await.unwrap(),
        vec!["img1".to_string()]
    );
    store.clear_image_expiry("img1").await.unwrap();
    assert_eq!(store.image_expiry("img1").await.unwrap(), None);
}
