//! The agent's main loop: one task owns the [`Reconciler`]; connections on the unix socket
//! send it commands; a ticker notices source changes and heals drift.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::api::{PodEndpoint, Reply, Request};
use crate::decisions::{matches_filter, DecisionRecord, History};
use crate::listener::write_bounded;
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::registry::Interface;

/// How often the source is checked for changes. Lab and CLI changes do not wait for
/// this: they send `sync`, which reconciles at once.
pub const SOURCE_POLL: Duration = Duration::from_millis(250);

/// How often a full pass runs even without changes, to repair drift in the kernel.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);

/// How long a CNI registration may wait for its Pod object to appear in the desired
/// state before it is refused (the plugin then fails the sandbox: fail closed).
pub const REGISTER_WAIT: Duration = Duration::from_secs(30);

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
    shared: Shared,
    metrics: Arc<Mutex<Metrics>>,
) -> anyhow::Result<()> {
    let (tx, mut rx) = mpsc::channel::<Command>(256);
    let listener = crate::listener::bind_private(&socket)?;
    tracing::info!(socket = %socket.display(), "agent API listening");

    let accept_shared = shared.clone();
    tokio::spawn(crate::listener::accept_loop(
        listener,
        shared.api,
        shared.connections.clone(),
        move |stream, slot| {
            let tx = tx.clone();
            let shared = accept_shared.clone();
            async move {
                if let Err(e) = handle_connection(stream, tx, shared, slot).await {
                    tracing::debug!(error = %format!("{e:#}"), "API connection ended with an error");
                }
            }
        },
    ));

    let views = shared.views.clone();
    let publish = move |r: &Reconciler| {
        *views.write().expect("views lock") = Arc::new(Views::from(r));
    };
    // Adopt what is pinned and bring it up to date before answering anyone.
    let _ = run_pass(&mut reconciler, &metrics, true);
    publish(&reconciler);
    let mut pending: Vec<Pending> = Vec::new();
    let mut ticker = tokio::time::interval(SOURCE_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            Some(cmd) = rx.recv() => {
                let before = reconciler.passes();
                handle_command(&mut reconciler, cmd, &mut pending, &metrics);
                if reconciler.passes() != before {
                    publish(&reconciler);
                }
            }
            _ = ticker.tick() => {
                let full = last_full.elapsed() >= RESYNC_EVERY;
                if full || reconciler.source_changed() {
                    let _ = run_pass_with(&mut reconciler, &metrics, true, full);
                    publish(&reconciler);
                    if full {
                        last_full = Instant::now();
                    }
                }
            }
        }
        settle_pending(&mut reconciler, &mut pending);
    }
}

fn run_pass(
    reconciler: &mut Reconciler,
    metrics: &Arc<Mutex<Metrics>>,
    reload: bool,
) -> Result<u64, String> {
    run_pass_with(reconciler, metrics, reload, false)
}

/// One pass; `full` rebuilds the compiled state and resyncs the whole datapath (done
/// every [`RESYNC_EVERY`], and automatically after a failed pass).
fn run_pass_with(
    reconciler: &mut Reconciler,
    metrics: &Arc<Mutex<Metrics>>,
    reload: bool,
    full: bool,
) -> Result<u64, String> {
    let result = reconciler.reconcile(reload, full);
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
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "reconcile failed; the kernel keeps its previous state");
            Err(msg)
        }
    }
}

fn settle_pending(reconciler: &mut Reconciler, pending: &mut Vec<Pending>) {
    let now = Instant::now();
    let mut still = Vec::new();
    for p in pending.drain(..) {
        if let Some(generation) = reconciler.in_force(&p.pod) {
            let _ = p.reply.send(Reply {
                generation: Some(generation),
                in_force: Some(true),
                ..Reply::data(serde_json::Value::Null)
            });
        } else if now >= p.deadline {
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
            let _ = p.reply.send(Reply::error(why));
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
) {
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
                    let _ = reply.send(Reply::error(format!(
                        "pod {key}: interface {host_ifname}: {e:#}"
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
                let _ = reply.send(Reply::error(format!("pod {key}: {e:#}")));
                return;
            }
            let started = Instant::now();
            match reconciler.register_fast(&iface) {
                Ok(Some(generation)) => {
                    metrics
                        .lock()
                        .expect("metrics lock")
                        .record_register(started.elapsed().as_secs_f64());
                    let data = serde_json::json!({ "fast_path": true });
                    let _ = reply.send(Reply {
                        generation: Some(generation),
                        in_force: Some(true),
                        ..Reply::data(data)
                    });
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(pod = %key, error = %format!("{e:#}"), "fast registration failed; doing a full pass")
                }
            }
            // Re-read the source only if it changed (a stat per file), so a pod whose
            // manifest was just written is seen without waiting for the ticker.
            let reload = reconciler.source_changed();
            let _ = run_pass(reconciler, metrics, reload);
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
            let _ = run_pass(reconciler, metrics, false);
            let _ = reply.send(match r {
                Ok(()) => Reply::data(serde_json::Value::Null),
                Err(e) => Reply::error(format!("pod {key}: {e:#}")),
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
                Ok(generation) => Reply {
                    generation: Some(generation),
                    in_force: Some(true),
                    ..Reply::data(serde_json::Value::Null)
                },
                Err(e) => Reply::error(format!("pod {key}: {e:#}")),
            });
        }
        Request::Sync { full } => {
            let r = run_pass_with(reconciler, metrics, true, full);
            let errors = reconciler.snapshot().errors.clone();
            let _ = reply.send(match r {
                Ok(generation) => Reply {
                    generation: Some(generation),
                    in_force: Some(true),
                    ..Reply::data(serde_json::json!({
                        "errors": errors,
                        "warnings": reconciler.snapshot().warnings,
                        "stages": reconciler.last_stages(),
                    }))
                },
                Err(e) => Reply::error(e),
            });
        }
        Request::Status => {
            let registered: Vec<Interface> = reconciler
                .registry()
                .interfaces()
                .values()
                .cloned()
                .collect();
            let endpoints: BTreeMap<_, _> = registered
                .into_iter()
                .map(|i| {
                    let enforced = reconciler.enforced(&i);
                    (
                        i.pod.clone(),
                        serde_json::json!({
                            "interface": i.host_ifname, "ifindex": i.ifindex, "ips": i.ips,
                            "generation_in_force": reconciler.in_force(&i.pod),
                            "enforced": enforced,
                        }),
                    )
                })
                .collect();
            let datapath = reconciler.enforcer_mut().status();
            let _ = reply.send(Reply::data(serde_json::json!({
                "passes": reconciler.passes(),
                "generation": reconciler.generation(),
                "last_pass_stages": reconciler.last_stages(),
                "last_error": reconciler.last_error(),
                "errors": reconciler.snapshot().errors,
                "warnings": reconciler.snapshot().warnings,
                "endpoints": endpoints,
                "datapath": datapath,
            })));
        }
        Request::Endpoint { pod } => {
            let _ = reply.send(match crate::inspect::endpoint_view(reconciler, &pod) {
                Ok(v) => Reply::data(v),
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
            let mut m = metrics.lock().expect("metrics lock");
            m.record_events(&events, |ifindex| pods.get(&ifindex).cloned());
            m.record_read_errors(unread.len());
            let mut text = m.encode(&counters);
            for e in unread {
                text.insert_str(0, &format!("# datapath counters not read: {e}\n"));
            }
            let _ = reply.send(Reply::data(serde_json::Value::String(text)));
        }
        Request::Flows { .. } => {
            // Served by the connection task from the shared stream.
            let _ = reply.send(Reply::error("flows is served by the connection task"));
        }
    }
}

async fn handle_connection(
    stream: UnixStream,
    tx: mpsc::Sender<Command>,
    shared: Shared,
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
    let request: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let mut out = serde_json::to_vec(&Reply::error(format!("bad request: {e}")))?;
            out.push(b'\n');
            write_bounded(&mut w, &out, &limits).await?;
            return Ok(());
        }
    };
    if let Request::Flows {
        follow,
        pod,
        verdict,
    } = request
    {
        let _follower = if follow {
            match shared.connections.follow(limits.max_followers) {
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
            .filter(|r| matches_filter(r, pod.as_deref(), verdict.as_deref()))
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
                Ok(r) if matches_filter(&r, pod.as_deref(), verdict.as_deref()) => {
                    let mut out = serde_json::to_vec(&r)?;
                    out.push(b'\n');
                    write_bounded(&mut w, &out, &limits).await?;
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let note = serde_json::json!({"lagged": n, "note": "the reader fell behind; records were skipped"});
                    write_bounded(&mut w, format!("{note}\n").as_bytes(), &limits).await?;
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    let (reply_tx, reply_rx) = oneshot::channel();
    tx.send(Command {
        request,
        reply: reply_tx,
    })
    .await
    .context("the agent is shutting down")?;
    let reply = reply_rx
        .await
        .unwrap_or_else(|_| Reply::error("the agent dropped the request"));
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write_bounded(&mut w, &out, &limits).await?;
    Ok(())
}
