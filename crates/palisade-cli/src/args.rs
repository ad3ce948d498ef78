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
  palisade explain -f examples/aws-walkthrough --from default/client-one --to default/demo-app --port 80
  palisade validate -f examples/
  palisade lab walkthrough
  palisade endpoint get default/demo-app

Exit codes: 0 success; 1 failure (invalid manifests for validate); 2 bad usage.";

/// Output formats for matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A truth table for people.
    Table,
    /// JSON for programs.
    Json,
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
    #[arg(long, env = "PALISADE_SOCKET")]
    pub socket: Option<PathBuf>,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verdict for every ordered pair of pods, as a truth matrix (offline).
    #[command(after_help = "Example:\n  palisade simulate -f examples/aws-walkthrough --port 80 --protocol TCP --output json")]
    Simulate {
        #[command(flatten)]
        manifests: Manifests,
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
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The decision path of one connection: each tier and policy consulted (offline).
    #[command(after_help = "Examples:\n  palisade explain -f examples/deny-metadata --from default/app --to 169.254.169.254 --port 80\n  palisade explain -f examples/aws-walkthrough --from another-ns/another-client --to default/demo-app --port 80")]
    Explain {
        #[command(flatten)]
        manifests: Manifests,
        #[command(flatten)]
        port: PortArgs,
        /// Source: NAMESPACE/NAME or an IP address.
        #[arg(long)]
        from: String,
        /// Destination: NAMESPACE/NAME or an IP address.
        #[arg(long)]
        to: String,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check manifests as the API server would, plus warnings it cannot give.
    Validate {
        #[command(flatten)]
        manifests: Manifests,
        /// Fail on warnings too.
        #[arg(long)]
        strict: bool,
    },
}
