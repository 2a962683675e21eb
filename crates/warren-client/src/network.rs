//! Networking calls: tunnels, connect tokens, readiness and the egress
//! policy of a running sandbox.
//!
//! API errors keep the server's stable codes; the ones particular to these
//! endpoints are `port_not_exposed` (400), `network_unavailable` (409),
//! `not_ready` (408, from [`Client::wait_ready`]), `sandbox_terminated`
//! (409) and `relay_unavailable` (503, the server runs without a relay).

use std::time::Duration;

use reqwest::Method;
use warren_proto::api::{
    ConnectToken, ConnectTokenInfo, ConnectTokenList, ConnectTokenRequest, ReadyStatus, Sandbox,
    TunnelList, UpdateNetworkRequest,
};

use crate::{Client, ClientError, LONG_REQUEST_SLACK, MAX_WAIT_SECS};

/// Outcome of [`Client::wait_ready`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The readiness probe passed (or the sandbox has none and runs).
    Ready,
    /// The timeout passed first (the server answered `not_ready`).
    NotReady,
}

impl Client {
    /// `GET /v1/sandboxes/{id}/tunnels`: every exposed port's URL and
    /// endpoints, and the CA that signs the relay's certificate.
    pub async fn tunnels(&self, id: &str) -> Result<TunnelList, ClientError> {
        let rb = self.request(Method::GET, &["v1", "sandboxes", id, "tunnels"])?;
        self.send(rb).await
    }

    /// `POST /v1/sandboxes/{id}/connect-token`: mints a token for one
    /// HTTPS/H2 port (the secret is returned only here).
    pub async fn create_connect_token(
        &self,
        id: &str,
        req: &ConnectTokenRequest,
    ) -> Result<ConnectToken, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "connect-token"])?
            .json(req);
        self.send(rb).await
    }

    /// `GET /v1/sandboxes/{id}/connect-tokens`: metadata of the sandbox's
    /// tokens (never the secrets).
    pub async fn list_connect_tokens(
        &self,
        id: &str,
    ) -> Result<Vec<ConnectTokenInfo>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "sandboxes", id, "connect-tokens"])?;
        let list: ConnectTokenList = self.send(rb).await?;
        Ok(list.tokens)
    }

    /// `DELETE /v1/sandboxes/{id}/connect-tokens/{token_id}`: the relay
    /// refuses the token from then on (within its route cache's lifetime).
    pub async fn revoke_connect_token(&self, id: &str, token_id: &str) -> Result<(), ClientError> {
        let rb = self.request(
            Method::DELETE,
            &["v1", "sandboxes", id, "connect-tokens", token_id],
        )?;
        self.send_bytes(rb).await.map(|_| ())
    }

    /// `GET /v1/sandboxes/{id}/wait-ready`: waits up to `timeout` (clamped
    /// to [`MAX_WAIT_SECS`]) for the readiness probe to pass. A timeout is
    /// [`Readiness::NotReady`], not an error; a sandbox that has ended is
    /// the error `sandbox_terminated`.
    pub async fn wait_ready(&self, id: &str, timeout: Duration) -> Result<Readiness, ClientError> {
        let secs = timeout.as_secs().min(MAX_WAIT_SECS);
        let rb = self
            .request(Method::GET, &["v1", "sandboxes", id, "wait-ready"])?
            .query(&[("timeout_secs", secs)])
            .timeout(Duration::from_secs(secs) + LONG_REQUEST_SLACK);
        match self.send::<ReadyStatus>(rb).await {
            Ok(s) if s.ready => Ok(Readiness::Ready),
            Ok(_) => Ok(Readiness::NotReady),
            Err(e) if e.code() == "not_ready" => Ok(Readiness::NotReady),
            Err(e) => Err(e),
        }
    }

    /// `PATCH /v1/sandboxes/{id}/network`: changes the egress policy of a
    /// running sandbox; absent fields keep their value.
    pub async fn update_network(
        &self,
        id: &str,
        req: &UpdateNetworkRequest,
    ) -> Result<Sandbox, ClientError> {
        let rb = self
            .request(Method::PATCH, &["v1", "sandboxes", id, "network"])?
            .json(req);
        self.send(rb).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{one_shot, response};

    #[tokio::test]
    async fn create_passes_the_network_fields_through() {
        use warren_proto::api::{CreateSandboxRequest, PortSpec, ReadinessProbe};
        let (url, h) = one_shot(response(
            400,
            r#"{"error":{"code":"invalid_request","message":"x"}}"#,
        ))
        .await;
        let c = Client::new(&url, "tok").unwrap();
        let req = CreateSandboxRequest {
            encrypted_ports: vec![
                PortSpec::Port(3000),
                PortSpec::Detailed {
                    port: 3001,
                    require_token: true,
                },
            ],
            unencrypted_ports: vec![5432],
            outbound_cidr_allowlist: Some(vec!["203.0.113.0/24".into()]),
            readiness_probe: Some(ReadinessProbe::Tcp(3000)),
            ..Default::default()
        };
        let _ = c.create_sandbox(&req).await;
        let raw = h.await.unwrap();
        let body = &raw[raw.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            v["encrypted_ports"],
            serde_json::json!([3000, {"port": 3001, "require_token": true}])
        );
        assert_eq!(v["unencrypted_ports"], serde_json::json!([5432]));
        assert_eq!(v["readiness_probe"], serde_json::json!({"tcp": 3000}));
        assert_eq!(
            v["outbound_cidr_allowlist"],
            serde_json::json!(["203.0.113.0/24"])
        );
    }

    #[tokio::test]
    async fn tunnels_decode() {
        let body = r#"{"tunnels":[{"port":3000,"kind":"https","url":"https://sb-x-3000.warren.localhost:8443","host":"sb-x-3000.warren.localhost","tls":{"host":"sb-x-3000.warren.localhost","port":8443},"raw":null,"require_token":false}],"ca_fingerprint":"ab","ca_pem":null,"relay_connected":true}"#;
        let (url, h) = one_shot(response(200, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let t = c.tunnels("sb-x").await.unwrap();
        assert_eq!(t.tunnels[0].port, 3000);
        assert!(t.relay_connected);
        let req = h.await.unwrap();
        assert!(req.starts_with("GET /v1/sandboxes/sb-x/tunnels "), "{req}");
    }

    #[tokio::test]
    async fn relay_unavailable_keeps_its_code() {
        let body = r#"{"error":{"code":"relay_unavailable","message":"no relay"}}"#;
        let (url, _h) = one_shot(response(503, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let e = c.tunnels("sb-x").await.unwrap_err();
        assert_eq!(e.code(), "relay_unavailable");
        assert_eq!(e.status(), Some(503));
    }

    #[tokio::test]
    async fn connect_token_request_and_answer() {
        let body = r#"{"token_id":"ct_1","token":"wct_a.b","port":3000,"url":"https://h/?_warren_token=wct_a.b","expires_at":"2030-01-01T00:00:00Z"}"#;
        let (url, h) = one_shot(response(201, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let req = ConnectTokenRequest {
            port: 3000,
            user_data: Some("alice".into()),
            ttl_secs: Some(60),
        };
        let t = c.create_connect_token("sb-x", &req).await.unwrap();
        assert_eq!(t.token_id, "ct_1");
        let raw = h.await.unwrap();
        assert!(
            raw.starts_with("POST /v1/sandboxes/sb-x/connect-token "),
            "{raw}"
        );
        assert!(raw.contains(r#""user_data":"alice""#), "{raw}");
    }

    #[tokio::test]
    async fn revoke_sends_delete() {
        let (url, h) = one_shot(response(204, "")).await;
        let c = Client::new(&url, "tok").unwrap();
        c.revoke_connect_token("sb-x", "ct_1").await.unwrap();
        let raw = h.await.unwrap();
        assert!(
            raw.starts_with("DELETE /v1/sandboxes/sb-x/connect-tokens/ct_1 "),
            "{raw}"
        );
    }

    #[tokio::test]
    async fn wait_ready_maps_not_ready_to_a_value() {
        let body = r#"{"error":{"code":"not_ready","message":"not ready after 1s"}}"#;
        let (url, h) = one_shot(response(408, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let r = c.wait_ready("sb-x", Duration::from_secs(1)).await.unwrap();
        assert_eq!(r, Readiness::NotReady);
        let raw = h.await.unwrap();
        assert!(
            raw.starts_with("GET /v1/sandboxes/sb-x/wait-ready?timeout_secs=1 "),
            "{raw}"
        );

        let (url, _h) = one_shot(response(200, r#"{"ready":true}"#)).await;
        let c = Client::new(&url, "tok").unwrap();
        let r = c.wait_ready("sb-x", Duration::from_secs(1)).await.unwrap();
        assert_eq!(r, Readiness::Ready);

        let body = r#"{"error":{"code":"sandbox_terminated","message":"ended"}}"#;
        let (url, _h) = one_shot(response(409, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let e = c
            .wait_ready("sb-x", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), "sandbox_terminated");
    }

    #[tokio::test]
    async fn update_network_sends_null_to_clear() {
        let body = r#"{"error":{"code":"network_unavailable","message":"blocked at create"}}"#;
        let (url, h) = one_shot(response(409, body)).await;
        let c = Client::new(&url, "tok").unwrap();
        let req = UpdateNetworkRequest {
            block_network: None,
            outbound_cidr_allowlist: Some(None),
        };
        let e = c.update_network("sb-x", &req).await.unwrap_err();
        assert_eq!(e.code(), "network_unavailable");
        let raw = h.await.unwrap();
        assert!(
            raw.starts_with("PATCH /v1/sandboxes/sb-x/network "),
            "{raw}"
        );
        assert!(
            raw.ends_with(r#"{"outbound_cidr_allowlist":null}"#),
            "{raw}"
        );
    }
}
