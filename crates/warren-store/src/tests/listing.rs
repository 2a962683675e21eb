//! Filters and cursor pagination of `list_sandboxes`.

use std::collections::HashSet;

use super::{memory_store, new_sandbox, tags, workspace};
use crate::{ListFilter, SandboxRecord, SandboxState, Store, Termination, TerminationReason};

/// Follows `next_cursor` to the end; returns every item in order.
async fn collect_all(store: &Store, mut filter: ListFilter) -> Vec<SandboxRecord> {
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        let page = store.list_sandboxes(&filter).await.unwrap();
        pages += 1;
        assert!(pages < 10_000, "pagination does not terminate");
        all.extend(page.items);
        match page.next_cursor {
            Some(c) => filter.cursor = Some(c),
            None => return all,
        }
    }
}

fn ids(items: &[SandboxRecord]) -> Vec<String> {
    items.iter().map(|s| s.id.clone()).collect()
}

#[tokio::test]
async fn tag_filters_use_and_semantics() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let other = workspace(&store, "other").await;
    let mut expect_both = Vec::new();
    let mut expect_team = Vec::new();
    for (i, pairs) in [
        &[("team", "ml"), ("env", "prod")][..],
        &[("team", "ml"), ("env", "dev")][..],
        &[("team", "web"), ("env", "prod")][..],
        &[("team", "ml")][..],
        &[][..],
    ]
    .into_iter()
    .enumerate()
    {
        clock.advance(1);
        let mut new = new_sandbox(&ws.id, None);
        new.tags = tags(pairs);
        store.insert_sandbox(&new).await.unwrap();
        if i == 0 {
            expect_both.push(new.id.clone());
        }
        if [0, 1, 3].contains(&i) {
            expect_team.push(new.id.clone());
        }
    }
    // Same tags in another workspace must not leak in.
    let mut foreign = new_sandbox(&other.id, None);
    foreign.tags = tags(&[("team", "ml"), ("env", "prod")]);
    store.insert_sandbox(&foreign).await.unwrap();

    let mut filter = ListFilter::workspace(&ws.id);
    filter.tags = tags(&[("team", "ml"), ("env", "prod")]);
    assert_eq!(ids(&collect_all(&store, filter.clone()).await), expect_both);

    filter.tags = tags(&[("team", "ml")]);
    expect_team.reverse(); // newest first
    assert_eq!(ids(&collect_all(&store, filter.clone()).await), expect_team);

    filter.tags = tags(&[("team", "ml"), ("env", "staging")]);
    assert!(collect_all(&store, filter.clone()).await.is_empty());

    // A key alone does not match a different value.
    filter.tags = tags(&[("env", "")]);
    assert!(collect_all(&store, filter).await.is_empty());
}

#[tokio::test]
async fn state_and_name_filters() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let mut by_state: Vec<(String, SandboxState)> = Vec::new();
    for i in 0..12 {
        clock.advance(1);
        let new = new_sandbox(&ws.id, Some(&format!("sb{i}")));
        store.insert_sandbox(&new).await.unwrap();
        let state = match i % 4 {
            0 => SandboxState::Creating,
            1 => {
                store.mark_running(&new.id).await.unwrap();
                SandboxState::Running
            }
            2 => {
                let why = Termination::new(TerminationReason::Terminated);
                store.begin_termination(&new.id, &why).await.unwrap();
                SandboxState::Terminating
            }
            _ => {
                let why = Termination::new(TerminationReason::Exited).with_exit_code(0);
                store.finish_sandbox(&new.id, &why).await.unwrap();
                SandboxState::Terminated
            }
        };
        by_state.push((new.id, state));
    }
    for state in SandboxState::ALL {
        let mut filter = ListFilter::workspace(&ws.id);
        filter.state = Some(state);
        filter.limit = Some(2);
        let got = collect_all(&store, filter).await;
        let mut want: Vec<String> = by_state
            .iter()
            .filter(|(_, s)| *s == state)
            .map(|(id, _)| id.clone())
            .collect();
        want.reverse();
        assert_eq!(ids(&got), want, "{state}");
        assert!(got.iter().all(|s| s.state == state));
    }

    let mut filter = ListFilter::workspace(&ws.id);
    filter.name = Some("sb5".to_owned());
    let got = collect_all(&store, filter).await;
    assert_eq!(ids(&got), vec![by_state[5].0.clone()]);
}

#[tokio::test]
async fn pagination_covers_every_row_once_despite_created_at_ties() {
    let (store, clock) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let other = workspace(&store, "other").await;
    let mut inserted = HashSet::new();
    // 23 distinct timestamps with up to 11 sandboxes sharing each.
    for i in 0..250 {
        if i % 11 == 0 {
            clock.advance(1);
        }
        let mut new = new_sandbox(&ws.id, None);
        if i % 3 == 0 {
            new.tags = tags(&[("every", "third")]);
        }
        store.insert_sandbox(&new).await.unwrap();
        inserted.insert(new.id.clone());
        // Rows of another workspace interleaved at the same timestamps.
        store
            .insert_sandbox(&new_sandbox(&other.id, None))
            .await
            .unwrap();
    }

    for limit in [1, 7, 11, 100, 249, 250, 1000] {
        let mut filter = ListFilter::workspace(&ws.id);
        filter.limit = Some(limit);
        let all = collect_all(&store, filter).await;
        assert_eq!(all.len(), 250, "limit {limit}");
        let seen: HashSet<String> = all.iter().map(|s| s.id.clone()).collect();
        assert_eq!(seen, inserted, "limit {limit}");
        // Strictly descending by (created_at, id): no repeats, stable order.
        for pair in all.windows(2) {
            assert!(
                (pair[0].created_at, &pair[0].id) > (pair[1].created_at, &pair[1].id),
                "limit {limit}: order broken"
            );
        }
    }

    // With a filter, pages of 10.
    let mut filter = ListFilter::workspace(&ws.id);
    filter.tags = tags(&[("every", "third")]);
    filter.limit = Some(10);
    let third = collect_all(&store, filter).await;
    assert_eq!(third.len(), 84);
    let unique: HashSet<_> = third.iter().map(|s| &s.id).collect();
    assert_eq!(unique.len(), 84);

    // The default page size applies without a limit.
    let page = store
        .list_sandboxes(&ListFilter::workspace(&ws.id))
        .await
        .unwrap();
    assert_eq!(page.items.len(), crate::DEFAULT_PAGE_LIMIT as usize);
    assert!(page.next_cursor.is_some());
}

#[tokio::test]
async fn the_last_page_has_no_cursor() {
    let (store, _) = memory_store().await;
    let ws = workspace(&store, "team").await;
    let empty = store
        .list_sandboxes(&ListFilter::workspace(&ws.id))
        .await
        .unwrap();
    assert!(empty.items.is_empty());
    assert!(empty.next_cursor.is_none());

    for _ in 0..3 {
        store
            .insert_sandbox(&new_sandbox(&ws.id, None))
            .await
            .unwrap();
    }
    let mut filter = ListFilter::workspace(&ws.id);
    filter.limit = Some(3);
    let page = store.list_sandboxes(&filter).await.unwrap();
    assert_eq!(page.items.len(), 3);
    assert!(page.next_cursor.is_none());
}
