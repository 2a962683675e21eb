//! Sandbox records: insert, lifecycle transitions, lookups and listing.
//!
//! Reads that serve API requests are scoped to a workspace: an id or name
//! of another workspace behaves exactly like one that does not exist.
//! Lifecycle writes (`mark_running`, `begin_termination`,
//! `finish_sandbox`, `record_activity`) take a bare id because the
//! lifecycle manager acts across workspaces; API handlers must first
//! resolve the id through a scoped read.

use std::collections::BTreeMap;

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};

use crate::cursor::Cursor;
use crate::error::{is_foreign_key_violation, is_unique_violation, Result, StoreError};
use crate::ids::{validate_id, validate_name, validate_tags};
use crate::store::Store;
use crate::types::{
    ExpiredSandbox, ListFilter, NewSandbox, Page, SandboxRecord, SandboxSpec, SandboxState,
    Termination, TerminationReason, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT,
};

/// Longest timeout the store accepts (100 years): keeps every deadline
/// computation far from 64-bit overflow (SQLite would silently switch to
/// floating point).
pub const MAX_TIMEOUT_SECS: u64 = 100 * 365 * 24 * 60 * 60;

/// Longest image reference.
const MAX_IMAGE_LEN: usize = 1024;

/// `SELECT` and the column list of [`SandboxRow`], qualified with the alias
/// `s` for `sandboxes`.
macro_rules! sandbox_columns {
    () => {
        concat!(
            "SELECT s.id, s.workspace_id, s.name, s.image, s.spec, s.tags, s.state, s.reason, ",
            "s.exit_code, s.reason_detail, s.created_at, s.started_at, s.ended_at, ",
            "s.deadline_at, s.last_activity_at, s.node_id, s.image_id, s.paused_at "
        )
    };
}

/// A query on `sandboxes s` returning [`SandboxRow`]s, as one `'static`
/// literal (sqlx accepts only those without an explicit safety assertion).
macro_rules! select_sandboxes {
    ($tail:literal) => {
        concat!(sandbox_columns!(), "FROM sandboxes s ", $tail)
    };
}

/// `SELECT` and the column list, for tests that build their own variants.
#[cfg(test)]
pub(crate) const SANDBOX_COLUMNS: &str = sandbox_columns!();

#[derive(sqlx::FromRow)]
struct SandboxRow {
    id: String,
    workspace_id: String,
    name: Option<String>,
    image: String,
    spec: String,
    tags: String,
    state: String,
    reason: Option<String>,
    exit_code: Option<i32>,
    reason_detail: Option<String>,
    created_at: i64,
    started_at: Option<i64>,
    ended_at: Option<i64>,
    deadline_at: Option<i64>,
    last_activity_at: i64,
    node_id: String,
    image_id: Option<String>,
    paused_at: Option<i64>,
}

impl TryFrom<SandboxRow> for SandboxRecord {
    type Error = StoreError;

    fn try_from(r: SandboxRow) -> Result<Self> {
        let bad = |reason: String| StoreError::DecodeRow {
            table: "sandboxes",
            id: r.id.clone(),
            reason,
        };
        let spec: SandboxSpec =
            serde_json::from_str(&r.spec).map_err(|e| bad(format!("spec: {e}")))?;
        let tags: BTreeMap<String, String> =
            serde_json::from_str(&r.tags).map_err(|e| bad(format!("tags: {e}")))?;
        let state = r
            .state
            .parse::<SandboxState>()
            .map_err(|e| bad(format!("state: {e}")))?;
        let reason = r
            .reason
            .as_deref()
            .map(str::parse::<TerminationReason>)
            .transpose()
            .map_err(|e| bad(format!("reason: {e}")))?;
        Ok(SandboxRecord {
            id: r.id,
            workspace_id: r.workspace_id,
            name: r.name,
            image: r.image,
            spec,
            tags,
            state,
            reason,
            exit_code: r.exit_code,
            reason_detail: r.reason_detail,
            created_at: r.created_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            deadline_at: r.deadline_at,
            last_activity_at: r.last_activity_at,
            node_id: r.node_id,
            image_id: r.image_id,
            paused_at: r.paused_at,
        })
    }
}

fn decode_all(rows: Vec<SandboxRow>) -> Result<Vec<SandboxRecord>> {
    rows.into_iter().map(SandboxRecord::try_from).collect()
}

fn timeout_column(field: &'static str, secs: Option<u64>) -> Result<Option<i64>> {
    match secs {
        None => Ok(None),
        Some(0) => Err(StoreError::invalid(field, "must be positive")),
        Some(s) if s > MAX_TIMEOUT_SECS => Err(StoreError::invalid(
            field,
            format!("must be at most {MAX_TIMEOUT_SECS}"),
        )),
        // In range by the check above.
        Some(s) => Ok(Some(s as i64)),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value)
        .expect("string maps and plain structs without custom serializers always serialize")
}

fn validate_new(new: &NewSandbox) -> Result<()> {
    validate_id("sandbox id", &new.id)?;
    validate_id("workspace id", &new.workspace_id)?;
    validate_id("node id", &new.node_id)?;
    if let Some(name) = &new.name {
        validate_name("sandbox name", name)?;
    }
    if new.image.is_empty() || new.image.len() > MAX_IMAGE_LEN {
        return Err(StoreError::invalid(
            "image",
            format!("must be 1 to {MAX_IMAGE_LEN} bytes"),
        ));
    }
    if new.spec.cpu.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        return Err(StoreError::invalid(
            "cpu",
            "must be a positive finite number",
        ));
    }
    validate_tags(&new.tags)
}

/// Inserts one sandbox and its tag rows on `conn`, which must be inside a
/// write transaction.
pub(crate) async fn insert_sandbox_in(
    conn: &mut SqliteConnection,
    new: &NewSandbox,
    now: i64,
) -> Result<SandboxRecord> {
    validate_new(new)?;
    let timeout_secs = timeout_column("timeout_secs", new.spec.timeout_secs)?;
    let idle_timeout_secs = timeout_column("idle_timeout_secs", new.spec.idle_timeout_secs)?;
    let db = |source| StoreError::InsertSandbox {
        id: new.id.clone(),
        source,
    };

    // Checked first so that a unique violation below can only mean the
    // live-name index (the write transaction makes check and insert atomic).
    let id_taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM sandboxes WHERE id = $1")
        .bind(&new.id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db)?;
    if id_taken.is_some() {
        return Err(StoreError::SandboxIdTaken { id: new.id.clone() });
    }

    let record = SandboxRecord {
        id: new.id.clone(),
        workspace_id: new.workspace_id.clone(),
        name: new.name.clone(),
        image: new.image.clone(),
        spec: new.spec.clone(),
        tags: new.tags.clone(),
        state: SandboxState::Creating,
        reason: None,
        exit_code: None,
        reason_detail: None,
        created_at: now,
        started_at: None,
        ended_at: None,
        deadline_at: None,
        last_activity_at: now,
        node_id: new.node_id.clone(),
        image_id: None,
        paused_at: None,
    };
    sqlx::query(
        "INSERT INTO sandboxes (id, workspace_id, name, image, spec, tags, state, \
         timeout_secs, idle_timeout_secs, created_at, last_activity_at, node_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, $11)",
    )
    .bind(&record.id)
    .bind(&record.workspace_id)
    .bind(&record.name)
    .bind(&record.image)
    .bind(to_json(&record.spec))
    .bind(to_json(&record.tags))
    .bind(record.state.as_str())
    .bind(timeout_secs)
    .bind(idle_timeout_secs)
    .bind(now)
    .bind(&record.node_id)
    .execute(&mut *conn)
    .await
    .map_err(|source| {
        if is_unique_violation(&source) {
            StoreError::SandboxNameTaken {
                workspace_id: new.workspace_id.clone(),
                name: new.name.clone().unwrap_or_default(),
            }
        } else if is_foreign_key_violation(&source) {
            StoreError::WorkspaceNotFound {
                id: new.workspace_id.clone(),
            }
        } else {
            db(source)
        }
    })?;
    insert_tag_rows(conn, &record, &record.tags)
        .await
        .map_err(db)?;
    Ok(record)
}

/// The identity and sort key of a sandbox, copied into its tag rows.
struct TagOwner<'a> {
    sandbox_id: &'a str,
    workspace_id: &'a str,
    created_at: i64,
}

impl<'a> From<&'a SandboxRecord> for TagOwner<'a> {
    fn from(r: &'a SandboxRecord) -> Self {
        TagOwner {
            sandbox_id: &r.id,
            workspace_id: &r.workspace_id,
            created_at: r.created_at,
        }
    }
}

async fn insert_tag_rows<'a>(
    conn: &mut SqliteConnection,
    owner: impl Into<TagOwner<'a>>,
    tags: &BTreeMap<String, String>,
) -> std::result::Result<(), sqlx::Error> {
    if tags.is_empty() {
        return Ok(());
    }
    let owner = owner.into();
    // At most MAX_TAGS * 5 bind parameters: far below every backend's limit.
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "INSERT INTO sandbox_tags (sandbox_id, workspace_id, created_at, key, value) ",
    );
    qb.push_values(tags, |mut row, (k, v)| {
        row.push_bind(owner.sandbox_id.to_owned())
            .push_bind(owner.workspace_id.to_owned())
            .push_bind(owner.created_at)
            .push_bind(k.clone())
            .push_bind(v.clone());
    });
    qb.build().execute(conn).await?;
    Ok(())
}

impl Store {
    /// Inserts a sandbox in state `creating` with `created_at` and
    /// `last_activity_at` set to now.
    ///
    /// Fails with `name_conflict` when the name is used by a live (not
    /// terminated) sandbox of the same workspace or the id exists, with
    /// `not_found` for an unknown workspace, and with `invalid_argument`
    /// for malformed input.
    pub async fn insert_sandbox(&self, new: &NewSandbox) -> Result<SandboxRecord> {
        validate_new(new)?;
        let db = |source| StoreError::InsertSandbox {
            id: new.id.clone(),
            source,
        };
        let mut tx = self.begin_write().await.map_err(db)?;
        let record = insert_sandbox_in(&mut tx, new, self.now()).await?;
        tx.commit().await.map_err(db)?;
        tracing::debug!(sandbox_id = %record.id, workspace_id = %record.workspace_id, "inserted sandbox");
        Ok(record)
    }

    /// `creating` → `running`: sets `started_at` and `last_activity_at` to
    /// now and `deadline_at` to now plus the spec's `timeout_secs` (none
    /// without a timeout). Returns `false` (and changes nothing) unless the
    /// sandbox was `creating`.
    pub async fn mark_running(&self, id: &str) -> Result<bool> {
        Ok(self.mark_running_at(id, None).await?.is_some())
    }

    /// Like [`Store::mark_running`], returning the `started_at` it recorded
    /// (`None` if the sandbox was not `creating`), so callers can answer
    /// without reading the record back. `image_id`, when given, records the
    /// image the node resolved.
    pub async fn mark_running_at(&self, id: &str, image_id: Option<&str>) -> Result<Option<i64>> {
        let now = self.now();
        let result = sqlx::query(
            "UPDATE sandboxes SET state = 'running', started_at = $1, last_activity_at = $1, \
             deadline_at = CASE WHEN timeout_secs IS NULL THEN NULL \
                                ELSE $1 + timeout_secs * 1000 END, \
             image_id = COALESCE($3, image_id) \
             WHERE id = $2 AND state = 'creating'",
        )
        .bind(now)
        .bind(id)
        .bind(image_id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "mark running",
            source,
        })?;
        Ok((result.rows_affected() == 1).then_some(now))
    }

    /// Records activity (an exec, a file operation, tunnel traffic) for the
    /// idle timeout: one indexed `UPDATE`, a no-op unless running.
    pub async fn record_activity(&self, id: &str) -> Result<()> {
        sqlx::query(
            "UPDATE sandboxes SET last_activity_at = $1 \
             WHERE id = $2 AND state = 'running' AND last_activity_at < $1",
        )
        .bind(self.now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "record activity",
            source,
        })?;
        Ok(())
    }

    /// `running` → `paused`, recording when (`paused_at`). Returns whether
    /// this call made the transition.
    pub async fn pause_sandbox(&self, id: &str) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE sandboxes SET state = 'paused', paused_at = $1 \
             WHERE id = $2 AND state = 'running'",
        )
        .bind(self.now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "pause",
            source,
        })?;
        Ok(result.rows_affected() == 1)
    }

    /// `paused` → `running`. No timeout ran while it was paused: the
    /// deadline moves by the time spent paused, and the idle clock starts
    /// again now. Returns the time of the resume, or `None` (nothing
    /// changed) unless the sandbox was paused.
    pub async fn resume_sandbox(&self, id: &str) -> Result<Option<i64>> {
        let now = self.now();
        let result = sqlx::query(
            "UPDATE sandboxes SET state = 'running', last_activity_at = $1, \
             deadline_at = CASE WHEN deadline_at IS NULL OR paused_at IS NULL THEN deadline_at \
                                WHEN $1 > paused_at THEN deadline_at + ($1 - paused_at) \
                                ELSE deadline_at END, \
             paused_at = NULL \
             WHERE id = $2 AND state = 'paused'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "resume",
            source,
        })?;
        Ok((result.rows_affected() == 1).then_some(now))
    }

    /// Removes a sandbox that never started (`creating`), with its tags and
    /// relay ports, as if it had not been created: for a restore refused
    /// before the node made anything (a corrupt snapshot). Returns whether a
    /// row was removed.
    pub async fn discard_sandbox(&self, id: &str) -> Result<bool> {
        let db = |source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "discard",
            source,
        };
        let mut tx = self.begin_write().await.map_err(db)?;
        let creating: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sandboxes WHERE id = $1 AND state = 'creating'")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if creating.is_none() {
            return Ok(false);
        }
        for q in [
            "DELETE FROM sandbox_tags WHERE sandbox_id = $1",
            "DELETE FROM relay_ports WHERE sandbox_id = $1",
            "DELETE FROM connect_tokens WHERE sandbox_id = $1",
            "DELETE FROM sandboxes WHERE id = $1",
        ] {
            sqlx::query(q)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(true)
    }

    /// `creating`/`running`/`paused` → `terminating`, claiming the termination
    /// reason. Returns whether this call made the transition; a later
    /// caller (another ender, a timeout racing a delete) gets `false` and
    /// cannot replace the reason.
    pub async fn begin_termination(&self, id: &str, why: &Termination) -> Result<bool> {
        let result = sqlx::query(
            "UPDATE sandboxes SET state = 'terminating', reason = $1, exit_code = $2, \
             reason_detail = $3 \
             WHERE id = $4 AND state IN ('creating', 'running', 'paused')",
        )
        .bind(why.reason.as_str())
        .bind(why.exit_code)
        .bind(&why.detail)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "begin termination",
            source,
        })?;
        Ok(result.rows_affected() == 1)
    }

    /// Any state but `terminated` → `terminated`, with `ended_at` now.
    /// Returns whether this call won; when it returns `false` nothing was
    /// changed, so concurrent enders cannot overwrite the first outcome.
    ///
    /// If [`Store::begin_termination`] already claimed a reason, that
    /// reason and its detail are kept, and `why.exit_code` only fills in
    /// the exit code when one is given.
    pub async fn finish_sandbox(&self, id: &str, why: &Termination) -> Result<bool> {
        // In an UPDATE's SET list every column reference reads the old row
        // (SQL standard; SQLite and PostgreSQL agree), so `reason IS NULL`
        // tests whether a reason was claimed before this call.
        let result = sqlx::query(
            "UPDATE sandboxes SET state = 'terminated', ended_at = $1, \
             reason = COALESCE(reason, $2), \
             reason_detail = CASE WHEN reason IS NULL THEN $3 ELSE reason_detail END, \
             exit_code = COALESCE($4, exit_code) \
             WHERE id = $5 AND state <> 'terminated'",
        )
        .bind(self.now())
        .bind(why.reason.as_str())
        .bind(&why.detail)
        .bind(why.exit_code)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|source| StoreError::UpdateSandbox {
            id: id.to_owned(),
            operation: "finish",
            source,
        })?;
        let won = result.rows_affected() == 1;
        if won {
            tracing::debug!(sandbox_id = id, reason = %why.reason, "sandbox terminated");
        }
        Ok(won)
    }

    /// The sandbox with this id in this workspace. Another workspace's
    /// sandbox yields `None`, exactly like a missing one.
    pub async fn get_sandbox(&self, workspace_id: &str, id: &str) -> Result<Option<SandboxRecord>> {
        let row: Option<SandboxRow> =
            sqlx::query_as(select_sandboxes!("WHERE id = $1 AND workspace_id = $2"))
                .bind(id)
                .bind(workspace_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|source| StoreError::GetSandbox {
                    key: id.to_owned(),
                    source,
                })?;
        row.map(SandboxRecord::try_from).transpose()
    }

    /// The sandbox with this id in any workspace: for components that act
    /// across workspaces (the relay's routes), never for API reads.
    pub async fn get_sandbox_unscoped(&self, id: &str) -> Result<Option<SandboxRecord>> {
        let row: Option<SandboxRow> = sqlx::query_as(select_sandboxes!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| StoreError::GetSandbox {
                key: id.to_owned(),
                source,
            })?;
        row.map(SandboxRecord::try_from).transpose()
    }

    /// The live (not terminated) sandbox with this name in this workspace.
    pub async fn get_sandbox_by_name(
        &self,
        workspace_id: &str,
        name: &str,
    ) -> Result<Option<SandboxRecord>> {
        // `state <> 'terminated'` is spelled exactly as in the partial
        // index `sandboxes_live_name`, so the planner can use it.
        let row: Option<SandboxRow> = sqlx::query_as(select_sandboxes!(
            "WHERE workspace_id = $1 AND name = $2 AND state <> 'terminated'"
        ))
        .bind(workspace_id)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|source| StoreError::GetSandbox {
            key: name.to_owned(),
            source,
        })?;
        row.map(SandboxRecord::try_from).transpose()
    }

    /// Replaces all tags of a sandbox of this workspace. Fails with
    /// `not_found` for an id that is missing or in another workspace.
    pub async fn set_tags(
        &self,
        workspace_id: &str,
        id: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_tags(tags)?;
        let db = |source| StoreError::SetTags {
            id: id.to_owned(),
            source,
        };
        let mut tx = self.begin_write().await.map_err(db)?;
        // RETURNING is supported by SQLite (3.35+) and PostgreSQL alike.
        let created_at: Option<i64> = sqlx::query_scalar(
            "UPDATE sandboxes SET tags = $1 WHERE id = $2 AND workspace_id = $3 \
             RETURNING created_at",
        )
        .bind(to_json(tags))
        .bind(id)
        .bind(workspace_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(created_at) = created_at else {
            return Err(StoreError::SandboxNotFound { id: id.to_owned() });
        };
        sqlx::query("DELETE FROM sandbox_tags WHERE sandbox_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let owner = TagOwner {
            sandbox_id: id,
            workspace_id,
            created_at,
        };
        insert_tag_rows(&mut tx, owner, tags).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// One page of a workspace's sandboxes matching `filter`, newest first
    /// (`created_at DESC, id DESC`).
    ///
    /// Every filter is an index lookup: the workspace and sort key use
    /// `sandboxes_list` (or `sandboxes_list_state` with a state filter),
    /// each tag is a probe of `sandbox_tags`' primary key, and the cursor
    /// is a range start on the sort key, so deep pages cost what the first
    /// does.
    pub async fn list_sandboxes(&self, filter: &ListFilter) -> Result<Page<SandboxRecord>> {
        let limit = match filter.limit {
            None => DEFAULT_PAGE_LIMIT,
            Some(n) if (1..=MAX_PAGE_LIMIT).contains(&n) => n,
            Some(_) => {
                return Err(StoreError::invalid(
                    "limit",
                    format!("must be 1 to {MAX_PAGE_LIMIT}"),
                ))
            }
        };
        let cursor = filter.cursor.as_deref().map(Cursor::decode).transpose()?;

        let mut qb = list_query(filter, cursor.as_ref(), limit);
        let rows: Vec<SandboxRow> =
            qb.build_query_as()
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::ListSandboxes {
                    operation: "page",
                    source,
                })?;
        let mut items = decode_all(rows)?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|last| {
                Cursor {
                    created_at: last.created_at,
                    id: last.id.clone(),
                }
                .encode()
            })
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    /// Every sandbox of every workspace that is `creating`, `running`,
    /// `paused` or `terminating`, oldest first: what a restarted server must
    /// reconcile.
    pub async fn list_unfinished(&self) -> Result<Vec<SandboxRecord>> {
        let rows: Vec<SandboxRow> = sqlx::query_as(select_sandboxes!(
            "WHERE state IN ('creating', 'running', 'paused', 'terminating') ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::ListSandboxes {
            operation: "unfinished",
            source,
        })?;
        decode_all(rows)
    }

    /// Image ids of every sandbox that has not ended (they must survive
    /// image removal and garbage collection).
    pub async fn live_image_ids(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT image_id FROM sandboxes \
             WHERE state != 'terminated' AND image_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::ListSandboxes {
            operation: "live image ids",
            source,
        })?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    /// How many sandboxes (all workspaces) are in each state, for metrics.
    pub async fn count_by_state(&self) -> Result<Vec<(SandboxState, i64)>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT state, COUNT(*) FROM sandboxes GROUP BY state")
                .fetch_all(&self.pool)
                .await
                .map_err(|source| StoreError::ListSandboxes {
                    operation: "count",
                    source,
                })?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| s.parse().ok().map(|s| (s, n)))
            .collect())
    }

    /// Running sandboxes (any workspace) whose deadline is at or before
    /// `now_ms`, or whose last activity plus idle timeout is. Each comes
    /// with the limit that passed first.
    pub async fn expired(&self, now_ms: i64) -> Result<Vec<ExpiredSandbox>> {
        let rows: Vec<SandboxRow> = sqlx::query_as(select_sandboxes!(
            "WHERE state = 'running' AND ( \
               (deadline_at IS NOT NULL AND deadline_at <= $1) \
               OR (idle_timeout_secs IS NOT NULL \
                   AND last_activity_at + idle_timeout_secs * 1000 <= $1)) \
             ORDER BY created_at, id"
        ))
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|source| StoreError::ListSandboxes {
            operation: "expired",
            source,
        })?;
        let expired = decode_all(rows)?
            .into_iter()
            .map(|sandbox| {
                let reason = match (sandbox.deadline_at, idle_deadline(&sandbox)) {
                    (Some(d), Some(i)) if i < d => TerminationReason::IdleTimeout,
                    (Some(d), _) if d <= now_ms => TerminationReason::Timeout,
                    _ => TerminationReason::IdleTimeout,
                };
                ExpiredSandbox { sandbox, reason }
            })
            .collect();
        Ok(expired)
    }
}

/// The page query of [`Store::list_sandboxes`]; fetches `limit + 1` rows.
fn list_query(filter: &ListFilter, cursor: Option<&Cursor>, limit: u32) -> QueryBuilder<Sqlite> {
    list_query_after(sandbox_columns!(), filter, cursor, limit)
}

/// The page query after a given head (`SELECT` and the columns, or in
/// tests `EXPLAIN QUERY PLAN` before them).
///
/// Without a tag filter the rows come from `sandboxes_list` (or
/// `sandboxes_list_state`) in page order. With one, the first tag drives:
/// its rows in `sandbox_tags_list` are already in page order for that
/// workspace, key and value, so the query stops after one page whether the
/// tag is rare or common; further tags are primary-key probes.
pub(crate) fn list_query_after(
    head: &str,
    filter: &ListFilter,
    cursor: Option<&Cursor>,
    limit: u32,
) -> QueryBuilder<Sqlite> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(head);
    let mut tags = filter.tags.iter();
    // The sort key's columns: the driving table's copy of them.
    let (created_at, id) = match tags.next() {
        None => {
            qb.push("FROM sandboxes s WHERE s.workspace_id = ")
                .push_bind(filter.workspace_id.clone());
            ("s.created_at", "s.id")
        }
        Some((k, v)) => {
            qb.push("FROM sandbox_tags d JOIN sandboxes s ON s.id = d.sandbox_id WHERE d.workspace_id = ")
                .push_bind(filter.workspace_id.clone())
                .push(" AND d.key = ")
                .push_bind(k.clone())
                .push(" AND d.value = ")
                .push_bind(v.clone())
                // Implied by the copy; stated so that no row of another
                // workspace can match even if the copy were wrong.
                .push(" AND s.workspace_id = ")
                .push_bind(filter.workspace_id.clone());
            ("d.created_at", "d.sandbox_id")
        }
    };
    if let Some(state) = filter.state {
        qb.push(" AND s.state = ").push_bind(state.as_str());
    }
    if let Some(name) = &filter.name {
        qb.push(" AND s.name = ").push_bind(name.clone());
    }
    for (k, v) in tags {
        qb.push(" AND EXISTS (SELECT 1 FROM sandbox_tags t WHERE t.sandbox_id = s.id AND t.key = ")
            .push_bind(k.clone())
            .push(" AND t.value = ")
            .push_bind(v.clone())
            .push(")");
    }
    if let Some(c) = cursor {
        // `created_at <= c` bounds the index range; the OR breaks ties.
        qb.push(format_args!(" AND {created_at} <= "))
            .push_bind(c.created_at)
            .push(format_args!(" AND ({created_at} < "))
            .push_bind(c.created_at)
            .push(format_args!(" OR {id} < "))
            .push_bind(c.id.clone())
            .push(")");
    }
    // One extra row tells whether another page exists.
    qb.push(format_args!(
        " ORDER BY {created_at} DESC, {id} DESC LIMIT "
    ))
    .push_bind(i64::from(limit) + 1);
    qb
}

/// When the idle timeout passes, given the last activity.
fn idle_deadline(sandbox: &SandboxRecord) -> Option<i64> {
    let secs = i64::try_from(sandbox.spec.idle_timeout_secs?).ok()?;
    sandbox
        .last_activity_at
        .checked_add(secs.checked_mul(1000)?)
}
