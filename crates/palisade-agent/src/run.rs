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

/// Where the agent reads the desired state from.
#[derive(Debug, Clone)]
pub enum SourceConfig {
    /// A directory of manifests (the lab, tests, or a GitOps checkout).
    Directory(PathBuf),
    /// A Kubernetes API server: the kubeconfig at `kubeconfig` (and `context`), or, when
    /// none is given, the in-cluster service account or `KUBECONFIG` / `~/.kube/config`.
    Kubernetes {
        /// Kubeconfig file.
        kubeconfig: Option<PathBuf>,
        /// Context in it.
        context: Option<String>,
    },
}

/// A client for the API server named by a [`SourceConfig::Kubernetes`].
pub async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> anyhow::Result<kube::Client> {
    let (config, _) = kube_config(kubeconfig, context).await?;
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The client config [`kube_client`] uses, as kubectl finds it (`kubeconfig`, else
/// `KUBECONFIG` or `~/.kube/config`, else the in-cluster service account), with the
/// name of the context it used, which a `kube::Client` does not tell
/// (`palisade simulate --live` names it in its answer).
pub async fn kube_config(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> anyhow::Result<(kube::Config, Option<String>)> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    if let Some(path) = kubeconfig {
        let kc = Kubeconfig::read_from(path)
            .with_context(|| format!("reading the kubeconfig {}", path.display()))?;
        let used = context
            .map(str::to_string)
            .or_else(|| kc.current_context.clone());
        let config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .with_context(|| format!("using the kubeconfig {}", path.display()))?;
        return Ok((config, used));
    }
    if context.is_some() {
        let config = kube::Config::from_kubeconfig(&options)
            .await
            .context("using the default kubeconfig")?;
        return Ok((config, context.map(str::to_string)));
    }
    // Config::infer's order: the kubeconfig, else the in-cluster service account.
    match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => {
            let used = Kubeconfig::read().ok().and_then(|kc| kc.current_context);
            Ok((config, used))
        }
        Err(_) => Ok((
            kube::Config::infer().await.context(
                "finding the API server (in-cluster service account, KUBECONFIG or ~/.kube/config)",
            )?,
            None,
        )),
    }
}

/// Everything `palisade agent` is configured with.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where the desired state comes from.
    pub source: SourceConfig,
    /// Where the agent keeps its registry of interfaces.
    pub state_dir: PathBuf,
    /// The API socket (mode 0600: root only; every request).
    pub socket: PathBuf,
    /// The read-only API socket (mode 0660, group `read_only_group`): inspection only.
    pub read_only_socket: PathBuf,
    /// Group of the read-only socket (0: root only).
    pub read_only_group: u32,
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
    /// This node's name: only its pods (by `spec.nodeName`) get tables; the others are
    /// peers only. `None`: every pod.
    pub node_name: Option<String>,
    /// With the Kubernetes source: publish this node's `NodePolicyStatus` (needs
    /// `node_name`).
    pub publish_status: bool,
}

/// Runs the agent until the process is killed. Enforcement does not depend on this
/// process: every program, map and link is pinned.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let mut datapath = Datapath::load_or_adopt(&config.pin_root, config.sizes)
        .with_context(|| format!("loading the datapath at {}", config.pin_root.display()))?;
    if datapath.adopted() {
        tracing::info!(pin_root = %config.pin_root.display(), "adopted pinned datapath; enforcement was never interrupted");
    }
    for r in datapath.resizes() {
        if r.grown {
            tracing::info!(
                map = r.map,
                from = r.pinned,
                to = r.configured,
                "map grown: entries copied before the programs switched"
            );
        } else {
            tracing::warn!(map = r.map, pinned = r.pinned, configured = r.configured, "configured capacity is smaller than the pinned map's: kept the pinned map (a map is never shrunk)");
        }
    }
    let events = datapath.events().context("taking the event reader")?;
    let mut enforcer = BpfEnforcer::new(datapath);
    enforcer.set_log_mode(config.log_mode, config.sample_allow, config.events)?;
    enforcer.set_revoke_established(config.revoke_established)?;
    let registry = Registry::open(config.state_dir.join("endpoints.json"))?;
    let mut publisher = None;
    let mut kube_events = None;
    let mut metrics = Metrics::new();
    let source: Box<dyn crate::source::Source> = match &config.source {
        SourceConfig::Directory(dir) => Box::new(DirectorySource::new(dir)),
        SourceConfig::Kubernetes {
            kubeconfig,
            context,
        } => {
            let client = kube_client(kubeconfig.as_deref(), context.as_deref()).await?;
            tracing::info!("following the Kubernetes API server");
            publisher = crate::publish::for_config(&config, &client)?;
            // Events on rejected objects need the node's name (reportingInstance, and
            // which nodes write: see kube_events).
            kube_events = config.node_name.as_ref().map(|node| {
                crate::kube_events::EventWriter::start(
                    client.clone(),
                    node.clone(),
                    metrics.kube_event_counters(),
                )
            });
            // Direct reads (CNI ADD of a pod not watched yet) get their own pool.
            let reads = kube_client(kubeconfig.as_deref(), context.as_deref()).await?;
            Box::new(crate::kube_source::KubeSource::start(client).with_reads(reads))
        }
    };
    let reconciler = Reconciler::new(source, Box::new(enforcer), registry)
        .with_generation_file(config.state_dir.join("generation"))
        .with_registration_ttl(config.registration_ttl)
        .with_local_node(config.node_name.clone())
        .with_publisher(publisher)
        .with_events(kube_events);

    // Two sockets, each with its own budget (see `ReadOnlySocket::connections`).
    raise_fd_limit(config.api.max_connections.saturating_mul(2));
    let (tx, _) = broadcast::channel(4096);
    let connections = Connections::default();
    let shared = Shared {
        decisions: tx,
        history: Arc::new(Mutex::new(History::new(10_000))),
        views: Arc::new(RwLock::new(Arc::new(Views::default()))),
        api: config.api,
        connections: connections.clone(),
    };
    metrics.watch_connections(connections);
    let read_only = crate::server::ReadOnlySocket {
        path: config.read_only_socket.clone(),
        gid: config.read_only_group,
        connections: Connections::default(),
    };
    metrics.watch_connections(read_only.connections.clone());
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
        Some(read_only),
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
