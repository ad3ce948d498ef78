//! The API socket's transport: a private socket file, and connections that cannot grow
//! the agent without bound. Every limit here has a default, so a stuck or hostile
//! client (a half-sent request, a line without a newline, thousands of idle
//! connections, the fd limit) costs bounded memory and CPU and never stops the agent
//! from serving the CNI plugin and the CLI.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::AbortHandle;

use crate::ratelog::RateLog;

/// Default [`ApiLimits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default [`ApiLimits::max_request_bytes`]: requests are a few hundred bytes.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Default [`ApiLimits::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`ApiLimits::write_timeout`].
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`ApiLimits::max_followers`].
pub const DEFAULT_MAX_FOLLOWERS: usize = 64;
/// Mode of the socket file: only root (the CNI plugin, the CLI) may connect.
pub const SOCKET_MODE: u32 = 0o600;

/// Bounds of the API socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Open connections at most. Beyond it a new connection evicts the oldest one
    /// still sending its request; if every connection is busy (a CNI ADD waiting for
    /// its policy, `flows --follow`), the new one is refused with an error reply.
    pub max_connections: usize,
    /// A request line longer than this is refused (memory per connection is bounded
    /// by it).
    pub max_request_bytes: usize,
    /// A request line must arrive in full within this time after the connection is
    /// accepted.
    pub request_timeout: Duration,
    /// A reply (or one streamed record) must be taken by the client within this time.
    pub write_timeout: Duration,
    /// `flows --follow` streams at most: they stay open, so without this bound they
    /// could take every connection and lock out the CNI plugin.
    pub max_followers: usize,
}

impl Default for ApiLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_followers: DEFAULT_MAX_FOLLOWERS,
        }
    }
}

/// Mode of the read-only socket: root and the group the chart sets may connect.
pub const READ_ONLY_SOCKET_MODE: u32 = 0o660;

/// Binds `path` with mode [`SOCKET_MODE`], whatever the umask (see [`bind_socket`]).
pub fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    bind_socket(path, SOCKET_MODE, None)
}

/// Binds `path` with `mode` and, if given, group `gid` (the owner is the agent's user,
/// root), whatever the umask: the socket is bound under a temporary name, its mode and
/// group set, then renamed into place, so no client can connect while it is still open
/// to others.
pub fn bind_socket(path: &Path, mode: u32, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("binding {}", tmp.display()))?;
    let placed = (|| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting the mode of {}", tmp.display()))?;
        if let Some(gid) = gid {
            std::os::unix::fs::chown(&tmp, None, Some(gid))
                .with_context(|| format!("setting the group of {} to {gid}", tmp.display()))?;
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("moving {} to {}", tmp.display(), path.display()))
    })();
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed.map(|()| listener)
}

/// A group as `--read-only-group` takes it: a number, or a name looked up in the
/// system's group database.
pub fn resolve_group(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)
        .map_err(|_| anyhow::anyhow!("group {group:?}: contains a NUL byte"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: every pointer is valid for the call; `buf` outlives `entry`, whose
        // fields point into it, and only `gr_gid` (a plain integer) is read.
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut entry,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => anyhow::bail!("group {group:?}: no such group"),
            0 => return Ok(entry.gr_gid),
            libc::ERANGE if buf.len() < 1 << 20 => buf.resize(buf.len() * 2, 0),
            e => anyhow::bail!(
                "group {group:?}: looking it up failed: {}",
                io::Error::from_raw_os_error(e)
            ),
        }
    }
}

/// Why a request line could not be read.
#[derive(Debug)]
pub enum RequestError {
    /// The client closed before sending anything.
    Empty,
    /// Longer than [`ApiLimits::max_request_bytes`] without a newline.
    TooLarge(usize),
    /// Not complete within [`ApiLimits::request_timeout`].
    Timeout(Duration),
    /// Not UTF-8.
    NotText,
    /// The socket failed.
    Io(io::Error),
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestError::Empty => write!(f, "empty request"),
            RequestError::TooLarge(n) => {
                write!(f, "request larger than {n} bytes (one JSON line expected)")
            }
            RequestError::Timeout(t) => write!(
                f,
                "request not complete within {} ms (one JSON line expected)",
                t.as_millis()
            ),
            RequestError::NotText => write!(f, "request is not UTF-8"),
            RequestError::Io(e) => write!(f, "reading the request: {e}"),
        }
    }
}

/// Reads one request line (a line without a newline at end of input counts), reading
/// at most `max_request_bytes + 1` bytes and waiting at most `request_timeout`.
pub async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limits: &ApiLimits,
) -> Result<String, RequestError> {
    let mut buf = Vec::new();
    let max = limits.max_request_bytes;
    let read = async {
        let mut limited = reader.take(max as u64 + 1);
        limited.read_until(b'\n', &mut buf).await
    };
    match tokio::time::timeout(limits.request_timeout, read).await {
        Err(_) => return Err(RequestError::Timeout(limits.request_timeout)),
        Ok(Err(e)) => return Err(RequestError::Io(e)),
        Ok(Ok(0)) => return Err(RequestError::Empty),
        Ok(Ok(_)) => {}
    }
    // The limit counts the newline.
    if buf.len() > max {
        return Err(RequestError::TooLarge(max));
    }
    String::from_utf8(buf).map_err(|_| RequestError::NotText)
}

/// Writes `bytes` within [`ApiLimits::write_timeout`].
pub async fn write_bounded<W: AsyncWrite + Unpin>(
    w: &mut W,
    bytes: &[u8],
    limits: &ApiLimits,
) -> anyhow::Result<()> {
    match tokio::time::timeout(limits.write_timeout, w.write_all(bytes)).await {
        Ok(r) => r.context("writing to the API client"),
        Err(_) => anyhow::bail!(
            "the API client did not read for {} ms",
            limits.write_timeout.as_millis()
        ),
    }
}

/// One tracked connection.
struct Entry {
    accepted: Instant,
    /// Still reading its request (may be evicted).
    idle: bool,
    abort: Option<AbortHandle>,
}

#[derive(Default)]
struct Table {
    next: u64,
    entries: BTreeMap<u64, Entry>,
}

impl Table {
    /// The oldest connection still reading its request.
    fn oldest_idle(&self) -> Option<u64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.idle)
            .min_by_key(|(_, e)| e.accepted)
            .map(|(id, _)| *id)
    }

    fn evict(&mut self, id: u64) {
        if let Some(e) = self.entries.remove(&id) {
            if let Some(a) = e.abort {
                // Dropping the task drops its stream: the fd is closed.
                a.abort();
            }
        }
    }
}

/// Counts of what the transport refused, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TransportStats {
    /// Connections open now.
    pub open: usize,
    /// Idle connections closed to make room.
    pub evicted: u64,
    /// New connections refused because every slot was busy.
    pub refused: u64,
    /// accept(2) failures (EMFILE, ENFILE, ...).
    pub accept_errors: u64,
}

/// The set of open connections, shared by the accept loop and connection tasks.
#[derive(Clone, Default)]
pub struct Connections {
    table: Arc<Mutex<Table>>,
    stats: Arc<Mutex<TransportStats>>,
    followers: Arc<Mutex<usize>>,
}

/// One `flows --follow` stream's place; dropping it frees the place.
pub struct Follower(Arc<Mutex<usize>>);

impl Drop for Follower {
    fn drop(&mut self) {
        *self.0.lock().expect("followers lock") -= 1;
    }
}

/// A connection's place in [`Connections`]; dropping it frees the place.
pub struct Slot {
    id: u64,
    connections: Connections,
}

impl Slot {
    /// The request was read: the connection is busy now and will not be evicted.
    pub fn busy(&self) {
        if let Some(e) = self
            .connections
            .table
            .lock()
            .expect("connections lock")
            .entries
            .get_mut(&self.id)
        {
            e.idle = false;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections
            .table
            .lock()
            .expect("connections lock")
            .entries
            .remove(&self.id);
    }
}

impl Connections {
    /// What the transport counted so far.
    pub fn stats(&self) -> TransportStats {
        let mut s = *self.stats.lock().expect("stats lock");
        s.open = self.table.lock().expect("connections lock").entries.len();
        s
    }

    /// A place for one more `flows --follow` stream, if fewer than `max` are open.
    pub fn follow(&self, max: usize) -> Option<Follower> {
        let mut n = self.followers.lock().expect("followers lock");
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Follower(self.followers.clone()))
    }

    /// Makes room for one more connection under `max`: evicts the oldest idle one if
    /// needed. Returns a slot, or `None` if every connection is busy.
    fn admit(&self, max: usize) -> Option<Slot> {
        let mut t = self.table.lock().expect("connections lock");
        while t.entries.len() >= max.max(1) {
            let id = t.oldest_idle()?;
            t.evict(id);
            self.stats.lock().expect("stats lock").evicted += 1;
        }
        let id = t.next;
        t.next += 1;
        t.entries.insert(
            id,
            Entry {
                accepted: Instant::now(),
                idle: true,
                abort: None,
            },
        );
        Some(Slot {
            id,
            connections: self.clone(),
        })
    }

    fn set_abort(&self, id: u64, abort: AbortHandle) {
        if let Some(e) = self
            .table
            .lock()
            .expect("connections lock")
            .entries
            .get_mut(&id)
        {
            e.abort = Some(abort);
        }
    }

    /// Closes the oldest idle connection, to free an fd. True if there was one.
    fn evict_oldest_idle(&self) -> bool {
        let mut t = self.table.lock().expect("connections lock");
        match t.oldest_idle() {
            Some(id) => {
                t.evict(id);
                self.stats.lock().expect("stats lock").evicted += 1;
                true
            }
            None => false,
        }
    }
}

/// Back-off after a failed accept(2): doubles up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);

/// Accepts connections until the process ends and runs `handle` on each in its own
/// task. At the fd limit (EMFILE, ENFILE) it closes the oldest idle connection or backs
/// off (up to 1 s), and logs the failure at most once per 10 s with the count.
pub async fn accept_loop<F, Fut>(
    listener: UnixListener,
    limits: ApiLimits,
    connections: Connections,
    handle: F,
) where
    F: Fn(UnixStream, Slot) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut errors = RateLog::new(Duration::from_secs(10));
    let mut refusals = RateLog::new(Duration::from_secs(10));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(slot) = connections.admit(limits.max_connections) else {
                    connections.stats.lock().expect("stats lock").refused += 1;
                    if let Some(more) = refusals.ready() {
                        tracing::warn!(
                            max = limits.max_connections,
                            also_refused = more,
                            "API connection refused: every connection is busy"
                        );
                    }
                    refuse(stream, limits.max_connections);
                    continue;
                };
                let id = slot.id;
                let task = tokio::spawn(handle(stream, slot));
                connections.set_abort(id, task.abort_handle());
            }
            Err(e) => {
                connections.stats.lock().expect("stats lock").accept_errors += 1;
                if let Some(more) = errors.ready() {
                    tracing::warn!(error = %e, also_failed = more, "accepting an API connection failed");
                }
                let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if out_of_fds && connections.evict_oldest_idle() {
                    continue;
                }
                // Not a synchronisation: the condition (free fds) cannot be waited
                // for, so retry later instead of spinning on a readable listener.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

/// Tells a client it was refused, without waiting for it.
fn refuse(stream: UnixStream, max: usize) {
    let reply = crate::api::Reply::error(format!(
        "the agent is busy: {max} API connections are in use; retry"
    ));
    if let Ok(mut line) = serde_json::to_vec(&reply) {
        line.push(b'\n');
        let _ = stream.try_write(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ApiLimits {
        ApiLimits {
            max_request_bytes: max,
            request_timeout: Duration::from_millis(200),
            ..ApiLimits::default()
        }
    }

    async fn read(input: &[u8], max: usize) -> Result<String, RequestError> {
        let mut r = BufReader::new(input);
        read_request(&mut r, &limits(max)).await
    }

    #[tokio::test]
    async fn a_line_at_the_limit_is_read_and_one_byte_more_is_refused() {
        let mut line = vec![b'x'; 15];
        line.push(b'\n');
        assert_eq!(read(&line, 16).await.unwrap().len(), 16);
        let mut long = vec![b'x'; 16];
        long.push(b'\n');
        assert!(matches!(
            read(&long, 16).await,
            Err(RequestError::TooLarge(16))
        ));
        // Without a newline: what fits is a request (the client closed after it).
        assert_eq!(read(b"{}", 16).await.unwrap(), "{}");
        assert!(matches!(read(b"", 16).await, Err(RequestError::Empty)));
    }

    #[tokio::test]
    async fn a_half_sent_request_times_out() {
        let (client, server) = tokio::io::duplex(64);
        let mut w = client;
        w.write_all(b"{\"status\"").await.unwrap();
        let mut r = BufReader::new(server);
        let started = Instant::now();
        let e = read_request(&mut r, &limits(1024)).await.unwrap_err();
        assert!(matches!(e, RequestError::Timeout(_)), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        drop(w);
    }

    #[test]
    fn admission_evicts_the_oldest_idle_connection_and_never_a_busy_one() {
        let c = Connections::default();
        let a = c.admit(2).unwrap();
        let b = c.admit(2).unwrap();
        a.busy();
        // Full: the new one evicts b (idle), not a (busy).
        let d = c.admit(2).unwrap();
        assert!(c.table.lock().unwrap().entries.contains_key(&a.id));
        assert!(!c.table.lock().unwrap().entries.contains_key(&b.id));
        d.busy();
        // Every connection busy: refused.
        assert!(c.admit(2).is_none());
        assert_eq!(c.stats().evicted, 1);
        drop(a);
        assert!(c.admit(2).is_some(), "a freed place is reused");
        drop(b);
    }

    #[test]
    fn groups_are_numbers_or_names() {
        assert_eq!(resolve_group("65534").unwrap(), 65534);
        assert_eq!(resolve_group("root").unwrap(), 0);
        let e = resolve_group("no-such-group-palisade")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-group-palisade") && e.contains("no such group"),
            "{e}"
        );
    }

    #[test]
    fn a_socket_is_bound_with_its_mode_and_group_whatever_the_umask() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        // SAFETY: getgid has no preconditions.
        let gid = unsafe { libc::getgid() };
        // SAFETY: umask only changes this process's mask; restored below.
        let old = unsafe { libc::umask(0) };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (ro, private) = rt.block_on(async {
            (
                bind_socket(
                    &dir.path().join("ro.sock"),
                    READ_ONLY_SOCKET_MODE,
                    Some(gid),
                ),
                bind_private(&dir.path().join("main.sock")),
            )
        });
        unsafe { libc::umask(old) };
        let (_ro, _private) = (ro.unwrap(), private.unwrap());
        let m = std::fs::metadata(dir.path().join("ro.sock")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o660);
        assert_eq!(m.gid(), gid);
        let m = std::fs::metadata(dir.path().join("main.sock")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // Nothing is left under a temporary name.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn followers_are_bounded_and_their_places_come_back() {
        let c = Connections::default();
        let a = c.follow(2).unwrap();
        let _b = c.follow(2).unwrap();
        assert!(c.follow(2).is_none());
        drop(a);
        assert!(c.follow(2).is_some());
    }
}
