//! Wiring: load or adopt the datapath, build the reconciler, start the event reader and
//! the API server.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::Context;
use palisade_datapath::{Datapath, MapSizes};
use tokio::sync::broadcast;

use crate::decisions::{History, LogMode};
use crate::enforcer::{read_events, BpfEnforcer};
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
    /// Event rate limit per CPU per second (0 = the datapath's default).
    pub events_per_sec: u32,
    /// Map capacities.
    pub sizes: MapSizes,
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
    enforcer.set_log_mode(config.log_mode, config.sample_allow, config.events_per_sec)?;
    let registry = Registry::open(config.state_dir.join("endpoints.json"))?;
    let source = DirectorySource::new(&config.manifests);
    let reconciler = Reconciler::new(Box::new(source), Box::new(enforcer), registry)
        .with_generation_file(config.state_dir.join("generation"));

    let (tx, _) = broadcast::channel(4096);
    let shared = Shared {
        decisions: tx,
        history: Arc::new(Mutex::new(History::new(10_000))),
        views: Arc::new(RwLock::new(Arc::new(Views::default()))),
    };
    let log = match &config.decision_log {
        Some(p) => {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).ok();
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening decision log {}", p.display()))?;
            Some(Arc::new(Mutex::new(f)))
        }
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
        Arc::new(Mutex::new(Metrics::new())),
    )
    .await
}
