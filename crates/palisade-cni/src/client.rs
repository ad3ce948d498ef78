//! Blocking client for the agent's unix socket (see [`crate::protocol`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::protocol::{Request, Response};

/// Why a call to the agent failed. Every variant means "the agent did not confirm":
/// the caller decides by its fail policy; `Unreachable` and `Timeout` are retryable.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens on the socket (agent down or not yet started).
    #[error("agent socket {path} unreachable")]
    Unreachable {
        /// The socket path.
        path: PathBuf,
        /// The connect error.
        #[source]
        source: std::io::Error,
    },
    /// The agent did not answer in time.
    #[error("agent did not answer within {} ms", .timeout.as_millis())]
    Timeout {
        /// The budget that ran out.
        timeout: Duration,
    },
    /// Reading or writing the connection failed.
    #[error("talking to the agent")]
    Io(#[source] std::io::Error),
    /// The agent answered something that is not a [`Response`].
    #[error("agent answered malformed JSON: {line:?}")]
    Malformed {
        /// What was read.
        line: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
}

/// Sends `req` and waits for the answer, spending at most `timeout` in total
/// (connect, write and read together).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Unreachable {
        path: socket.to_owned(),
        source,
    })?;
    let remaining = |d: Instant| {
        d.checked_duration_since(Instant::now())
            .filter(|r| !r.is_zero())
            .ok_or(ClientError::Timeout { timeout })
    };
    stream
        .set_write_timeout(Some(remaining(deadline)?))
        .map_err(ClientError::Io)?;
    let mut line = serde_json::to_string(req).expect("requests always serialize");
    line.push('\n');
    (&stream)
        .write_all(line.as_bytes())
        .map_err(|e| io_or_timeout(e, timeout))?;
    stream
        .set_read_timeout(Some(remaining(deadline)?))
        .map_err(ClientError::Io)?;
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    reader
        .read_line(&mut answer)
        .map_err(|e| io_or_timeout(e, timeout))?;
    if answer.is_empty() {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "agent closed the connection without answering",
        )));
    }
    serde_json::from_str(answer.trim_end()).map_err(|source| ClientError::Malformed {
        line: answer.trim_end().to_owned(),
        source,
    })
}

fn io_or_timeout(e: std::io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::Timeout { timeout }
        }
        _ => ClientError::Io(e),
    }
}
