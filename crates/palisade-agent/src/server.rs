//! The agent's main loop: one dedicated thread owns the [`Reconciler`] and runs its
//! passes; connections on the unix socket (async tasks) send it commands; its own timer
//! notices source changes and heals drift.
//!
//! A pass can take long (a big manifest set, a slow kernel), so it never runs on the
//! async runtime: while one runs, the socket keeps accepting, `flows` streams keep
//! flowing, and `status` and `metrics` are answered from what the thread published
//! after its last pass (marked as such) instead of waiting for it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, oneshot};

use crate::api::{
    self, EndpointStatus, PodEndpoint, Published as PublishedNote, Reply, Request, StatusData,
    SyncData,
};
use crate::decisions::{matches_filter, DecisionRecord, History};
use crate::listener::write_bounded;
use crate::metrics::Metrics;
use crate::reconcile::{chain, PassError, Reconciler};
use crate::registry::{Interface, RegistryError};

/// How often the source is checked for changes. Lab and CLI changes do not wait for
/// this: they send `sync`, which reconciles at once.
pub const SOURCE_POLL: Duration = Duration::from_millis(250);

/// How often a full pass runs even without changes, to repair drift in the kernel.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long a CNI registration may wait for its Pod object to appear in the desired
/// state before it is refused (the plugin then fails the sandbox: fail closed).
pub const REGISTER_WAIT: Duration = Duration::from_secs(30);

/// How long `status` and `metrics` wait for the reconciler thread before they are
/// answered from its last published state (it is in a pass, or queued behind one).
pub const FRESH_WAIT: Duration = Duration::from_millis(200);

/// A request with its reply channel.
pub struct Command {
    /// The request.
    pub request: Request,
    /// Where the reply goes.
    pub reply: oneshot::Sender<Reply>,
}

/// State shared between the main loop and connection tasks that do not need the
/// reconciler (decision streams).
#[derive(Clone)]
pub struct Shared {
    /// Live decisions.
    pub decisions: broadcast::Sender<DecisionRecord>,
    /// Recent decisions.
    pub history: Arc<Mutex<History>>,
    /// What the decision reader needs to name things; replaced after every pass.
    pub views: Arc<std::sync::RwLock<Arc<Views>>>,
    /// Bounds of the API socket.
    pub api: crate::listener::ApiLimits,
    /// Open API connections.
    pub connections: crate::listener::Connections,
}

/// Lookup tables for turning kernel events into names, rebuilt after each pass.
#[derive(Debug, Default)]
pub struct Views {
    /// Rule ids of the compiled state in the kernel, for attribution.
    pub rules: BTreeMap<u32, palisade_policy::compiled::RuleOrigin>,
    /// Interface index → pod.
    pub pod_by_ifindex: BTreeMap<u32, String>,
    /// Address → pod (every pod in the desired state, local or not).
    pub pod_by_ip: BTreeMap<std::net::IpAddr, String>,
}

impl Views {
    fn from(reconciler: &Reconciler) -> Self {
        let pod_by_ifindex = reconciler
            .registry()
            .interfaces()
            .values()
            .map(|i| (i.ifindex, i.pod.clone()))
            .collect();
        let mut pod_by_ip = BTreeMap::new();
        for (key, pod) in &reconciler.snapshot().cluster.pods {
            if !pod.host_network {
                for ip in &pod.ips {
                    pod_by_ip.insert(*ip, key.clone());
                }
            }
        }
        Views {
            rules: reconciler.compiled().rules.clone(),
            pod_by_ifindex,
            pod_by_ip,
        }
    }
}

/// What the reconciler thread publishes for the requests that must not wait for it.
#[derive(Default)]
struct Published {
    /// The `status` payload after the last pass (or the last fresh `status`).
    status: Option<StatusData>,
    /// When `status` was computed.
    at: Option<Instant>,
}

/// What the reconciler thread shares with connection tasks.
#[derive(Clone)]
struct Board {
    /// True while the thread runs a pass.
    busy: Arc<AtomicBool>,
    published: Arc<RwLock<Published>>,
    metrics: Arc<Mutex<Metrics>>,
}

/// The reconciler thread as seen from connection tasks. When the last one is dropped,
/// the thread ends.
#[derive(Clone)]
struct Handle {
    /// Shared by every clone; the source's waker holds only a weak reference, so the
    /// thread still ends when the last handle goes.
    commands: Arc<std_mpsc::Sender<Msg>>,
    board: Board,
}

/// What the reconciler thread receives.
enum Msg {
    /// A request from a connection.
    Command(Command),
    /// The source has a change (a watch event): look now, not at the next poll.
    Wake,
}

/// The second, read-only API socket (issue 14, least privilege): mode 0660, group
/// `gid`. It answers every request that does not change the agent's state; a mutating
/// one ([`Request::mutates`]) gets an error naming the socket to use.
#[derive(Clone)]
pub struct ReadOnlySocket {
    /// Where it is bound.
    pub path: PathBuf,
    /// Its group (0: root only, like the main socket but without the mutating verbs).
    pub gid: u32,
    /// Its connections. Its own budget, not the main socket's: both sockets have the
    /// same limits ([`Shared::api`]), but a flood of the read-only one (anyone in the
    /// group) evicts and refuses only its own connections, so it can never take the
    /// places of the CNI plugin's connections on the main socket. The cost is that the
    /// agent may hold twice `max_connections` (its fd limit is raised for both).
    pub connections: crate::listener::Connections,
}

struct Pending {
    pod: String,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// Runs the main loop until the process is stopped. Stopping the agent leaves every
/// program and map in place: enforcement continues without it.
pub async fn serve(
    mut reconciler: Reconciler,
    socket: PathBuf,
    read_only: Option<ReadOnlySocket>,
    shared: Shared,
    metrics: Arc<Mutex<Metrics>>,
) -> anyhow::Result<()> {
    // Unbounded, but each open connection sends one command at most, and connections
    // are bounded by `ApiLimits::max_connections`.
    let (tx, rx) = std_mpsc::channel::<Msg>();
    let tx = Arc::new(tx);
    let weak = Arc::downgrade(&tx);
    reconciler.set_source_waker(Arc::new(move || {
        if let Some(tx) = weak.upgrade() {
            let _ = tx.send(Msg::Wake);
        }
    }));
    let listener = crate::listener::bind_private(&socket)?;
    tracing::info!(socket = %socket.display(), "agent API listening");
    let ro_listener = match &read_only {
        Some(ro) => {
            let l = crate::listener::bind_socket(
                &ro.path,
                crate::listener::READ_ONLY_SOCKET_MODE,
                Some(ro.gid),
            )?;
            tracing::info!(socket = %ro.path.display(), gid = ro.gid, "agent read-only API listening");
            Some(l)
        }
        None => None,
    };
    let board = Board {
        busy: Arc::new(AtomicBool::new(true)),
        published: Arc::new(RwLock::new(Published::default())),
        metrics,
    };
    let handle = Handle {
        commands: tx,
        board: board.clone(),
    };
    let owner = {
        let views = shared.views.clone();
        std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || reconcile_loop(reconciler, rx, views, board))
            .context("starting the reconciler thread")?
    };

    let accept_on = |listener, connections: crate::listener::Connections, side: Side| {
        let handle = handle.clone();
        let shared = shared.clone();
        let conns = connections.clone();
        tokio::spawn(crate::listener::accept_loop(
            listener,
            shared.api,
            connections,
            move |stream, slot| {
                let handle = handle.clone();
                let shared = shared.clone();
                let conns = conns.clone();
                let side = side.clone();
                async move {
                    if let Err(e) =
                        handle_connection(stream, handle, shared, conns, side, slot).await
                    {
                        tracing::debug!(error = %format!("{e:#}"), "API connection ended with an error");
                    }
                }
            },
        ))
    };
    let mut accept = accept_on(listener, shared.connections.clone(), Side::Main);
    let mut ro_accept = match (ro_listener, &read_only) {
        (Some(l), Some(ro)) => Some(accept_on(
            l,
            ro.connections.clone(),
            Side::ReadOnly {
                this: Arc::new(ro.path.clone()),
                main: Arc::new(socket.clone()),
            },
        )),
        _ => None,
    };
    let ro_stopped = async {
        match ro_accept.as_mut() {
            Some(t) => t.await,
            None => std::future::pending().await,
        }
    };
    // The reconciler thread runs until the process stops; if it ever ends (a panic),
    // the agent must not keep answering as if it were reconciling.
    let owner = tokio::task::spawn_blocking(move || owner.join());
    let result = tokio::select! {
        r = owner => {
            match r {
                Ok(Ok(())) => Err(anyhow::anyhow!("the reconciler thread stopped")),
                _ => Err(anyhow::anyhow!("the reconciler thread panicked")),
            }
        }
        r = &mut accept => {
            r.context("the API accept loop stopped")
                .and_then(|()| Err(anyhow::anyhow!("the API accept loop stopped")))
        }
        r = ro_stopped => {
            r.context("the read-only API accept loop stopped")
                .and_then(|()| Err(anyhow::anyhow!("the read-only API accept loop stopped")))
        }
    };
    accept.abort();
    if let Some(t) = &ro_accept {
        t.abort();
    }
    result
}

/// Which socket a connection came in on.
#[derive(Clone)]
enum Side {
    /// The root-only socket: every request.
    Main,
    /// The read-only socket at `this`: mutating requests are refused, naming `main`.
    ReadOnly {
        this: Arc<PathBuf>,
        main: Arc<PathBuf>,
    },
}

/// The reconciler thread: adopts and syncs, then serves commands and its timer until
/// every command sender is gone.
fn reconcile_loop(
    mut reconciler: Reconciler,
    rx: std_mpsc::Receiver<Msg>,
    views: Arc<RwLock<Arc<Views>>>,
    handle: Board,
) {
    let metrics = handle.metrics.clone();
    let publish = |r: &mut Reconciler| {
        *views.write().expect("views lock") = Arc::new(Views::from(r));
        let status = status_of(r);
        *handle.published.write().expect("published lock") = Published {
            status: Some(status),
            at: Some(Instant::now()),
        };
    };
    // Adopt what is pinned and bring it up to date before answering anyone.
    let _ = run_pass(&mut reconciler, &metrics, &handle.busy, true);
    publish(&mut reconciler);
    handle.busy.store(false, Ordering::SeqCst);
    let mut pending: Vec<Pending> = Vec::new();
    let mut next_tick = Instant::now() + SOURCE_POLL;
    let mut last_full = Instant::now();
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Wake) => next_tick = Instant::now(),
            Ok(Msg::Command(cmd)) => {
                let before = reconciler.passes();
                handle_command(&mut reconciler, cmd, &mut pending, &metrics, &handle);
                if reconciler.passes() != before {
                    publish(&mut reconciler);
                }
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        }
        // Commands arriving back to back must not starve the timer.
        if Instant::now() >= next_tick {
            let full = last_full.elapsed() >= RESYNC_EVERY;
            if full || reconciler.source_changed() {
                let _ = run_pass_with(&mut reconciler, &metrics, &handle.busy, true, full);
                publish(&mut reconciler);
                if full {
                    last_full = Instant::now();
                }
            }
            next_tick = Instant::now() + SOURCE_POLL;
        }
        settle_pending(&mut reconciler, &mut pending);
    }
}

fn run_pass(
    reconciler: &mut Reconciler,
    metrics: &Arc<Mutex<Metrics>>,
    busy: &AtomicBool,
    reload: bool,
) -> Result<u64, PassError> {
    run_pass_with(reconciler, metrics, busy, reload, false)
}

/// One pass; `full` rebuilds the compiled state and resyncs the whole datapath (done
/// every [`RESYNC_EVERY`], and automatically after a failed pass).
fn run_pass_with(
    reconciler: &mut Reconciler,
    metrics: &Arc<Mutex<Metrics>>,
    busy: &AtomicBool,
    reload: bool,
    full: bool,
) -> Result<u64, PassError> {
    busy.store(true, Ordering::SeqCst);
    let result = reconciler.reconcile(reload, full);
    busy.store(false, Ordering::SeqCst);
    let mut m = metrics.lock().expect("metrics lock");
    match result {
        Ok(report) => {
            tracing::debug!(seconds = report.seconds, stages = ?report.stages, endpoints = report.endpoints, "reconciled");
            m.record_pass(report.seconds, report.endpoints, report.errors.len());
            for e in &report.errors {
                tracing::warn!(error = %e, "object rejected; the rest is enforced");
            }
            Ok(reconciler.generation())
        }
        Err(e) => {
            m.record_failed_pass();
            tracing::error!(error = %chain(&e), retryable = e.retryable(), "reconcile failed; the kernel keeps its previous state");
            Err(e)
        }
    }
}

fn settle_pending(reconciler: &mut Reconciler, pending: &mut Vec<Pending>) {
    let now = Instant::now();
    let mut still = Vec::new();
    for p in pending.drain(..) {
        if let Some(generation) = reconciler.in_force(&p.pod) {
            let _ = p.reply.send(Reply::in_force(generation));
        } else if now >= p.deadline {
            // Retryable unless the pass failed on something only a change can fix: a
            // Pod object not seen yet may still come, a busy kernel may recover.
            let retryable = reconciler.last_error_retryable().unwrap_or(true);
            let why = match reconciler.last_error() {
                Some(e) => format!("pod {}: policy not in force: {e}", p.pod),
                None if !reconciler.knows_pod(&p.pod) => {
                    format!(
                        "pod {}: no Pod object in the desired state after {}s",
                        p.pod,
                        REGISTER_WAIT.as_secs()
                    )
                }
                None => format!("pod {}: policy not in force", p.pod),
            };
            let _ = p.reply.send(Reply::failure(why, retryable));
        } else {
            still.push(p);
        }
    }
    *pending = still;
}

fn handle_command(
    reconciler: &mut Reconciler,
    cmd: Command,
    pending: &mut Vec<Pending>,
    metrics: &Arc<Mutex<Metrics>>,
    handle: &Board,
) {
    let busy = &*handle.busy;
    let Command { request, reply } = cmd;
    match request {
        Request::Register(PodEndpoint {
            namespace,
            pod,
            container_id,
            host_ifname,
            ips,
            ..
        }) => {
            let key = format!("{namespace}/{pod}");
            let ifindex = match palisade_datapath::ifindex_of(&host_ifname) {
                Ok(i) => i,
                Err(e) => {
                    // The interface does not exist: the same request cannot succeed.
                    let _ = reply.send(Reply::error(format!(
                        "pod {key}: interface {host_ifname}: {}",
                        chain(&e)
                    )));
                    return;
                }
            };
            let iface = Interface {
                pod: key.clone(),
                host_ifname,
                ifindex,
                ips,
                container_id,
                registered_at: 0,
                seen: false,
            };
            if let Err(e) = reconciler.register(iface.clone()) {
                let _ = reply.send(Reply::failure(
                    format!("pod {key}: {}", chain(&e)),
                    e.retryable(),
                ));
                return;
            }
            let started = Instant::now();
            match reconciler.register_fast(&iface) {
                Ok(Some(generation)) => {
                    metrics
                        .lock()
                        .expect("metrics lock")
                        .record_register(started.elapsed().as_secs_f64());
                    let _ = reply.send(Reply::of::<api::Register>(&api::InForce {
                        data: Some(api::Registration { fast_path: true }),
                        ..api::InForce::at(generation)
                    }));
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pod = %key, error = %chain(&e), "fast registration failed; doing a full pass")
                }
            }
            // Re-read the source only if it changed (a stat per file), so a pod whose
            // manifest was just written is seen without waiting for the ticker.
            let reload = reconciler.source_changed();
            let _ = run_pass(reconciler, metrics, busy, reload);
            if reconciler.in_force(&key).is_some() {
                metrics
                    .lock()
                    .expect("metrics lock")
                    .record_register(started.elapsed().as_secs_f64());
            }
            pending.push(Pending {
                pod: key,
                deadline: Instant::now() + REGISTER_WAIT,
                reply,
            });
        }
        Request::Unregister(PodEndpoint {
            namespace,
            pod,
            container_id,
            host_ifname,
            ..
        }) => {
            let key = format!("{namespace}/{pod}");
            let r = reconciler.unregister(&key, &container_id, &host_ifname);
            if r.is_ok() {
                let _ = run_pass(reconciler, metrics, busy, false);
            }
            let _ = reply.send(match r {
                // Idempotent: nothing registered by this sandbox (a pod this agent never
                // saw, or a DEL repeated) is nothing to undo.
                Ok(()) | Err(RegistryError::Unknown { .. }) => {
                    Reply::of::<api::Unregister>(&api::Done {})
                }
                Err(e) => Reply::failure(format!("pod {key}: {}", chain(&e)), e.retryable()),
            });
        }
        Request::Check(PodEndpoint {
            namespace,
            pod,
            container_id,
            host_ifname,
            ..
        }) => {
            let key = format!("{namespace}/{pod}");
            let _ = reply.send(match reconciler.check(&key, &container_id, &host_ifname) {
                Ok(generation) => Reply::in_force(generation),
                Err(e) => Reply::error(format!("pod {key}: {e:#}")),
            });
        }
        Request::Sync { full } => {
            let r = run_pass_with(reconciler, metrics, busy, true, full);
            let errors = reconciler
                .snapshot()
                .errors
                .iter()
                .map(|e| e.to_string())
                .collect();
            let _ = reply.send(match r {
                Ok(generation) => Reply::of::<api::Sync>(&api::SyncReply {
                    generation,
                    in_force: true,
                    data: SyncData {
                        errors,
                        warnings: reconciler.snapshot().warnings.clone(),
                        stages: reconciler.last_stages(),
                    },
                }),
                Err(e) => Reply::failure(chain(&e), e.retryable()),
            });
        }
        Request::Status => {
            let status = status_of(reconciler);
            *handle.published.write().expect("published lock") = Published {
                status: Some(status.clone()),
                at: Some(Instant::now()),
            };
            let _ = reply.send(Reply::of::<api::Status>(&api::StatusReply { data: status }));
        }
        Request::Endpoint { pod } => {
            let _ = reply.send(match crate::inspect::endpoint_view(reconciler, &pod) {
                Ok(data) => Reply::of::<api::Endpoint>(&api::EndpointReply { data }),
                Err(e) => Reply::error(format!("pod {pod}: {e:#}")),
            });
        }
        Request::Metrics => {
            // A kernel read error is said in the exposition, not hidden as zeros.
            let mut unread = Vec::new();
            let counters = reconciler.enforcer_mut().counters().unwrap_or_else(|e| {
                unread.push(format!("{e:#}"));
                Vec::new()
            });
            let events = reconciler.enforcer_mut().event_stats().unwrap_or_else(|e| {
                unread.push(format!("{e:#}"));
                Default::default()
            });
            let pods: BTreeMap<u32, String> = reconciler
                .registry()
                .interfaces()
                .values()
                .map(|i| (i.ifindex, i.pod.clone()))
                .collect();
            let watches = reconciler.watches();
            let mut m = metrics.lock().expect("metrics lock");
            m.record_watches(&watches);
            m.record_events(&events, |ifindex| pods.get(&ifindex).cloned());
            m.record_read_errors(unread.len());
            let mut text = m.encode(&counters);
            for e in unread {
                text.insert_str(0, &format!("# datapath counters not read: {e}\n"));
            }
            let _ = reply.send(Reply::of::<api::Metrics>(&api::MetricsReply { data: text }));
        }
        Request::Flows { .. } => {
            // Served by the connection task from the shared stream.
            let _ = reply.send(Reply::error("flows is served by the connection task"));
        }
    }
}

/// Hands `request` to the reconciler thread and waits for its reply. `status` and
/// `metrics` wait at most [`FRESH_WAIT`] (none while a pass runs), then are answered
/// from the last published state, so a long pass never stalls them (except the
/// agent's first pass, which every request waits for).
async fn ask(handle: &Handle, request: Request) -> anyhow::Result<Reply> {
    // Before the first pass has published anything, everyone waits for it: an answer
    // means the agent has adopted and synced the kernel.
    let started = handle
        .board
        .published
        .read()
        .expect("published lock")
        .at
        .is_some();
    let quick = started && matches!(request, Request::Status | Request::Metrics);
    if quick && handle.board.busy.load(Ordering::SeqCst) {
        return Ok(published_reply(handle, &request));
    }
    let stale = quick.then(|| request.clone());
    let (reply_tx, reply_rx) = oneshot::channel();
    handle
        .commands
        .send(Msg::Command(Command {
            request,
            reply: reply_tx,
        }))
        .ok()
        .context("the agent is shutting down")?;
    let dropped = || Reply::error("the agent dropped the request");
    Ok(match stale {
        Some(request) => match tokio::time::timeout(FRESH_WAIT, reply_rx).await {
            Ok(r) => r.unwrap_or_else(|_| dropped()),
            Err(_) => published_reply(handle, &request),
        },
        None => reply_rx.await.unwrap_or_else(|_| dropped()),
    })
}

/// `status` or `metrics` from what the reconciler thread last published, saying so.
fn published_reply(handle: &Handle, request: &Request) -> Reply {
    let busy = handle.board.busy.load(Ordering::SeqCst);
    let why = if busy {
        "a reconcile pass is running"
    } else {
        "the reconciler is busy"
    };
    match request {
        Request::Metrics => {
            let mut m = handle.board.metrics.lock().expect("metrics lock");
            let text = format!(
                "# datapath counters as of the last read: {why}\n{}",
                m.encode(&[])
            );
            Reply::of::<api::Metrics>(&api::MetricsReply { data: text })
        }
        _ => {
            let p = handle.board.published.read().expect("published lock");
            let Some(mut status) = p.status.clone() else {
                return Reply::error("the agent has not finished its first pass");
            };
            status.published = Some(PublishedNote {
                reason: why.into(),
                age_ms: p.at.map(|t| t.elapsed().as_millis() as u64),
            });
            Reply::of::<api::Status>(&api::StatusReply { data: status })
        }
    }
}

/// The `status` payload; reads attachments from the kernel.
fn status_of(reconciler: &mut Reconciler) -> StatusData {
    let registered: Vec<Interface> = reconciler
        .registry()
        .interfaces()
        .values()
        .cloned()
        .collect();
    let endpoints = registered
        .into_iter()
        .map(|i| {
            let status = EndpointStatus {
                enforced: reconciler.enforced(&i),
                generation_in_force: reconciler.in_force(&i.pod),
                interface: i.host_ifname,
                ifindex: i.ifindex,
                ips: i.ips,
            };
            (i.pod, status)
        })
        .collect();
    let datapath = reconciler.enforcer_mut().status();
    StatusData {
        passes: reconciler.passes(),
        generation: reconciler.generation(),
        last_pass_stages: reconciler.last_stages(),
        last_error: reconciler.last_error().map(String::from),
        errors: reconciler
            .snapshot()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect(),
        warnings: reconciler.snapshot().warnings.clone(),
        endpoints,
        datapath,
        published: None,
        watches: reconciler.watches(),
    }
}

async fn handle_connection(
    stream: UnixStream,
    handle: Handle,
    shared: Shared,
    connections: crate::listener::Connections,
    side: Side,
    slot: crate::listener::Slot,
) -> anyhow::Result<()> {
    let limits = shared.api;
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let line = match crate::listener::read_request(&mut reader, &limits).await {
        Ok(line) => line,
        Err(crate::listener::RequestError::Empty) => return Ok(()),
        Err(e) => {
            let mut out = serde_json::to_vec(&Reply::error(format!("bad request: {e}")))?;
            out.push(b'\n');
            write_bounded(&mut w, &out, &limits).await?;
            return Ok(());
        }
    };
    drop(reader);
    slot.busy();
    let request: Request = match palisade_api::decode_request(&line) {
        Ok(r) => r,
        Err(e) => {
            let mut out = serde_json::to_vec(&Reply::error(format!("bad request: {e}")))?;
            out.push(b'\n');
            write_bounded(&mut w, &out, &limits).await?;
            return Ok(());
        }
    };
    if let Side::ReadOnly { this, main } = &side {
        if request.mutates() {
            let msg = format!(
                "{} changes the agent's state and is not served on the read-only socket {}; \
                 use the agent socket {} (root only)",
                request.op(),
                this.display(),
                main.display()
            );
            let mut out = serde_json::to_vec(&Reply::error(msg))?;
            out.push(b'\n');
            write_bounded(&mut w, &out, &limits).await?;
            return Ok(());
        }
    }
    if let Request::Flows {
        follow,
        pod,
        verdict,
    } = request
    {
        let _follower = if follow {
            match connections.follow(limits.max_followers) {
                Some(f) => Some(f),
                None => {
                    let msg = format!(
                        "{} flows --follow streams are open already (the limit); retry later",
                        limits.max_followers
                    );
                    let mut out = serde_json::to_vec(&Reply::error(msg))?;
                    out.push(b'\n');
                    write_bounded(&mut w, &out, &limits).await?;
                    return Ok(());
                }
            }
        } else {
            None
        };
        let mut live = shared.decisions.subscribe();
        let recent: Vec<DecisionRecord> = shared
            .history
            .lock()
            .expect("history lock")
            .iter()
            .filter(|r| matches_filter(r, pod.as_deref(), verdict))
            .cloned()
            .collect();
        for r in recent {
            let mut out = serde_json::to_vec(&r)?;
            out.push(b'\n');
            write_bounded(&mut w, &out, &limits).await?;
        }
        if !follow {
            return Ok(());
        }
        loop {
            match live.recv().await {
                Ok(r) if matches_filter(&r, pod.as_deref(), verdict) => {
                    let mut out = serde_json::to_vec(&r)?;
                    out.push(b'\n');
                    write_bounded(&mut w, &out, &limits).await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let mut out = serde_json::to_vec(&crate::api::FlowItem::lagged(n))?;
                    out.push(b'\n');
                    write_bounded(&mut w, &out, &limits).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    let reply = ask(&handle, request).await?;
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write_bounded(&mut w, &out, &limits).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::EnforcerError;
    use crate::reconcile::{CounterSample, Enforcer, KernelAttachment, KernelEndpoint};
    use crate::source::{Snapshot, Source, SourceError};
    use palisade_policy::compile::InUse;
    use palisade_policy::compiled::{Compiled, Delta};

    struct EmptySource;

    impl Source for EmptySource {
        fn load(&mut self) -> Result<Snapshot, SourceError> {
            Ok(Snapshot::default())
        }
        fn changed(&mut self) -> bool {
            false
        }
    }

    /// An enforcer whose kernel writes, once armed, block until the test lets them go:
    /// a pass that takes exactly as long as the test wants.
    struct GatedEnforcer {
        armed: Arc<AtomicBool>,
        entered: std_mpsc::Sender<()>,
        release: std_mpsc::Receiver<()>,
    }

    impl GatedEnforcer {
        fn write(&mut self) -> Result<(), EnforcerError> {
            if self.armed.swap(false, Ordering::SeqCst) {
                self.entered.send(()).ok();
                self.release
                    .recv_timeout(Duration::from_secs(60))
                    .map_err(|_| EnforcerError::Other {
                        message: "the test never released the pass".into(),
                        retryable: false,
                    })?;
            }
            Ok(())
        }
    }

    impl Enforcer for GatedEnforcer {
        fn attach(&mut self, _: &str, _: &str) -> Result<u32, EnforcerError> {
            Err(EnforcerError::Other {
                message: "no interfaces in this test".into(),
                retryable: false,
            })
        }
        fn detach(&mut self, _: &str) -> Result<(), EnforcerError> {
            Ok(())
        }
        fn release_if_gone(&mut self, _: &str, _: u32) -> Result<bool, EnforcerError> {
            Ok(true)
        }
        fn sync(&mut self, _: &Compiled) -> Result<(), EnforcerError> {
            self.write()
        }
        fn apply(&mut self, _: &Delta) -> Result<(), EnforcerError> {
            self.write()
        }
        fn in_use(&mut self) -> InUse {
            InUse::default()
        }
        fn endpoint_state(&mut self, _: u32) -> anyhow::Result<KernelEndpoint> {
            anyhow::bail!("no endpoints in this test")
        }
        fn attachment(&mut self, _: u32) -> anyhow::Result<KernelAttachment> {
            anyhow::bail!("no endpoints in this test")
        }
        fn counters(&mut self) -> anyhow::Result<Vec<CounterSample>> {
            Ok(Vec::new())
        }
        fn status(&mut self) -> crate::api::DatapathStatus {
            crate::api::DatapathStatus {
                pin_root: "/fake".into(),
                ..Default::default()
            }
        }
    }

    /// The bound within which `status` and `metrics` must be answered during a pass.
    const ANSWER_BOUND: Duration = Duration::from_secs(1);

    #[test]
    fn status_and_metrics_are_answered_while_a_pass_is_stuck() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let armed = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let enforcer = GatedEnforcer {
            armed: armed.clone(),
            entered: entered_tx,
            release: release_rx,
        };
        let registry = crate::registry::Registry::open(dir.path().join("endpoints.json")).unwrap();
        let reconciler = Reconciler::new(Box::new(EmptySource), Box::new(enforcer), registry);
        let shared = Shared {
            decisions: broadcast::channel(16).0,
            history: Arc::new(Mutex::new(History::new(16))),
            views: Arc::new(RwLock::new(Arc::new(Views::default()))),
            api: crate::listener::ApiLimits::default(),
            connections: crate::listener::Connections::default(),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.spawn(serve(
            reconciler,
            socket.clone(),
            None,
            shared,
            Arc::new(Mutex::new(Metrics::new())),
        ));

        // Replies are decoded with the API's own client types: the agent's replies and
        // what clients expect are checked against each other here.
        let status = || crate::api::call(&socket, &crate::api::Status, Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            match status() {
                Ok(r) => break r.data,
                Err(e) if e.retryable() && Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("the agent never answered status: {e:#}"),
            }
        };
        assert_eq!(first.published, None, "an idle agent answers fresh");
        assert_eq!(first.passes, 1);

        // A full pass that blocks in the kernel writes until released.
        armed.store(true, Ordering::SeqCst);
        let sync_socket = socket.clone();
        let (synced_tx, synced) = std_mpsc::channel();
        let syncer = std::thread::spawn(move || {
            let r = crate::api::call(
                &sync_socket,
                &crate::api::Sync { full: true },
                Duration::from_secs(60),
            );
            synced_tx.send(r).ok();
        });
        entered
            .recv_timeout(Duration::from_secs(30))
            .expect("the sync pass never reached the enforcer");

        for round in 0..5 {
            let started = Instant::now();
            let r = status().unwrap().data;
            let took = started.elapsed();
            assert!(
                took < ANSWER_BOUND,
                "status (round {round}) took {took:?} while a pass ran"
            );
            let published = r
                .published
                .expect("a status during a pass says it is published");
            assert_eq!(published.reason, "a reconcile pass is running");
            assert_eq!(r.datapath.pin_root, "/fake");

            let started = Instant::now();
            let m = crate::api::call(&socket, &crate::api::Metrics, Duration::from_secs(30))
                .unwrap()
                .data;
            let took = started.elapsed();
            assert!(
                took < ANSWER_BOUND,
                "metrics (round {round}) took {took:?} while a pass ran"
            );
            assert!(
                m.starts_with("# datapath counters as of the last read"),
                "{m}"
            );
        }
        assert!(
            synced.try_recv().is_err(),
            "the sync was answered before its pass ended"
        );

        release.send(()).unwrap();
        let r = synced
            .recv_timeout(Duration::from_secs(30))
            .expect("the sync never returned after its pass was released")
            .unwrap();
        assert!(r.in_force);
        assert_eq!(r.generation, 2);
        syncer.join().unwrap();
        let after = status().unwrap().data;
        assert_eq!(after.published, None);
        assert_eq!(after.passes, 2);
        server.abort();
    }

    /// An agent with nothing to enforce: an empty source, an enforcer that never
    /// blocks, its registry in `dir`, default limits.
    fn idle_agent(dir: &std::path::Path) -> (Reconciler, Shared) {
        let (entered, _) = std_mpsc::channel();
        let (_release, release) = std_mpsc::channel();
        let enforcer = GatedEnforcer {
            armed: Arc::new(AtomicBool::new(false)),
            entered,
            release,
        };
        let registry = crate::registry::Registry::open(dir.join("endpoints.json")).unwrap();
        let reconciler = Reconciler::new(Box::new(EmptySource), Box::new(enforcer), registry);
        let shared = Shared {
            decisions: broadcast::channel(16).0,
            history: Arc::new(Mutex::new(History::new(16))),
            views: Arc::new(RwLock::new(Arc::new(Views::default()))),
            api: crate::listener::ApiLimits::default(),
            connections: crate::listener::Connections::default(),
        };
        (reconciler, shared)
    }

    /// CNI DEL of a pod the agent never registered (never seen in its watch, or a DEL
    /// repeated): nothing to undo, and the reply says done so the plugin succeeds.
    #[test]
    fn a_del_for_a_pod_never_seen_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (reconciler, shared) = idle_agent(dir.path());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.spawn(serve(
            reconciler,
            socket.clone(),
            None,
            shared,
            Arc::new(Mutex::new(Metrics::new())),
        ));
        let endpoint = |container: &str| crate::api::PodEndpoint {
            namespace: "team-a".into(),
            pod: "never-seen".into(),
            container_id: container.into(),
            netns: String::new(),
            host_ifname: String::new(),
            ips: vec![],
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let del = |c: &str| {
            crate::api::call(
                &socket,
                &crate::api::Unregister(endpoint(c)),
                Duration::from_secs(30),
            )
        };
        loop {
            match del("c1") {
                Ok(_) => break,
                Err(e) if e.retryable() && Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("DEL of a never-seen pod failed: {e}"),
            }
        }
        // Still refused: a DEL that cannot say which sandbox it is.
        let e = del("").unwrap_err();
        assert!(!e.retryable(), "{e}");
        assert!(e.to_string().contains("container id is empty"), "{e}");
        server.abort();
    }

    /// On the read-only socket: what only reads is answered as on the main socket, what
    /// changes the agent's state is refused naming the verb and the socket to use, and
    /// the main socket still serves it.
    #[test]
    fn the_read_only_socket_refuses_mutating_requests_and_answers_the_rest() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let ro_path = palisade_api::read_only_socket_beside(&socket);
        let (reconciler, shared) = idle_agent(dir.path());
        // SAFETY: getgid has no preconditions.
        let gid = unsafe { libc::getgid() };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = rt.spawn(serve(
            reconciler,
            socket.clone(),
            Some(ReadOnlySocket {
                path: ro_path.clone(),
                gid,
                connections: crate::listener::Connections::default(),
            }),
            shared,
            Arc::new(Mutex::new(Metrics::new())),
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match crate::api::call(&ro_path, &crate::api::Status, Duration::from_secs(30)) {
                Ok(r) => break r.data,
                Err(e) if e.retryable() && Instant::now() < deadline => std::thread::yield_now(),
                Err(e) => panic!("status on the read-only socket: {e}"),
            }
        };
        assert_eq!(status.passes, 1);
        let m = std::fs::metadata(&ro_path).unwrap();
        assert_eq!((m.mode() & 0o777, m.gid()), (0o660, gid));
        assert_eq!(std::fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);
        crate::api::call(&ro_path, &crate::api::Metrics, Duration::from_secs(30)).unwrap();

        let endpoint = crate::api::PodEndpoint {
            namespace: "team-a".into(),
            pod: "p".into(),
            container_id: "c1".into(),
            netns: String::new(),
            host_ifname: "nope0".into(),
            ips: vec![],
        };
        let refusal = |e: crate::api::ClientError| match e {
            crate::api::ClientError::Refused(m) => m,
            other => panic!("expected a refusal, got {other:?}"),
        };
        let e = refusal(
            crate::api::call(
                &ro_path,
                &crate::api::Sync { full: false },
                Duration::from_secs(30),
            )
            .unwrap_err(),
        );
        assert!(e.starts_with("sync changes the agent's state"), "{e}");
        assert!(e.contains(&ro_path.display().to_string()), "{e}");
        assert!(e.contains(&socket.display().to_string()), "{e}");
        for (op, r) in [
            (
                "register",
                crate::api::call(
                    &ro_path,
                    &crate::api::Register(endpoint.clone()),
                    Duration::from_secs(30),
                )
                .map(|_| ()),
            ),
            (
                "unregister",
                crate::api::call(
                    &ro_path,
                    &crate::api::Unregister(endpoint.clone()),
                    Duration::from_secs(30),
                )
                .map(|_| ()),
            ),
        ] {
            let e = refusal(r.unwrap_err());
            assert!(
                e.starts_with(&format!("{op} changes the agent's state")),
                "{e}"
            );
        }
        // Nothing was done by the refused requests: still one pass, and the main socket
        // serves the same sync.
        let after = crate::api::call(&ro_path, &crate::api::Status, Duration::from_secs(30))
            .unwrap()
            .data;
        assert_eq!(after.passes, 1);
        let synced = crate::api::call(
            &socket,
            &crate::api::Sync { full: false },
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(synced.in_force);
        // CHECK only reads: answered (here: the pod is not registered).
        let e = crate::api::call(
            &ro_path,
            &crate::api::Check(endpoint),
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(!e.to_string().contains("read-only socket"), "{e}");
        server.abort();
    }
}
