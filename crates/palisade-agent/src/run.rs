//! Wiring: load or adopt the datapath, build the reconciler, start the event reader and
//! the API server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use palisade_datapath::{Datapath, MapSizes};
use tokio::sync::broadcast;

use crate::decision_log::{DecisionLog, Rotation};
use crate::decisions::{History, LogMode};
use crate::enforcer::{read_events, BpfEnforcer, EventLimits};
use crate::listener::{ApiLimits, Connections};
use crate::metrics::Metrics;
use crate::reconcile::Reconciler;
use crate::registry::Registry;
use crate::server::{serve, Shared, Views};
use crate::source::DirectorySource;

/// Everything `palisade agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Directory of manifests (the desired state).
    pub manifests: PathBuf,
    /// Where the agent keeps its registry of interfaces.
    pub state_dir: PathBuf,
    /// The API socket.
    pub socket: PathBuf,
    /// bpffs directory for pinned programs, maps and links.
    pub pin_root: PathBuf,
    /// Decision log file (JSON lines); `None` keeps decisions in memory only.
    pub decision_log: Option<PathBuf>,
    /// Which decisions the kernel reports.
    pub log_mode: LogMode,
    /// With `LogMode::All`: report 1 in N allowed new flows (1 = every one).
    pub sample_allow: u32,
    /// Decision-event budgets per node and per pod.
    pub events: EventLimits,
    /// Size cap and rotation of the decision log.
    pub rotation: Rotation,
    /// Bounds of the API socket.
    pub api: ApiLimits,
    /// Map capacities.
    pub sizes: MapSizes,
    /// How long a CNI registration whose pod never appears in the desired state is
    /// kept (see [`crate::registry::DEFAULT_REGISTRATION_TTL`]).
    pub registration_ttl: std::time::Duration,
    /// Re-judge established flows when what decided them changes (see
    /// `docs/semantics.md`, "Established flows"); applied on every start.
    pub revoke_established: bool,
}

/// Runs the agent until the process is killed. Enforcement does not depend on this
/// process: every program, map and link is pinned.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let mut datapath = Datapath::load_or_adopt(&config.pin_root, config.sizes)
        .with_context(|| format!("loading the datapath at {}", config.pin_root.display()))?;
    if datapath.adopted() {
        tracing::info!(pin_root = %config.pin_root.display(), "adopted pinned datapath; enforcement was never interrupted");
    }
    let events = datapath.events().context("taking the event reader")?;
    let mut enforcer = BpfEnforcer::new(datapath);
    enforcer.set_log_mode(config.log_mode, config.sample_allow, config.events)?;
    enforcer.set_revoke_established(config.revoke_established)?;
    let registry = Registry::open(config.state_dir.join("endpoints.json"))?;
    let source = DirectorySource::new(&config.manifests);
    let reconciler = Reconciler::new(Box::new(source), Box::new(enforcer), registry)
        .with_generation_file(config.state_dir.join("generation"))
        .with_registration_ttl(config.registration_ttl);

    raise_fd_limit(config.api.max_connections);
    let (tx, _) = broadcast::channel(4096);
    let connections = Connections::default();
    let shared = Shared {
        decisions: tx,
        history: Arc::new(Mutex::new(History::new(10_000))),
        views: Arc::new(RwLock::new(Arc::new(Views::default()))),
        api: config.api,
        connections: connections.clone(),
    };
    let mut metrics = Metrics::new();
    metrics.watch_connections(connections);
    let log = match &config.decision_log {
        Some(p) => Some(DecisionLog::open(
            p,
            config.rotation,
            metrics.log_counters(),
        )?),
        None => None,
    };
    let reader_shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = read_events(events, reader_shared, log).await {
            tracing::error!(error = %format!("{e:#}"), "decision event reader stopped");
        }
    });
    serve(
        reconciler,
        config.socket.clone(),
        shared,
        Arc::new(Mutex::new(metrics)),
    )
    .await
}

/// Fds the agent needs besides API connections (maps, programs, links, files).
const FD_RESERVE: u64 = 256;

/// Raises the soft fd limit towards the hard one so `max_connections` fit beside the
/// agent's other fds; says so if they cannot. (At the limit the API still works: the
/// accept loop closes idle connections and backs off.)
fn raise_fd_limit(max_connections: usize) {
    let want = max_connections as u64 + FD_RESERVE;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the pointed-to struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < want {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one rlimit; lowering nothing, raising soft <= hard.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    if lim.rlim_cur < want {
        tracing::warn!(
            fd_limit = lim.rlim_cur,
            max_connections,
            "the fd limit is below the API connection limit plus {FD_RESERVE}; at the limit idle connections are closed early"
        );
    }
}
