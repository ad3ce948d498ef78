//! The agent's local API: JSON lines over a unix socket.
//!
//! One request per connection. Most requests get one JSON response line; `flows` with
//! `follow` streams one decision record per line until the client hangs up. The CNI
//! plugin (`register`/`unregister`), the CLI (`status`, `endpoint`, `flows`, `metrics`)
//! and the lab (`sync`) are the clients. The request shapes for `register` and
//! `unregister` are the CNI plugin's wire format (crate `palisade-cni`).

use std::path::Path;

use anyhow::Context;
pub use palisade_cni::protocol::PodEndpoint;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// A request to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// From the CNI plugin on ADD: enforce on this interface, answer once in force.
    Register(PodEndpoint),
    /// From the CNI plugin on DEL.
    Unregister(PodEndpoint),
    /// From the CNI plugin on CHECK: is this pod's policy in force?
    Check(PodEndpoint),
    /// Reload the desired state now and answer once it is in force.
    Sync {
        /// Rebuild the compiled state and resynchronise the whole datapath (what the
        /// agent does every 30 s and after a failed pass), instead of applying only
        /// what changed.
        #[serde(default)]
        full: bool,
    },
    /// Agent status: endpoints and the generation in force, errors, counters.
    Status,
    /// One endpoint in detail.
    Endpoint {
        /// `namespace/name`.
        pod: String,
    },
    /// Decision records: recent ones, then live ones if `follow`.
    Flows {
        /// Keep streaming.
        #[serde(default)]
        follow: bool,
        /// Only this pod (`namespace/name`).
        #[serde(default)]
        pod: Option<String>,
        /// Only this verdict (`allow` or `deny`).
        #[serde(default)]
        verdict: Option<String>,
    },
    /// Prometheus text exposition.
    Metrics,
}

/// Reply envelope: `{"ok":true, ...}` or `{"ok":false,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The error, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For register: the generation of the pod's policy now in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// For register/sync: whether the desired state is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_force: Option<bool>,
    /// Request-specific payload.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub data: serde_json::Value,
}

impl Reply {
    /// A success with a payload.
    pub fn data(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            generation: None,
            in_force: None,
            data,
        }
    }

    /// A failure.
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            generation: None,
            in_force: None,
            data: serde_json::Value::Null,
        }
    }
}

/// Connects and sends one request line; returns the reading half.
async fn send(
    socket: &Path,
    req: &Request,
) -> anyhow::Result<BufReader<tokio::net::unix::OwnedReadHalf>> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the agent at {}", socket.display()))?;
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    w.write_all(&line).await?;
    // One request per connection: closing our side tells the agent nothing else comes.
    w.shutdown().await.ok();
    Ok(BufReader::new(r))
}

/// Sends one request and reads one reply line.
pub async fn call(socket: &Path, req: &Request) -> anyhow::Result<Reply> {
    let mut reader = send(socket, req).await?;
    let mut reply = String::new();
    reader
        .read_line(&mut reply)
        .await
        .context("reading the agent's reply")?;
    if reply.is_empty() {
        anyhow::bail!("the agent closed the connection without replying");
    }
    let reply: Reply = serde_json::from_str(&reply).context("decoding the agent's reply")?;
    if !reply.ok {
        anyhow::bail!(
            "{}",
            reply
                .error
                .clone()
                .unwrap_or_else(|| "the agent refused the request".into())
        );
    }
    Ok(reply)
}

/// Sends a `flows` request and calls `each` for every record line until the agent or
/// `each` ends the stream (`each` returns false).
pub async fn stream_flows(
    socket: &Path,
    req: &Request,
    mut each: impl FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let mut lines = send(socket, req).await?.lines();
    while let Some(l) = lines.next_line().await? {
        if !each(&l) {
            break;
        }
    }
    Ok(())
}
