//! Command-line definitions (clap). Command logic lives in the sibling modules.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Palisade: Kubernetes network policy with an eBPF datapath.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  palisade simulate -f examples/aws-walkthrough --port 80 --protocol TCP
  palisade explain -f examples/aws-walkthrough --from default/client-one --to pod/default/demo-app --port 80
  palisade explain -f examples/services --from shop/client --to shop/web
  palisade validate -f examples/multi-team
  palisade lab walkthrough
  palisade endpoint get default/demo-app";

/// The exit-code scheme, shown in the help of every command.
pub const EXIT_CODES: &str = "Exit codes (every command):
  0  success: the command did its job; simulate and explain gave a complete answer
  1  failure: the command could not run (unreadable file, agent unreachable, pod not
     found), or endpoint diff found a difference
  2  usage error: bad flags or arguments
  3  invalid input: objects were rejected or there were none (validate: errors, or
     warnings with --strict; simulate and explain give no answer, since it would
     leave those objects out, unless --ignore-invalid is given; lab up and lab apply
     change nothing), or --from/--to names no pod of the input
explain --exit-code: 0 allowed, 1 denied, 2 usage, 3 invalid input, 4 could not run,
  5 partly allowed (a Service some of whose backends allow the flow, others not)
diff: 0 no change, 1 denies a flow allowed today, 2 usage, 3 invalid input, 4 could
  not run, 5 only allows more
convert: 0 every object converted, 3 invalid input, 5 some objects were refused";

/// Output formats for matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A truth table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Output formats of the offline commands (`-o`, as kubectl's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Table,
    /// For people, with more columns: simulate adds one line per pair with its reason.
    Wide,
    /// For programs (docs/output.md).
    Json,
    /// The JSON document as YAML.
    Yaml,
}

/// Which pods an offline answer is about (kubectl's `-n`, `-A`, `-l`).
#[derive(Debug, Args)]
pub struct Scope {
    /// Namespace of a bare pod name in --from/--to; simulate shows only its pods.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace (the default: an offline input is a whole snapshot).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Only pods whose labels match: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated
    /// (all must hold).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// Address families.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Family {
    /// IPv4.
    #[value(name = "4")]
    V4,
    /// IPv6.
    #[value(name = "6")]
    V6,
}

/// Manifest inputs.
#[derive(Debug, Args)]
pub struct Manifests {
    /// Manifest files or directories (YAML, multi-document, or JSON); `-` for stdin.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
}

/// A flow's protocol and port.
#[derive(Debug, Args)]
pub struct PortArgs {
    /// Destination port (ignored for protocols without ports).
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// TCP, UDP or SCTP (explain also takes ICMP, ICMPv6 or a protocol number).
    #[arg(long, default_value = "TCP")]
    pub protocol: String,
}

/// Where the agent listens.
#[derive(Debug, Args, Clone)]
pub struct AgentSocket {
    /// The agent's unix socket (a running lab's agent is found automatically).
    #[arg(long, env = "PALISADE_SOCKET", global = true)]
    pub socket: Option<PathBuf>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verdict for every ordered pair of pods, as a truth matrix (offline).
    #[command(
        after_help = "Example:\n  palisade simulate -f examples/aws-walkthrough --port 80 --protocol TCP --output json"
    )]
    Simulate {
        #[command(flatten)]
        manifests: crate::live::Sources,
        /// Read the subdirectories of -f directories too (as kubectl -R).
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        port: PortArgs,
        /// Only this source pod (NAMESPACE/NAME).
        #[arg(long)]
        from: Option<String>,
        /// Only this destination pod (NAMESPACE/NAME).
        #[arg(long)]
        to: Option<String>,
        /// Address family to evaluate in (default: each pod's first address).
        #[arg(long)]
        family: Option<Family>,
        #[command(flatten)]
        scope: Scope,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// Answer even if some objects were rejected; the answer then excludes them and
        /// says so on its first line (JSON: the `errors` array, and a note on stderr).
        #[arg(long)]
        ignore_invalid: bool,
    },
    /// The decision path of one connection: each tier and policy consulted (offline).
    #[command(
        after_help = "Examples:\n  palisade explain -f examples/deny-metadata --from shop/web --to 169.254.169.254 --port 80\n  palisade explain -f examples/aws-walkthrough --from another-ns/another-client --to pod/default/demo-app --port 80\n  palisade explain -f examples/aws-walkthrough --from another-ns/another-client --to svc/default/demo-app --port 80"
    )]
    Explain {
        #[command(flatten)]
        manifests: crate::live::Sources,
        /// Read the subdirectories of -f directories too (as kubectl -R).
        #[arg(short = 'R', long)]
        recursive: bool,
        #[command(flatten)]
        port: PortArgs,
        /// Source: NAMESPACE/NAME or an IP address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/NAME (a pod, workload or Service; `svc/NAME` or
        /// `pod/NAME` when both exist) or an IP address (a Service's is judged per backend).
        #[arg(long)]
        to: String,
        /// Namespace of a bare pod name in --from/--to (default: `default`).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
        /// The same as `-o json` (kept for scripts written before `-o`).
        #[arg(long, hide = true)]
        json: bool,
        /// Exit 0 when the connection is allowed, 1 when it is denied (and 4 when the
        /// command could not run), so a script can assert reachability. To a Service:
        /// 0 only if every backend allows it, 1 if none does, 5 if some do.
        #[arg(long)]
        exit_code: bool,
        /// Answer even if some objects were rejected; the answer then excludes them and
        /// says so on its first line (JSON: the `errors` array, and a note on stderr).
        #[arg(long)]
        ignore_invalid: bool,
    },
    /// Check manifests as the API server would, plus warnings it cannot give.
    Validate {
        #[command(flatten)]
        manifests: crate::live::Sources,
        /// Read the subdirectories of -f directories too (as kubectl -R).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Fail on warnings too.
        #[arg(long)]
        strict: bool,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Every flow whose verdict a proposed change turns around, with the rule on each side
    /// (offline; exit 1 when it denies a flow allowed today, 5 when it only allows more).
    #[command(
        after_help = "Examples:\n  palisade diff -f examples/aws-walkthrough -f examples/aws-walkthrough/05-allow-egress-to-demo-app.yaml\n  palisade diff --current examples/aws-walkthrough --delete NetworkPolicy/default/demo-app-deny-all --port 80"
    )]
    Diff(crate::diff::DiffArgs),
    /// Policies into another API where they keep their meaning: NetworkPolicy into Calico
    /// v3, Calico back into NetworkPolicy; what cannot be converted is refused per object
    /// on stderr (offline; exit 5 when something was refused).
    #[command(
        after_help = "Examples:\n  palisade convert --to calico -f examples/aws-walkthrough\n  palisade convert --to calico -f examples/dual-stack -o json"
    )]
    Convert(crate::convert::ConvertArgs),
    /// A shell completion script: `source <(palisade completion bash)`.
    Completion {
        /// bash, zsh, fish (also elvish, powershell).
        shell: clap_complete::Shell,
    },
    /// One HTML page of the policy: namespaces, workloads and allowed flows as a graph,
    /// the truth matrix, explain text per pair (offline; docs/view.md).
    #[command(
        after_help = "Example (docs/view.md also shows --serve 127.0.0.1:PORT):\n  palisade view -f examples/aws-walkthrough --port 80 --port 53 -o /tmp/palisade-aws-walkthrough.html"
    )]
    View {
        #[command(flatten)]
        manifests: crate::live::Sources,
        /// Read the subdirectories of -f directories too (as kubectl -R).
        #[arg(short = 'R', long)]
        recursive: bool,
        /// Destination ports, one matrix each (repeat the flag; default 80).
        #[arg(long = "port", default_values_t = [80u16])]
        ports: Vec<u16>,
        /// TCP, UDP or SCTP.
        #[arg(long, default_value = "TCP")]
        protocol: String,
        /// Write the page to this file (default: palisade-view.html, unless --serve).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Serve the page over HTTP at ADDR (loopback only unless --allow-remote), with
        /// explain text computed per click for pairs not embedded.
        #[arg(long, value_name = "ADDR")]
        serve: Option<std::net::SocketAddr>,
        /// Let --serve listen on an address other hosts can reach.
        #[arg(long, requires = "serve")]
        allow_remote: bool,
        /// Embed explain text for every pair while there are at most this many pairs
        /// over all ports; above it only the matrix (and --serve answers per click).
        #[arg(long, default_value_t = crate::view::DEFAULT_EXPLAIN_LIMIT)]
        explain_limit: usize,
        /// Answer even if some objects were rejected (the page says which).
        #[arg(long)]
        ignore_invalid: bool,
    },
    /// Run the node agent: keep the kernel in step with the manifests in a directory.
    Agent(AgentArgs),
    /// Run the controller: aggregate the nodes' reports into "in force" status per
    /// policy and pod (leader-elected through a Lease; run two replicas for failover).
    Controller(ControllerArgs),
    /// Is each policy in force, where, since when, and if not, why (from the API server).
    #[command(
        after_help = "Examples:\n  palisade status --kubeconfig ~/.kube/config -n team-a\n  palisade status --kubeconfig ~/.kube/config -n team-a web"
    )]
    Status {
        /// Only this policy: a NetworkPolicy name (in -n), or Kind/name.
        policy: Option<String>,
        /// NetworkPolicies of this namespace only (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[command(flatten)]
        cluster: ClusterAccess,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Remove every program, map and link Palisade pinned (enforcement stops).
    Uninstall {
        /// bpffs root of the pins.
        #[arg(long, default_value = "/sys/fs/bpf/palisade")]
        pin_root: PathBuf,
    },
    /// What is loaded in the kernel (read from the pins; no agent needed).
    Ebpf {
        #[command(subcommand)]
        what: EbpfCommand,
        /// bpffs root of the pins (a running lab's root is found automatically).
        #[arg(long, global = true)]
        pin_root: Option<PathBuf>,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Endpoints the agent enforces on.
    Endpoint {
        #[command(subcommand)]
        what: EndpointCommand,
        #[command(flatten)]
        socket: AgentSocket,
    },
    /// Decisions with the policy and rule behind each (JSON lines).
    #[command(
        after_help = "Example:\n  palisade flows --follow --verdict deny --pod default/demo-app"
    )]
    Flows {
        /// Keep streaming new decisions.
        #[arg(long)]
        follow: bool,
        /// Only decisions involving this pod (NAMESPACE/NAME).
        #[arg(long)]
        pod: Option<String>,
        /// Only `allow` or `deny`.
        #[arg(long)]
        verdict: Option<String>,
        #[command(flatten)]
        socket: AgentSocket,
    },
    /// The agent's Prometheus metrics.
    Metrics {
        #[command(flatten)]
        socket: AgentSocket,
        /// Serve them over HTTP at this address (`GET /metrics`) instead of printing
        /// them once: every scrape asks the agent (the chart's `metrics` container).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// The lab: a one-node cluster on this machine, pods as network namespaces.
    Lab {
        #[command(subcommand)]
        what: LabCommand,
        /// Lab name (several labs can coexist).
        #[arg(long, global = true, default_value = "default")]
        name: String,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

/// `palisade agent` options.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Where the desired state comes from: a directory of manifests (--manifests) or
    /// the Kubernetes API server (--kubeconfig/--context, or in-cluster).
    #[arg(long, value_enum, default_value_t = SourceKind::Directory)]
    pub source: SourceKind,
    /// Directory of manifests to enforce (watched for changes), with --source directory.
    #[arg(long, required_if_eq("source", "directory"))]
    pub manifests: Option<PathBuf>,
    /// Kubeconfig of the API server to follow, with --source kubernetes (default: the
    /// in-cluster service account, else KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig, with --source kubernetes.
    #[arg(long)]
    pub context: Option<String>,
    /// The API socket: mode 0600, root only, every request (the CNI plugin's too).
    #[arg(long, default_value = "/run/palisade/agent.sock")]
    pub socket: PathBuf,
    /// The read-only API socket: mode 0660, group --read-only-group; answers what only
    /// reads (status, endpoint, flows, metrics, check) and refuses register, unregister
    /// and sync [default: palisade-ro.sock in the directory of --socket].
    #[arg(long)]
    pub read_only_socket: Option<PathBuf>,
    /// Group that may use the read-only socket: a name or a number (0: root only).
    #[arg(long, default_value = "0")]
    pub read_only_group: String,
    /// State directory (interface registry).
    #[arg(long, default_value = "/var/lib/palisade")]
    pub state_dir: PathBuf,
    /// bpffs root for pins.
    #[arg(long, default_value = "/sys/fs/bpf/palisade")]
    pub pin_root: PathBuf,
    /// Decision log (JSON lines). Size-capped and rotated (see --decision-log-max-bytes).
    #[arg(long)]
    pub decision_log: Option<PathBuf>,
    /// Size cap of the decision log file, bytes; past it the file is rotated to
    /// FILE.1 (older ones shift to FILE.2 ...). 0 = no cap.
    #[arg(long, default_value_t = palisade_agent::decision_log::DEFAULT_MAX_BYTES)]
    pub decision_log_max_bytes: u64,
    /// Rotated decision log files kept (FILE.1 .. FILE.N); the oldest is removed.
    #[arg(long, default_value_t = palisade_agent::decision_log::DEFAULT_KEEP)]
    pub decision_log_keep: u32,
    /// Which decisions to log: off, denies, all.
    #[arg(long, default_value = "denies")]
    pub log_mode: String,
    /// With --log-mode all: log 1 in N allowed new flows.
    #[arg(long, default_value_t = 1)]
    pub sample: u32,
    /// Decision events per second for the whole node; beyond it events are suppressed
    /// and counted (metric palisade_decision_events_suppressed_total). 0 = unlimited.
    /// Applied on every start, whatever an earlier run pinned.
    #[arg(long, default_value_t = palisade_agent::enforcer::DEFAULT_EVENTS_PER_SEC)]
    pub events_per_sec: u32,
    /// Decision events the node may report at once after a quiet period (at least
    /// --events-per-sec).
    #[arg(long, default_value_t = palisade_agent::enforcer::DEFAULT_EVENTS_BURST)]
    pub events_burst: u32,
    /// Decision events per second (and at once) for one pod, the pod whose policy
    /// decides (the destination for ingress, the source for egress); taken before the
    /// node's budget, so one flooded or flooding pod cannot silence the others.
    /// 0 = no per-pod limit. The kernel splits each budget evenly over the CPUs.
    #[arg(long, default_value_t = palisade_agent::enforcer::DEFAULT_POD_EVENTS_PER_SEC)]
    pub pod_events_per_sec: u32,
    /// Open API connections at most; beyond it the oldest connection still sending
    /// its request is closed (busy ones never are).
    #[arg(long, default_value_t = palisade_agent::listener::DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub api_max_connections: usize,
    /// Longest API request line, bytes; a longer one is refused.
    #[arg(long, default_value_t = palisade_agent::listener::DEFAULT_MAX_REQUEST_BYTES,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub api_max_request_bytes: usize,
    /// Time a client has to send its whole request line after connecting, ms.
    #[arg(long, default_value_t = palisade_agent::listener::DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub api_request_timeout_ms: u64,
    /// Capacity of the policy map (prefixes over all tables) and of its port
    /// partitions (default 262144). A larger value than the pinned map's grows
    /// it at this start (entries copied before the programs switch); a smaller
    /// one is ignored with a warning. Same for the other capacities below.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub policy_entries: Option<u32>,
    /// Capacity of the connection-tracking table (default 262144).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub conntrack_entries: Option<u32>,
    /// Pod and node addresses of the whole cluster, per address family
    /// (default 262144: Kubernetes' 150,000 pods per cluster and room to spare).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub host_entries: Option<u32>,
    /// ipBlock/CIDR prefixes (shorter than a host address), per address family
    /// (default 65536).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub prefix_entries: Option<u32>,
    /// Seconds a CNI registration whose pod never appears in the manifests is kept
    /// before the agent forgets it (checked at every pass, at least every 30 s).
    #[arg(long, default_value_t = palisade_agent::registry::DEFAULT_REGISTRATION_TTL.as_secs())]
    pub registration_ttl_secs: u64,
    /// Re-judge established connections whenever a policy, a pod's or namespace's
    /// labels or an address's identity changes, and cut those now denied (see
    /// docs/semantics.md, "Established flows"). Applied on every start.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub revoke_established: bool,
    /// This node's name (a DaemonSet passes `spec.nodeName`): only pods scheduled here
    /// get tables, every other pod is kept only as a peer. Without it every pod of the
    /// desired state gets tables (the lab, a directory of one node's manifests).
    #[arg(long)]
    pub node_name: Option<String>,
    /// With `--source kubernetes`: publish what this node enforces in its
    /// NodePolicyStatus object (palisade.io/v1alpha1, named after `--node-name`), which
    /// `palisade controller` aggregates. Default: on when `--node-name` is given.
    #[arg(long, action = clap::ArgAction::Set)]
    pub publish_status: Option<bool>,
}

/// Where `palisade agent` reads the desired state from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceKind {
    /// A directory of manifests.
    Directory,
    /// The Kubernetes API server.
    Kubernetes,
}

/// `palisade ebpf` subcommands.
#[derive(Debug, Subcommand)]
pub enum EbpfCommand {
    /// Programs.
    Progs,
    /// Maps.
    Maps,
}

/// `palisade endpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Every endpoint and the generation in force.
    List,
    /// One endpoint: policies, compiled rules, kernel state.
    Get {
        /// NAMESPACE/NAME.
        pod: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Desired vs kernel state (exit 1 if they differ).
    Diff {
        /// NAMESPACE/NAME.
        pod: String,
    },
}

/// `palisade lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Create pods (network namespaces via CNI), start servers and the agent; with
    /// --kubernetes, a multi-node cluster with a real control plane instead.
    Up {
        /// Manifest files or directories (YAML, multi-document, or JSON); `-` for stdin.
        /// Required without --kubernetes; with it, applied once the cluster is up.
        #[arg(short = 'f', long = "filename", num_args = 1.., required_unless_present = "kubernetes")]
        files: Vec<PathBuf>,
        /// Directory with the palisade-cni binary (default: beside this binary).
        #[arg(long)]
        cni_bin: Option<PathBuf>,
        /// A cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler in
        /// a network namespace of their own, and per node namespace the agent,
        /// kube-proxy and the lab kubelet, joined by a routed cluster network.
        #[arg(long)]
        kubernetes: bool,
        /// Nodes of the --kubernetes cluster.
        #[arg(long, default_value_t = 2, requires = "kubernetes",
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=250))]
        nodes: usize,
    },
    /// Print a kubeconfig for the --kubernetes lab's user (kubectl --kubeconfig FILE ...).
    Kubeconfig,
    /// Create or replace objects; returns once in force.
    Apply {
        #[command(flatten)]
        manifests: Manifests,
    },
    /// Remove the named objects; returns once in force.
    Delete {
        #[command(flatten)]
        manifests: Manifests,
    },
    /// Real connection attempts between every ordered pair of pods.
    Probe {
        #[command(flatten)]
        port: PortArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Show where reality and the simulator disagree.
        #[arg(long)]
        compare: bool,
        /// Address family.
        #[arg(long)]
        family: Option<Family>,
        /// Per-attempt timeout in milliseconds.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
    },
    /// Remove every namespace, pin and process the lab made.
    Down,
    /// Force a full pass of the agent (rebuild and resync the whole datapath, as it does
    /// every 30 s); returns once in force.
    Resync,
    /// Start the lab's agent again (after a crash, kill or upgrade); returns once it
    /// answers. Enforcement never depended on it.
    StartAgent,
    /// (--kubernetes lab) Replace every node's agent under traffic, node after node,
    /// round after round, as a rollout of a new chart revision does: each restart must
    /// replace the programs on every pod interface, long-lived allowed TCP connections
    /// (same node, across nodes) must survive, and denied 1 ms probers get nothing
    /// through. Exit code 1 if any of it fails.
    #[command(
        after_help = "Example:\n  palisade lab up --kubernetes --nodes 2 && palisade lab upgrade --rounds 20"
    )]
    Upgrade {
        /// Rounds (each restarts every node's agent once).
        #[arg(long, default_value_t = 20,
            value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
        rounds: usize,
        /// The `palisade` binary the new agents run (the new release; default: this one).
        /// Its directory holds the release's `palisade-cni`, which the new pods' init
        /// step installs and re-chains.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// (--kubernetes lab) Take Palisade off the cluster as docs/install.md says: stop
    /// the agents and the controller, on every node `palisade-cni uninstall` (chaining
    /// entry, plugin, pins: the programs detach), then delete the chart's objects and
    /// CRDs. Pods keep running, with no policy.
    Uninstall {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The AWS NetworkPolicy walkthrough, step by step, on real packets.
    Walkthrough {
        /// Directory with the palisade-cni binary (default: beside this binary).
        #[arg(long)]
        cni_bin: Option<PathBuf>,
        /// Leave the lab up at the end.
        #[arg(long)]
        keep: bool,
        /// The example directory.
        #[arg(long, default_value = "examples/aws-walkthrough")]
        dir: PathBuf,
    },
    /// (internal) The loopback forwarder to a --kubernetes lab's API server.
    #[command(hide = true)]
    Forward {
        /// The inherited listening socket.
        #[arg(long)]
        fd: i32,
        /// The API server's network namespace (a path).
        #[arg(long)]
        netns: PathBuf,
        /// The API server's address there.
        #[arg(long)]
        to: std::net::SocketAddr,
    },
    /// (internal) A pod's server, run inside its network namespace.
    #[command(hide = true)]
    Serve {
        /// Server arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// `palisade bench` subcommands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Per-packet cost of the datapath vs policy size (BPF_PROG_TEST_RUN).
    Datapath {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Policy sizes.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,10000,100000")]
        entries: Vec<usize>,
        /// Rounds (every size once per round, order rotated); ratios are taken per round.
        #[arg(long, default_value_t = 31)]
        rounds: usize,
    },
    /// Real traffic: Palisade vs no policy vs iptables, interleaved rounds.
    #[command(
        after_help = "Example:\n  palisade bench network --rounds 8 --plot docs/performance-scaling.svg"
    )]
    Network {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Rounds (every configuration at every size once per round).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Policy sizes N.
        #[arg(long, value_delimiter = ',', default_value = "10,1000,10000,50000")]
        entries: Vec<usize>,
        /// Milliseconds per metric run.
        #[arg(long, default_value_t = 1000)]
        duration_ms: u64,
        /// Draw the scaling curve to this SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Control-plane fan-out: bytes the real kube-apiserver sends each node's agent per
    /// pod event (count-only agents: the agent's Kubernetes source, no datapath),
    /// against a model of AWS's PolicyEndpoints.
    #[command(
        after_help = "Example:\n  palisade bench fanout --namespaces 10 --apps 10 --pods-per-app 100 --agents 20"
    )]
    Fanout {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Namespaces.
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        /// Applications per namespace (one NetworkPolicy each).
        #[arg(long, default_value_t = 10)]
        apps: usize,
        /// Pods per application.
        #[arg(long, default_value_t = 100)]
        pods_per_app: usize,
        /// Node objects (pods are spread over them).
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Count-only agents, each on its own connection.
        #[arg(long, default_value_t = 20)]
        agents: usize,
        /// Label updates of existing pods.
        #[arg(long, default_value_t = 200)]
        updates: usize,
        /// Pods created, given an address and deleted.
        #[arg(long, default_value_t = 100)]
        lifecycles: usize,
        /// The AWS model's endpointChunkSize (1000 in its Helm chart).
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
    },
    /// Agent memory per remote pod: the resident set of the real agent (this binary,
    /// `agent --source kubernetes`) for a node with no pods, while the real
    /// kube-apiserver holds each number of pods in turn.
    #[command(
        after_help = "Example:\n  palisade bench kube-memory --pods 10000,100000 --namespaces 100 --nodes 100"
    )]
    KubeMemory {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Pod counts to measure at, ascending (the cluster grows from one to the next).
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        pods: Vec<usize>,
        /// Namespaces the pods are spread over.
        #[arg(long, default_value_t = 100)]
        namespaces: usize,
        /// Node objects the pods are bound to (none is the agent's).
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Pods per application (one label set and one NetworkPolicy each).
        #[arg(long, default_value_t = 50)]
        pods_per_app: usize,
    },
    /// A policy written to the API server -> in force on every node, on real packets,
    /// in a Kubernetes lab of its own (p50, p99), under a background load.
    #[command(
        after_help = "Background pods beyond --real-pods-per-node x --nodes are API-only: bound to
                      registered Nodes without a kubelet (kept Ready, cordoned), their addresses
                      written through the status subresource; every agent holds and compiles them
                      as remote pods, no packet reaches them.

                      Example:
  palisade bench kube-enforcement --pods 1000 --policies 1000 --trials 100"
    )]
    KubeEnforcement {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[command(flatten)]
        load: KubeLoadArgs,
        /// Trials.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// Directory with the palisade-cni binary (default: beside this binary).
        #[arg(long)]
        cni_bin: Option<PathBuf>,
    },
    /// A Deployment scaled up under an egress policy: datagrams of the new replicas
    /// that reached the denied peer (from each one's first), and pod creation -> Ready
    /// (p50, p99), in a Kubernetes lab of its own, under a background load.
    #[command(
        after_help = "Each replica sends to the denied peer every millisecond from the instant its
                      CNI ADD returns; creation and Ready are the local receive times of a watch's
                      events (creationTimestamp has 1 s granularity).

                      Example:
  palisade bench kube-scaleup --from 1 --to 10 --rounds 12"
    )]
    KubeScaleup {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[command(flatten)]
        load: KubeLoadArgs,
        /// Replicas before each scale-up.
        #[arg(long, default_value_t = 1)]
        from: usize,
        /// Replicas after it.
        #[arg(long, default_value_t = 10)]
        to: usize,
        /// Scale-ups (each followed by a scale-down to --from).
        #[arg(long, default_value_t = 12)]
        rounds: usize,
        /// Directory with the palisade-cni binary (default: beside this binary).
        #[arg(long)]
        cni_bin: Option<PathBuf>,
    },
    /// Policy change -> in force and CNI ADD -> in force on a real lab (p50, p99).
    Enforcement {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// NetworkPolicies loaded.
        #[arg(long, default_value_t = 1000)]
        policies: usize,
        /// Trials per latency.
        #[arg(long, default_value_t = 100)]
        trials: usize,
        /// Directory with the palisade-cni binary (default: beside this binary).
        #[arg(long)]
        cni_bin: Option<PathBuf>,
    },
}

/// The background load of the Kubernetes benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeLoadArgs {
    /// Background pods in all (real up to --real-pods-per-node per node, the rest
    /// API-only).
    #[arg(long, default_value_t = 1000)]
    pub pods: usize,
    /// Background NetworkPolicies selecting them.
    #[arg(long, default_value_t = 1000)]
    pub policies: usize,
    /// The most real background pods per lab node (the lab kubelet's maxPods is 110;
    /// the benchmark's own pods need room too).
    #[arg(long, default_value_t = 90)]
    pub real_pods_per_node: usize,
}

impl KubeLoadArgs {
    /// The load these flags ask for.
    pub fn spec(&self) -> crate::bench_kube_load::LoadSpec {
        crate::bench_kube_load::LoadSpec {
            pods: self.pods,
            policies: self.policies,
            real_per_node: self.real_pods_per_node,
        }
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterAccess {
    /// Kubeconfig file (default: in-cluster service account, KUBECONFIG or
    /// ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig.
    #[arg(long)]
    pub context: Option<String>,
}

/// `palisade controller`.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub cluster: ClusterAccess,
    /// Namespace of the leader-election Lease (a Deployment passes its own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "palisade-system")]
    pub namespace: String,
    /// This replica's identity in the Lease (a Deployment passes the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds a Lease not renewed stays held.
    #[arg(long, default_value_t = palisade_controller::lease::DEFAULT_DURATION.as_secs())]
    pub lease_duration_secs: u64,
    /// Seconds between renewals (and between looks by the other replicas).
    #[arg(long, default_value_t = palisade_controller::lease::DEFAULT_RENEW.as_secs())]
    pub renew_secs: u64,
}
