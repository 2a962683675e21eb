//! Networking records: relay port assignments, connect token metadata and
//! egress policy updates.

use sqlx::Row;

use crate::error::{is_unique_violation, Result, StoreError};
use crate::store::Store;
use crate::types::{ConnectTokenRecord, NetworkSpec, RelayPort};

/// Maps a query's error to `UpdateSandbox` (the sandbox's own tables).
pub(crate) fn db(operation: &'static str, id: &str) -> impl FnOnce(sqlx::Error) -> StoreError {
    let id = id.to_owned();
    move |source| StoreError::UpdateSandbox {
        id,
        operation,
        source,
    }
}

impl Store {
    /// Assigns a free relay port from `range` (inclusive) to each of the
    /// sandbox's `ports`, in one transaction. Returns the assignments in
    /// the order of `ports`. An assignment lasts until
    /// [`Store::release_relay_ports`] (called when the sandbox ends).
    /// Fails with `capacity` (`invalid_argument` code) when the range is
    /// full.
    pub async fn assign_relay_ports(
        &self,
        sandbox_id: &str,
        ports: &[u16],
        range: (u16, u16),
    ) -> Result<Vec<RelayPort>> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let (lo, hi) = range;
        if lo == 0 || lo > hi {
            return Err(StoreError::invalid(
                "relay port range",
                format!("{lo}-{hi}"),
            ));
        }
        let err = db("assign relay ports", sandbox_id);
        let mut tx = self.begin_write().await.map_err(err)?;
        let used: Vec<i64> = sqlx::query_scalar(
            "SELECT relay_port FROM relay_ports WHERE relay_port BETWEEN $1 AND $2",
        )
        .bind(i64::from(lo))
        .bind(i64::from(hi))
        .fetch_all(&mut *tx)
        .await
        .map_err(db("assign relay ports", sandbox_id))?;
        let used: std::collections::HashSet<u16> = used
            .into_iter()
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        // Start at a random point so that a just-freed port is not handed
        // straight to the next sandbox (a stale client would reach it).
        let span = u32::from(hi - lo) + 1;
        let start = rand::random_range(0..span);
        let mut free = (0..span)
            .map(|i| lo + ((start + i) % span) as u16)
            .filter(|p| !used.contains(p));
        let mut out = Vec::with_capacity(ports.len());
        for &port in ports {
            let Some(relay_port) = free.next() else {
                return Err(StoreError::invalid(
                    "relay port range",
                    format!("all {span} relay ports ({lo}-{hi}) are in use"),
                ));
            };
            sqlx::query(
                "INSERT INTO relay_ports (relay_port, sandbox_id, port) VALUES ($1, $2, $3)",
            )
            .bind(i64::from(relay_port))
            .bind(sandbox_id)
            .bind(i64::from(port))
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::invalid("relay port", format!("{relay_port} is taken"))
                } else {
                    db("assign relay ports", sandbox_id)(e)
                }
            })?;
            out.push(RelayPort {
                relay_port,
                sandbox_id: sandbox_id.to_owned(),
                port,
            });
        }
        tx.commit()
            .await
            .map_err(db("assign relay ports", sandbox_id))?;
        Ok(out)
    }

    /// Frees the sandbox's relay ports.
    pub async fn release_relay_ports(&self, sandbox_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM relay_ports WHERE sandbox_id = $1")
            .bind(sandbox_id)
            .execute(&self.pool)
            .await
            .map_err(db("release relay ports", sandbox_id))?;
        Ok(())
    }

    /// The sandbox's relay ports.
    pub async fn relay_ports_of(&self, sandbox_id: &str) -> Result<Vec<RelayPort>> {
        let rows = sqlx::query(
            "SELECT relay_port, sandbox_id, port FROM relay_ports WHERE sandbox_id = $1 \
             ORDER BY relay_port",
        )
        .bind(sandbox_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read relay ports", sandbox_id))?;
        rows.iter().map(relay_port_row).collect()
    }

    /// Every relay port assigned to a sandbox that is running.
    pub async fn live_relay_ports(&self) -> Result<Vec<RelayPort>> {
        let rows = sqlx::query(
            "SELECT r.relay_port, r.sandbox_id, r.port FROM relay_ports r \
             JOIN sandboxes s ON s.id = r.sandbox_id WHERE s.state = 'running' \
             ORDER BY r.relay_port",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read relay ports", "*"))?;
        rows.iter().map(relay_port_row).collect()
    }

    /// Replaces the egress part of a sandbox's network spec (ports and
    /// probe stay). Returns the new spec, or `None` when there is no such
    /// sandbox in the workspace.
    pub async fn update_network(
        &self,
        workspace_id: &str,
        sandbox_id: &str,
        block_network: bool,
        allowlist: Option<Vec<String>>,
    ) -> Result<Option<NetworkSpec>> {
        let spec = self
            .modify_spec(sandbox_id, Some(workspace_id), "update network", |spec| {
                spec.network.block_network = block_network;
                spec.network.outbound_cidr_allowlist = allowlist;
            })
            .await?;
        Ok(spec.map(|s| s.network))
    }

    /// Records a minted connect token's metadata.
    pub async fn insert_connect_token(&self, t: &ConnectTokenRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO connect_tokens (id, sandbox_id, workspace_id, port, created_at, \
             expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, NULL)",
        )
        .bind(&t.id)
        .bind(&t.sandbox_id)
        .bind(&t.workspace_id)
        .bind(i64::from(t.port))
        .bind(t.created_at)
        .bind(t.expires_at)
        .execute(&self.pool)
        .await
        .map_err(db("insert connect token", &t.sandbox_id))?;
        Ok(())
    }

    /// The sandbox's connect tokens, oldest first.
    pub async fn list_connect_tokens(
        &self,
        workspace_id: &str,
        sandbox_id: &str,
    ) -> Result<Vec<ConnectTokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, sandbox_id, workspace_id, port, created_at, expires_at, revoked_at \
             FROM connect_tokens WHERE sandbox_id = $1 AND workspace_id = $2 \
             ORDER BY created_at, id",
        )
        .bind(sandbox_id)
        .bind(workspace_id)
        .fetch_all(&self.pool)
        .await
        .map_err(db("list connect tokens", sandbox_id))?;
        rows.iter().map(connect_token_row).collect()
    }

    /// Revokes a connect token. Returns whether it existed (in this
    /// workspace and sandbox); revoking twice keeps the first time.
    pub async fn revoke_connect_token(
        &self,
        workspace_id: &str,
        sandbox_id: &str,
        token_id: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE connect_tokens SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND sandbox_id = $3 AND workspace_id = $4",
        )
        .bind(self.now())
        .bind(token_id)
        .bind(sandbox_id)
        .bind(workspace_id)
        .execute(&self.pool)
        .await
        .map_err(db("revoke connect token", sandbox_id))?;
        Ok(r.rows_affected() == 1)
    }

    /// Ids of the sandbox's revoked tokens that have not expired yet (an
    /// expired token is refused anyway, so the list stays short).
    pub async fn revoked_connect_tokens(&self, sandbox_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT id FROM connect_tokens WHERE sandbox_id = $1 AND revoked_at IS NOT NULL \
             AND expires_at > $2 ORDER BY id",
        )
        .bind(sandbox_id)
        .bind(self.now())
        .fetch_all(&self.pool)
        .await
        .map_err(db("read revoked connect tokens", sandbox_id))
    }
}

fn relay_port_row(r: &sqlx::sqlite::SqliteRow) -> Result<RelayPort> {
    let bad = |what: &str| StoreError::DecodeRow {
        table: "relay_ports",
        id: r.try_get::<String, _>("sandbox_id").unwrap_or_default(),
        reason: format!("{what} out of range"),
    };
    Ok(RelayPort {
        relay_port: u16::try_from(
            r.try_get::<i64, _>("relay_port")
                .map_err(|_| bad("relay_port"))?,
        )
        .map_err(|_| bad("relay_port"))?,
        sandbox_id: r.try_get("sandbox_id").map_err(|_| bad("sandbox_id"))?,
        port: u16::try_from(r.try_get::<i64, _>("port").map_err(|_| bad("port"))?)
            .map_err(|_| bad("port"))?,
    })
}

fn connect_token_row(r: &sqlx::sqlite::SqliteRow) -> Result<ConnectTokenRecord> {
    let bad = |what: &str| StoreError::DecodeRow {
        table: "connect_tokens",
        id: r.try_get::<String, _>("id").unwrap_or_default(),
        reason: format!("{what} unreadable"),
    };
    Ok(ConnectTokenRecord {
        id: r.try_get("id").map_err(|_| bad("id"))?,
        sandbox_id: r.try_get("sandbox_id").map_err(|_| bad("sandbox_id"))?,
        workspace_id: r.try_get("workspace_id").map_err(|_| bad("workspace_id"))?,
        port: u16::try_from(r.try_get::<i64, _>("port").map_err(|_| bad("port"))?)
            .map_err(|_| bad("port"))?,
        created_at: r.try_get("created_at").map_err(|_| bad("created_at"))?,
        expires_at: r.try_get("expires_at").map_err(|_| bad("expires_at"))?,
        revoked_at: r.try_get("revoked_at").map_err(|_| bad("revoked_at"))?,
    })
}

#[cfg(test)]
mod tests {
    use crate::types::{NewSandbox, SandboxSpec, LOCAL_NODE_ID};
    use crate::{ConnectTokenRecord, Store};

    async fn store_with_sandbox(id: &str) -> (Store, String) {
        let store = Store::open_in_memory().await.unwrap();
        let ws = store.create_workspace("w").await.unwrap();
        store
            .insert_sandbox(&NewSandbox {
                id: id.into(),
                workspace_id: ws.id.clone(),
                name: None,
                image: "host".into(),
                spec: SandboxSpec::default(),
                tags: Default::default(),
                node_id: LOCAL_NODE_ID.into(),
            })
            .await
            .unwrap();
        (store, ws.id)
    }

    #[tokio::test]
    async fn relay_ports_are_unique_and_freed() {
        let (store, _) = store_with_sandbox("sb-a").await;
        let got = store
            .assign_relay_ports("sb-a", &[22, 5432], (40000, 40002))
            .await
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_ne!(got[0].relay_port, got[1].relay_port);
        let more = store
            .assign_relay_ports("sb-a", &[1, 2], (40000, 40002))
            .await;
        assert!(more.is_err(), "only one port left in the range");
        assert_eq!(store.relay_ports_of("sb-a").await.unwrap().len(), 2);
        assert!(
            store.live_relay_ports().await.unwrap().is_empty(),
            "not running"
        );
        store.mark_running("sb-a").await.unwrap();
        assert_eq!(store.live_relay_ports().await.unwrap().len(), 2);
        store.release_relay_ports("sb-a").await.unwrap();
        assert!(store.relay_ports_of("sb-a").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn connect_tokens_revoke_and_network_update() {
        let (store, ws) = store_with_sandbox("sb-b").await;
        let now = store.now();
        for (id, exp) in [("ct-1", now + 60_000), ("ct-2", now - 1)] {
            store
                .insert_connect_token(&ConnectTokenRecord {
                    id: id.into(),
                    sandbox_id: "sb-b".into(),
                    workspace_id: ws.clone(),
                    port: 3000,
                    created_at: now,
                    expires_at: exp,
                    revoked_at: None,
                })
                .await
                .unwrap();
        }
        assert!(store
            .revoke_connect_token(&ws, "sb-b", "ct-1")
            .await
            .unwrap());
        assert!(store
            .revoke_connect_token(&ws, "sb-b", "ct-2")
            .await
            .unwrap());
        assert!(!store
            .revoke_connect_token("ws-other", "sb-b", "ct-1")
            .await
            .unwrap());
        assert!(!store
            .revoke_connect_token(&ws, "sb-b", "ct-9")
            .await
            .unwrap());
        // The expired one is not listed as revoked: it is refused anyway.
        assert_eq!(
            store.revoked_connect_tokens("sb-b").await.unwrap(),
            vec!["ct-1"]
        );
        assert_eq!(
            store.list_connect_tokens(&ws, "sb-b").await.unwrap().len(),
            2
        );

        let net = store
            .update_network(&ws, "sb-b", false, Some(vec!["1.2.3.0/24".into()]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(net.outbound_cidr_allowlist.as_deref().unwrap().len(), 1);
        let rec = store.get_sandbox(&ws, "sb-b").await.unwrap().unwrap();
        assert_eq!(rec.spec.network, net);
        assert!(store
            .update_network("ws-other", "sb-b", true, None)
            .await
            .unwrap()
            .is_none());
    }
}
