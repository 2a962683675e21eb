//! Sandbox lifecycle, isolation, names, termination and expiry.

use super::{memory_store, new_sandbox, tags, workspace, T0};
use crate::{ListFilter, SandboxState, Termination, TerminationReason};

#[tokio::test]
async fn insert_and_get_round_trip() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let mut new = new_sandbox(&ws.id, Some("web"));
    new.tags = tags(&[("env", "prod")]);
    let inserted = store.insert_sandbox(&new).await.unwrap();
    assert_eq!(inserted.state, SandboxState::Creating);
    assert_eq!(inserted.created_at, T0);
    assert_eq!(inserted.last_activity_at, T0);
    assert_eq!(inserted.reason, None);

    let got = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(got, inserted);
    assert_eq!(got.spec, new.spec);
    assert_eq!(got.tags, new.tags);
    // The environment may hold secrets: Debug shows its keys only.
    assert!(!format!("{got:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_sandbox_is_invisible_from_another_workspace() {
    let (store, _) = memory_store().await;
    let a = workspace(&store, "a").await;
    let b = workspace(&store, "b").await;
    let new = new_sandbox(&a.id, Some("web"));
    store.insert_sandbox(&new).await.unwrap();

    assert!(store.get_sandbox(&b.id, &new.id).await.unwrap().is_none());
    assert!(store
        .get_sandbox_by_name(&b.id, "web")
        .await
        .unwrap()
        .is_none());
    assert!(store
        .list_sandboxes(&ListFilter::workspace(&b.id))
        .await
        .unwrap()
        .items
        .is_empty());
    let err = store
        .set_tags(&b.id, &new.id, &tags(&[("x", "y")]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found");
    // ... and unchanged for its owner.
    let own = store.get_sandbox(&a.id, &new.id).await.unwrap().unwrap();
    assert!(own.tags.is_empty());
}

#[tokio::test]
async fn names_are_unique_among_live_sandboxes_and_reusable_after_termination() {
    let (store, _) = memory_store().await;
    let a = workspace(&store, "a").await;
    let b = workspace(&store, "b").await;
    let first = new_sandbox(&a.id, Some("web"));
    store.insert_sandbox(&first).await.unwrap();

    let err = store
        .insert_sandbox(&new_sandbox(&a.id, Some("web")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "name_conflict", "{err}");
    // Another workspace may use the name; unnamed sandboxes never clash.
    store
        .insert_sandbox(&new_sandbox(&b.id, Some("web")))
        .await
        .unwrap();
    store
        .insert_sandbox(&new_sandbox(&a.id, None))
        .await
        .unwrap();
    store
        .insert_sandbox(&new_sandbox(&a.id, None))
        .await
        .unwrap();

    // Terminating still holds the name.
    assert!(store
        .begin_termination(&first.id, &Termination::new(TerminationReason::Terminated))
        .await
        .unwrap());
    let err = store
        .insert_sandbox(&new_sandbox(&a.id, Some("web")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "name_conflict");

    // Terminated frees it.
    assert!(store
        .finish_sandbox(&first.id, &Termination::new(TerminationReason::Exited))
        .await
        .unwrap());
    let second = new_sandbox(&a.id, Some("web"));
    store.insert_sandbox(&second).await.unwrap();
    let live = store
        .get_sandbox_by_name(&a.id, "web")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.id, second.id);

    // The name filter of a listing sees both generations.
    let mut filter = ListFilter::workspace(&a.id);
    filter.name = Some("web".to_owned());
    assert_eq!(store.list_sandboxes(&filter).await.unwrap().items.len(), 2);
}

#[tokio::test]
async fn duplicate_ids_and_unknown_workspaces_are_rejected() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();
    let err = store.insert_sandbox(&new).await.unwrap_err();
    assert!(
        matches!(err, crate::StoreError::SandboxIdTaken { .. }),
        "{err}"
    );

    let err = store
        .insert_sandbox(&new_sandbox("ws-nope", None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "not_found", "{err}");
}

#[tokio::test]
async fn invalid_input_is_rejected() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;

    let mut bad = new_sandbox(&ws.id, None);
    bad.spec.timeout_secs = Some(0);
    assert_eq!(
        store.insert_sandbox(&bad).await.unwrap_err().code(),
        "invalid_argument"
    );
    bad.spec.timeout_secs = Some(crate::MAX_TIMEOUT_SECS + 1);
    assert_eq!(
        store.insert_sandbox(&bad).await.unwrap_err().code(),
        "invalid_argument"
    );
    let mut bad = new_sandbox(&ws.id, None);
    bad.id = "Robert'); DROP TABLE sandboxes;--".to_owned();
    assert_eq!(
        store.insert_sandbox(&bad).await.unwrap_err().code(),
        "invalid_argument"
    );
    let mut bad = new_sandbox(&ws.id, None);
    bad.spec.cpu = Some(f64::NAN);
    assert_eq!(
        store.insert_sandbox(&bad).await.unwrap_err().code(),
        "invalid_argument"
    );

    let mut filter = ListFilter::workspace(&ws.id);
    filter.limit = Some(0);
    assert_eq!(
        store.list_sandboxes(&filter).await.unwrap_err().code(),
        "invalid_argument"
    );
    filter.limit = Some(crate::MAX_PAGE_LIMIT + 1);
    assert_eq!(
        store.list_sandboxes(&filter).await.unwrap_err().code(),
        "invalid_argument"
    );
    filter.limit = None;
    filter.cursor = Some("bogus".to_owned());
    assert_eq!(
        store.list_sandboxes(&filter).await.unwrap_err().code(),
        "invalid_argument"
    );
}

#[tokio::test]
async fn running_sets_start_and_deadline_once() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();

    clock.advance(250);
    assert!(store.mark_running(&new.id).await.unwrap());
    clock.advance(250);
    assert!(!store.mark_running(&new.id).await.unwrap());

    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Running);
    assert_eq!(sb.started_at, Some(T0 + 250));
    assert_eq!(sb.deadline_at, Some(T0 + 250 + 300_000));
    assert_eq!(sb.last_activity_at, T0 + 250);

    clock.advance(1000);
    store.record_activity(&new.id).await.unwrap();
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.last_activity_at, T0 + 1500);

    // No timeout: no deadline.
    let mut forever = new_sandbox(&ws.id, None);
    forever.spec.timeout_secs = None;
    store.insert_sandbox(&forever).await.unwrap();
    assert!(store.mark_running(&forever.id).await.unwrap());
    let sb = store
        .get_sandbox(&ws.id, &forever.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sb.deadline_at, None);
}

#[tokio::test]
async fn finish_is_first_writer_wins() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&new.id).await.unwrap();

    clock.advance(10);
    let exited = Termination::new(TerminationReason::Exited).with_exit_code(3);
    assert!(store.finish_sandbox(&new.id, &exited).await.unwrap());
    clock.advance(10);
    let deleted = Termination::new(TerminationReason::Terminated).with_detail("token tok-x");
    assert!(!store.finish_sandbox(&new.id, &deleted).await.unwrap());
    assert!(!store.begin_termination(&new.id, &deleted).await.unwrap());
    assert!(!store.mark_running(&new.id).await.unwrap());

    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Terminated);
    assert_eq!(sb.reason, Some(TerminationReason::Exited));
    assert_eq!(sb.exit_code, Some(3));
    assert_eq!(sb.reason_detail, None);
    assert_eq!(sb.ended_at, Some(T0 + 10));
}

#[tokio::test]
async fn a_claimed_reason_survives_the_finish() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&new.id).await.unwrap();

    let timeout = Termination::new(TerminationReason::Timeout).with_detail("300s limit");
    assert!(store.begin_termination(&new.id, &timeout).await.unwrap());
    let delete = Termination::new(TerminationReason::Terminated);
    assert!(!store.begin_termination(&new.id, &delete).await.unwrap());

    clock.advance(5);
    // The node then reports the kill as an exit with 137.
    let killed = Termination::new(TerminationReason::Exited).with_exit_code(137);
    assert!(store.finish_sandbox(&new.id, &killed).await.unwrap());

    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.state, SandboxState::Terminated);
    assert_eq!(sb.reason, Some(TerminationReason::Timeout));
    assert_eq!(sb.reason_detail.as_deref(), Some("300s limit"));
    assert_eq!(sb.exit_code, Some(137));
    assert_eq!(sb.ended_at, Some(T0 + 5));
}

#[tokio::test]
async fn concurrent_enders_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let store = crate::Store::open_sqlite(dir.path().join("state.db"))
        .await
        .unwrap();
    let ws = workspace(&store, "team").await;
    let new = new_sandbox(&ws.id, None);
    store.insert_sandbox(&new).await.unwrap();
    store.mark_running(&new.id).await.unwrap();

    let mut tasks = Vec::new();
    for (i, reason) in crate::TerminationReason::ALL.into_iter().enumerate() {
        let store = store.clone();
        let id = new.id.clone();
        tasks.push(tokio::spawn(async move {
            let why = Termination::new(reason).with_exit_code(i as i32);
            let won = store.finish_sandbox(&id, &why).await.unwrap();
            (won, why)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (won, why) = t.await.unwrap();
        if won {
            winners.push(why);
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.reason, Some(winners[0].reason));
    assert_eq!(sb.exit_code, winners[0].exit_code);
    store.close().await;
}

#[tokio::test]
async fn set_tags_replaces_all_tags() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let mut new = new_sandbox(&ws.id, None);
    new.tags = tags(&[("a", "1"), ("b", "2")]);
    store.insert_sandbox(&new).await.unwrap();

    store
        .set_tags(&ws.id, &new.id, &tags(&[("b", "3"), ("c", "4")]))
        .await
        .unwrap();
    let sb = store.get_sandbox(&ws.id, &new.id).await.unwrap().unwrap();
    assert_eq!(sb.tags, tags(&[("b", "3"), ("c", "4")]));

    let find = |pairs: &'static [(&'static str, &'static str)]| {
        let mut f = ListFilter::workspace(&ws.id);
        f.tags = tags(pairs);
        f
    };
    let count = |f: ListFilter| {
        let store = store.clone();
        async move { store.list_sandboxes(&f).await.unwrap().items.len() }
    };
    assert_eq!(count(find(&[("a", "1")])).await, 0);
    assert_eq!(count(find(&[("b", "2")])).await, 0);
    assert_eq!(count(find(&[("b", "3")])).await, 1);

    store.set_tags(&ws.id, &new.id, &tags(&[])).await.unwrap();
    assert_eq!(count(find(&[("c", "4")])).await, 0);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sandbox_tags")
        .fetch_one(&store.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test]
async fn expired_finds_timeouts_and_idle_timeouts() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;

    // 60 s lifetime.
    let mut timed = new_sandbox(&ws.id, Some("timed"));
    timed.spec.timeout_secs = Some(60);
    // 30 s idle limit, no lifetime.
    let mut idle = new_sandbox(&ws.id, Some("idle"));
    idle.spec.timeout_secs = None;
    idle.spec.idle_timeout_secs = Some(30);
    // Both: idle 10 s, lifetime 100 s.
    let mut both = new_sandbox(&ws.id, Some("both"));
    both.spec.timeout_secs = Some(100);
    both.spec.idle_timeout_secs = Some(10);
    // Expired on paper but never started: not a candidate.
    let mut creating = new_sandbox(&ws.id, Some("creating"));
    creating.spec.timeout_secs = Some(1);
    creating.spec.idle_timeout_secs = Some(1);
    for new in [&timed, &idle, &both, &creating] {
        store.insert_sandbox(new).await.unwrap();
    }
    for new in [&timed, &idle, &both] {
        store.mark_running(&new.id).await.unwrap();
    }

    let expired_at = |now: i64| {
        let store = store.clone();
        async move {
            let mut found: Vec<_> = store
                .expired(now)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.sandbox.name.unwrap(), e.reason))
                .collect();
            found.sort_by(|x, y| x.0.cmp(&y.0));
            found
        }
    };
    assert_eq!(expired_at(T0).await, vec![]);
    assert_eq!(expired_at(T0 + 9_999).await, vec![]);
    // Idle limits are checked against the last activity.
    assert_eq!(
        expired_at(T0 + 10_000).await,
        vec![("both".to_owned(), TerminationReason::IdleTimeout)]
    );

    clock.set(T0 + 9_000);
    store.record_activity(&both.id).await.unwrap();
    store.record_activity(&idle.id).await.unwrap();
    assert_eq!(expired_at(T0 + 10_000).await, vec![]);
    assert_eq!(
        expired_at(T0 + 39_000).await,
        vec![
            ("both".to_owned(), TerminationReason::IdleTimeout),
            ("idle".to_owned(), TerminationReason::IdleTimeout),
        ]
    );

    // Keep "both" and "idle" busy; only the lifetime limit remains.
    clock.set(T0 + 59_000);
    store.record_activity(&both.id).await.unwrap();
    store.record_activity(&idle.id).await.unwrap();
    assert_eq!(
        expired_at(T0 + 60_000).await,
        vec![("timed".to_owned(), TerminationReason::Timeout)]
    );

    clock.set(T0 + 95_000);
    store.record_activity(&both.id).await.unwrap();
    store.record_activity(&idle.id).await.unwrap();
    assert_eq!(
        expired_at(T0 + 100_000).await,
        vec![
            ("both".to_owned(), TerminationReason::Timeout),
            ("timed".to_owned(), TerminationReason::Timeout),
        ]
    );

    // Ended sandboxes are never expired again.
    store
        .finish_sandbox(&timed.id, &Termination::new(TerminationReason::Timeout))
        .await
        .unwrap();
    store
        .begin_termination(&both.id, &Termination::new(TerminationReason::Timeout))
        .await
        .unwrap();
    assert_eq!(expired_at(T0 + 100_000).await, vec![]);
}

#[tokio::test]
async fn list_unfinished_spans_workspaces_and_skips_terminated() {
    let (store, clock) = memory_store().await;
    let a = workspace(&store, "a").await;
    let b = workspace(&store, "b").await;
    let creating = new_sandbox(&a.id, None);
    let running = new_sandbox(&b.id, None);
    let terminating = new_sandbox(&a.id, None);
    let terminated = new_sandbox(&b.id, None);
    for new in [&creating, &running, &terminating, &terminated] {
        clock.advance(1);
        store.insert_sandbox(new).await.unwrap();
    }
    store.mark_running(&running.id).await.unwrap();
    let why = Termination::new(TerminationReason::Terminated);
    store
        .begin_termination(&terminating.id, &why)
        .await
        .unwrap();
    store.finish_sandbox(&terminated.id, &why).await.unwrap();

    let unfinished: Vec<_> = store
        .list_unfinished()
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.id, s.state))
        .collect();
    assert_eq!(
        unfinished,
        vec![
            (creating.id, SandboxState::Creating),
            (running.id, SandboxState::Running),
            (terminating.id, SandboxState::Terminating),
        ]
    );
}

#[tokio::test]
async fn image_ids_of_live_sandboxes() {
    let (store, _clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let a = new_sandbox(&ws.id, None);
    let b = new_sandbox(&ws.id, None);
    store.insert_sandbox(&a).await.unwrap();
    store.insert_sandbox(&b).await.unwrap();
    assert!(store.live_image_ids().await.unwrap().is_empty());
    store
        .mark_running_at(&a.id, Some("sha256:aa"))
        .await
        .unwrap();
    store
        .mark_running_at(&b.id, Some("sha256:bb"))
        .await
        .unwrap();
    let sb = store.get_sandbox(&ws.id, &a.id).await.unwrap().unwrap();
    assert_eq!(sb.image_id.as_deref(), Some("sha256:aa"));
    assert_eq!(sb.spec.user.as_deref(), Some("1000"));
    let mut live = store.live_image_ids().await.unwrap();
    live.sort();
    assert_eq!(live, ["sha256:aa", "sha256:bb"]);
    let why = Termination {
        reason: TerminationReason::Exited,
        exit_code: Some(0),
        detail: None,
    };
    store.finish_sandbox(&b.id, &why).await.unwrap();
    assert_eq!(store.live_image_ids().await.unwrap(), ["sha256:aa"]);
}
