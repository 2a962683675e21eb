//! Background exec calls (`/v1/sandboxes/{id}/execs`); attaching is
//! [`Client::attach_exec`] in the stream module.

use reqwest::Method;
use warren_proto::api::{BackgroundExec, BackgroundExecList, SignalRequest, StreamExecStart};

use crate::{Client, ClientError};

impl Client {
    /// `POST /v1/sandboxes/{id}/execs`: starts a background exec.
    pub async fn start_background_exec(
        &self,
        id: &str,
        start: &StreamExecStart,
    ) -> Result<BackgroundExec, ClientError> {
        let rb = self
            .request(Method::POST, &["v1", "sandboxes", id, "execs"])?
            .json(start);
        self.send(rb).await
    }

    /// `GET /v1/sandboxes/{id}/execs`
    pub async fn list_background_execs(
        &self,
        id: &str,
    ) -> Result<Vec<BackgroundExec>, ClientError> {
        let rb = self.request(Method::GET, &["v1", "sandboxes", id, "execs"])?;
        let list: BackgroundExecList = self.send(rb).await?;
        Ok(list.execs)
    }

    /// `GET /v1/sandboxes/{id}/execs/{exec_id}`
    pub async fn get_background_exec(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<BackgroundExec, ClientError> {
        let rb = self.request(Method::GET, &["v1", "sandboxes", id, "execs", exec_id])?;
        self.send(rb).await
    }

    /// `GET .../execs/{exec_id}/output`: the buffered output and how many
    /// older bytes it no longer holds.
    pub async fn background_exec_output(
        &self,
        id: &str,
        exec_id: &str,
        tail: Option<u64>,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let mut rb = self.request(
            Method::GET,
            &["v1", "sandboxes", id, "execs", exec_id, "output"],
        )?;
        if let Some(t) = tail {
            rb = rb.query(&[("tail", t)]);
        }
        self.bytes_and_count(rb, "x-warren-output-skipped").await
    }

    /// `POST .../execs/{exec_id}/signal`
    pub async fn signal_background_exec(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
    ) -> Result<(), ClientError> {
        let rb = self
            .request(
                Method::POST,
                &["v1", "sandboxes", id, "execs", exec_id, "signal"],
            )?
            .json(&SignalRequest { signal });
        self.send_bytes(rb).await.map(|_| ())
    }

    /// `DELETE .../execs/{exec_id}`: kills it if running, and forgets it.
    pub async fn kill_background_exec(&self, id: &str, exec_id: &str) -> Result<(), ClientError> {
        let rb = self.request(Method::DELETE, &["v1", "sandboxes", id, "execs", exec_id])?;
        self.send_bytes(rb).await.map(|_| ())
    }
}
