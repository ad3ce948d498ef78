//! Blocking client for the agent's unix socket: one request, one typed reply.
//!
//! Blocking on purpose: the CNI plugin is a short-lived process that must stay small,
//! and async callers run it on a blocking thread.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::wire::Call;

/// A reply line longer than this is refused: a client's memory is bounded even if the
/// socket is not the agent (the largest real reply, `endpoint` of a pod with big
/// tables, is far below it).
pub const MAX_REPLY_BYTES: usize = 64 << 20;

/// Why a call to the agent failed. `Unreachable`, `Timeout` and `Busy` are retryable;
/// every variant means "the agent did not confirm".
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
    /// The socket exists but this process may not connect to it (connecting to a unix
    /// socket needs write permission on its file). Not retryable: waiting does not
    /// change who may connect.
    #[error("agent socket {path}: permission denied ({why})")]
    PermissionDenied {
        /// The socket path.
        path: PathBuf,
        /// The socket's mode, owner and group, and what that means.
        why: String,
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
    /// The reply line was longer than [`MAX_REPLY_BYTES`].
    #[error("agent reply longer than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: usize,
    },
    /// The agent answered something that is not a reply to this request.
    #[error("agent reply does not decode at `{path}`: {message}; reply: {line:.200}")]
    Malformed {
        /// The field path where decoding failed (`.` for the whole line).
        path: String,
        /// What was wrong there.
        message: String,
        /// What was read (shown cut to 200 characters).
        line: String,
    },
    /// The agent answered `ok: false`: the request must change to succeed.
    #[error("{0}")]
    Refused(String),
    /// The agent answered `ok: false, retryable: true`: not now, but the same request
    /// may succeed later (the agent is still listing its source, the node is full...).
    #[error("{0}")]
    Busy(String),
}

impl ClientError {
    /// Whether calling again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Timeout { .. } | ClientError::Busy(_)
        )
    }
}

/// Sends `call` and waits for its typed reply, spending at most `timeout` in total
/// (connect, write and read together).
pub fn call<C: Call>(socket: &Path, call: &C, timeout: Duration) -> Result<C::Reply, ClientError> {
    let line = exchange(socket, call, timeout)?;
    decode::<C>(&line)
}

/// Decodes one reply line for `C`: `ok: false` is [`ClientError::Refused`], anything
/// that is not `C::Reply` is [`ClientError::Malformed`] naming the field.
pub fn decode<C: Call>(line: &str) -> Result<C::Reply, ClientError> {
    let line = line.trim_end();
    let malformed = |path: String, message: String| ClientError::Malformed {
        path,
        message,
        line: line.to_owned(),
    };
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| malformed(".".into(), e.to_string()))?;
    match v.get("ok").and_then(|o| o.as_bool()) {
        Some(true) => {}
        Some(false) => {
            let why = v
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("the agent refused the request")
                .to_owned();
            return Err(match v.get("retryable").and_then(|r| r.as_bool()) {
                Some(true) => ClientError::Busy(why),
                _ => ClientError::Refused(why),
            });
        }
        None => return Err(malformed("ok".into(), "missing or not a boolean".into())),
    }
    serde_path_to_error::deserialize(v)
        .map_err(|e| malformed(e.path().to_string(), e.inner().to_string()))
}

/// Connects to the agent's socket; a refused permission is told apart from an agent
/// that is not there, with what the socket file allows.
fn connect(socket: &Path) -> Result<UnixStream, ClientError> {
    UnixStream::connect(socket).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClientError::PermissionDenied {
                path: socket.to_owned(),
                why: permission_why(socket),
                source,
            }
        } else {
            ClientError::Unreachable {
                path: socket.to_owned(),
                source,
            }
        }
    })
}

/// Why a connect to `socket` may be refused: its mode, owner and group as the file
/// says (or why they could not be read: a directory on the way that denies search).
fn permission_why(socket: &Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(socket) {
        Ok(m) => format!(
            "mode {:04o}, owner uid {}, group gid {}: connecting needs write permission on \
             the socket file, so only {} may connect",
            m.mode() & 0o7777,
            m.uid(),
            m.gid(),
            if m.mode() & 0o020 != 0 {
                "root, its owner and its group"
            } else {
                "root and its owner"
            }
        ),
        Err(e) => format!("its file cannot be read: {e}"),
    }
}

/// Connects, writes the request line, and reads one reply line within the budget.
fn exchange<C: Call>(socket: &Path, call: &C, timeout: Duration) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    let stream = connect(socket)?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|r| !r.is_zero())
            .ok_or(ClientError::Timeout { timeout })
    };
    stream
        .set_write_timeout(Some(remaining()?))
        .map_err(ClientError::Io)?;
    let mut line = serde_json::to_vec(&call.request()).expect("requests always serialize");
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .map_err(|e| io_or_timeout(e, timeout))?;
    // One request per connection: closing our side tells the agent nothing else comes.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reader = BufReader::new((&stream).take(MAX_REPLY_BYTES as u64 + 1));
    let mut answer = Vec::new();
    loop {
        stream
            .set_read_timeout(Some(remaining()?))
            .map_err(ClientError::Io)?;
        match reader.read_until(b'\n', &mut answer) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_or_timeout(e, timeout)),
        }
    }
    if answer.len() > MAX_REPLY_BYTES {
        return Err(ClientError::TooLarge {
            limit: MAX_REPLY_BYTES,
        });
    }
    if answer.is_empty() {
        return Err(ClientError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "agent closed the connection without answering",
        )));
    }
    String::from_utf8(answer).map_err(|e| ClientError::Malformed {
        path: ".".into(),
        message: format!("not UTF-8: {e}"),
        line: String::new(),
    })
}

/// Sends a streaming request (`flows`) and calls `each` with every line (without its
/// newline) until the agent or `each` ends the stream (`each` returns false). Each line
/// is bounded by [`MAX_REPLY_BYTES`]; an error reply (`{"ok":false,...}`) is
/// [`ClientError::Refused`], not a record. No overall deadline: a followed stream lasts
/// as long as the caller wants it.
pub fn stream(
    socket: &Path,
    req: &crate::wire::Request,
    mut each: impl FnMut(&str) -> bool,
) -> Result<(), ClientError> {
    let stream = connect(socket)?;
    let mut line = serde_json::to_vec(req).expect("requests always serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(ClientError::Io)?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut reader = BufReader::new(&stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_REPLY_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(ClientError::Io)?;
        if n == 0 {
            return Ok(());
        }
        if buf.len() > MAX_REPLY_BYTES {
            return Err(ClientError::TooLarge {
                limit: MAX_REPLY_BYTES,
            });
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim_end_matches('\n');
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
            if v.get("ok").and_then(|o| o.as_bool()) == Some(false) {
                return Err(ClientError::Refused(
                    v.get("error")
                        .and_then(|e| e.as_str())
                        .unwrap_or("the agent refused the request")
                        .to_owned(),
                ));
            }
        }
        if !each(text) {
            return Ok(());
        }
    }
}

fn io_or_timeout(e: std::io::Error, timeout: Duration) -> ClientError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::Timeout { timeout }
        }
        _ => ClientError::Io(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Metrics, Status, Sync};

    #[test]
    fn a_status_reply_missing_a_field_is_an_error_naming_it() {
        let line = r#"{"ok":true,"data":{"passes":1,"generation":2,"last_pass_stages":{"load":0,"compile":0,"attach":0,"sync":0},"last_error":null,"errors":[],"warnings":[],"endpoints":{"x/a":{"interface":"v","ifindex":"seven","ips":[],"generation_in_force":null,"enforced":null}},"datapath":{"events":null,"revoke_established":null,"policy_epoch":null,"pin_root":"/x","adopted_pins":false,"endpoints_in_kernel":0,"policy_entries":0}}}"#;
        match decode::<Status>(line) {
            Err(ClientError::Malformed { path, .. }) => {
                assert_eq!(path, "data.endpoints.x/a.ifindex")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn refusals_and_non_replies_are_errors() {
        match decode::<Sync>(r#"{"ok":false,"error":"boom"}"#) {
            Err(ClientError::Refused(m)) => assert_eq!(m, "boom"),
            other => panic!("{other:?}"),
        }
        // A refusal the agent marks retryable is one the caller may retry, unchanged.
        let busy = serde_json::to_string(&crate::wire::Reply::failure("listing", true)).unwrap();
        match decode::<Sync>(&busy) {
            Err(e @ ClientError::Busy(_)) => assert!(e.retryable(), "{e}"),
            other => panic!("{busy}: {other:?}"),
        }
        assert!(!decode::<Sync>(r#"{"ok":false,"error":"boom"}"#)
            .unwrap_err()
            .retryable());
        assert!(matches!(
            decode::<Metrics>(r#"{"data":"x"}"#),
            Err(ClientError::Malformed { .. })
        ));
        assert_eq!(
            decode::<Metrics>(r##"{"ok":true,"data":"# x\n"}"##)
                .unwrap()
                .data,
            "# x\n"
        );
    }

    #[test]
    fn a_reply_past_the_bound_is_refused_without_reading_it_all() {
        let dir = std::env::temp_dir().join(format!("palisade-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("big.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let chunk = vec![b'x'; 1 << 20];
            // Without a newline, more than the bound: the client must stop reading.
            for _ in 0..(MAX_REPLY_BYTES >> 20) + 2 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let r = call(&socket, &Status, Duration::from_secs(30));
        assert!(matches!(r, Err(ClientError::TooLarge { .. })), "{r:?}");
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
