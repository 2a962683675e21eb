//! Opening a stream to a sandbox port on whichever node holds it: directly
//! (in-process link) or over the node's link.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::link::server::{LinkOpenError, LinkRegistry};
use crate::link::StreamMode;
use crate::target::{BoxStream, OpenError, TunnelTarget};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DialError {
    #[error("node refused: {0}")]
    Open(#[from] OpenError),
    /// The node holding the sandbox has no link to this relay.
    #[error("node {0} is not connected")]
    NodeUnavailable(String),
    #[error("link broke: {0}")]
    LinkBroken(String),
    #[error("open timed out")]
    Timeout,
}

pub(crate) struct Dialer {
    local: RwLock<HashMap<String, Arc<dyn TunnelTarget>>>,
    pub(crate) links: Arc<LinkRegistry>,
    timeout: Duration,
}

impl Dialer {
    pub(crate) fn new(links: Arc<LinkRegistry>, timeout: Duration) -> Self {
        Dialer {
            local: RwLock::new(HashMap::new()),
            links,
            timeout,
        }
    }

    pub(crate) fn attach(&self, node_id: String, target: Arc<dyn TunnelTarget>) {
        self.local
            .write()
            .expect("local lock")
            .insert(node_id, target);
    }

    pub(crate) fn detach(&self, node_id: &str) {
        self.local.write().expect("local lock").remove(node_id);
    }

    pub(crate) async fn open(
        &self,
        node_id: &str,
        sandbox: &str,
        port: u16,
        mode: StreamMode,
    ) -> Result<BoxStream, DialError> {
        let local = self.local.read().expect("local lock").get(node_id).cloned();
        let fut = async {
            match local {
                Some(t) => t.open(sandbox, port).await.map_err(DialError::Open),
                None => self
                    .links
                    .open(node_id, sandbox, port, mode)
                    .await
                    .map_err(|e| match e {
                        LinkOpenError::NoLink => DialError::NodeUnavailable(node_id.to_string()),
                        LinkOpenError::Open(e) => DialError::Open(e),
                        LinkOpenError::Broken(e) => DialError::LinkBroken(e),
                    }),
            }
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| DialError::Timeout)?
    }
}
