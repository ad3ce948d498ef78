//! `palisade-cni install|uninstall`: the node-side install steps, run by the agent
//! DaemonSet's init container (and its `cni-chain` container, which re-checks the chain
//! because a network plugin such as the VPC CNI rewrites its file when it restarts).
//! A container runtime runs the plugin without arguments, so these subcommands never
//! collide with a CNI invocation.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde_json::{Map, Value};

use crate::chain::{self, ChainError, Outcome};

/// The plugin's install commands.
#[derive(Debug, Parser)]
#[command(
    name = "palisade-cni",
    about = "Palisade's chained CNI plugin: install and uninstall"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Admin,
}

#[derive(Debug, Subcommand)]
enum Admin {
    /// Copy the plugin into the CNI bin dir and chain it into the node's configuration.
    Install {
        /// The CNI configuration directory (the runtime uses its first file).
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// Copy this binary there as palisade-cni (skipped if not given).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The agent's socket, as the plugin will see it on the host.
        #[arg(long, default_value = palisade_api::DEFAULT_AGENT_SOCKET)]
        agent_socket: String,
        /// What ADD does when the agent cannot confirm enforcement: closed or open.
        #[arg(long, default_value = "closed", value_parser = ["closed", "open"])]
        fail_policy: String,
        /// How long ADD waits for the agent, ms.
        #[arg(long, default_value_t = crate::plugin::DEFAULT_TIMEOUT_MS,
              value_parser = clap::value_parser!(u64).range(1..=crate::plugin::MAX_TIMEOUT_MS))]
        timeout_ms: u64,
        /// Keep running and re-check the chain every N seconds (0: once and exit).
        #[arg(long, default_value_t = 0)]
        watch_interval_secs: u64,
    },
    /// Take palisade-cni out of every plugin list, restoring the rest byte for byte.
    Uninstall {
        /// The CNI configuration directory.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// Remove palisade-cni from this CNI bin dir.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Remove the agent's bpffs pins here (programs detach from every pod's
        /// interface once unpinned). Run only once the agent is stopped.
        #[arg(long)]
        pin_root: Option<PathBuf>,
    },
}

/// Whether `args` (without the program name) asks for an install command rather than
/// a CNI invocation.
pub fn is_admin(first_arg: Option<&str>) -> bool {
    matches!(
        first_arg,
        Some("install" | "uninstall" | "help" | "--help" | "-h")
    )
}

/// Runs the parsed command, reporting each change on stderr.
pub fn run(cli: Cli) -> Result<(), ChainError> {
    match cli.command {
        Admin::Install {
            conf_dir,
            bin_dir,
            agent_socket,
            fail_policy,
            timeout_ms,
            watch_interval_secs,
        } => {
            if let Some(bin_dir) = bin_dir {
                let me = std::env::current_exe().map_err(|source| ChainError::Io {
                    path: "/proc/self/exe".into(),
                    what: "cannot find the running binary",
                    source,
                })?;
                report("binary", chain::install_binary(&me, &bin_dir)?);
            }
            let mut options = Map::new();
            options.insert("agentSocket".into(), Value::String(agent_socket));
            options.insert("failPolicy".into(), Value::String(fail_policy));
            options.insert("timeoutMs".into(), Value::from(timeout_ms));
            let entry = chain::entry(&options);
            loop {
                match chain::install(&conf_dir, &entry) {
                    Ok(outcome) => report("chain", outcome),
                    // Watching: the node's plugin may not have written its file yet;
                    // say so and look again.
                    Err(e) if watch_interval_secs > 0 => eprintln!("palisade-cni: {e}"),
                    Err(e) => return Err(e),
                }
                if watch_interval_secs == 0 {
                    return Ok(());
                }
                std::thread::sleep(std::time::Duration::from_secs(watch_interval_secs));
            }
        }
        Admin::Uninstall {
            conf_dir,
            bin_dir,
            pin_root,
        } => {
            report("chain", chain::uninstall(&conf_dir)?);
            if let Some(bin_dir) = bin_dir {
                let path = bin_dir.join(chain::PLUGIN_TYPE);
                match std::fs::remove_file(&path) {
                    Ok(()) => report("binary", Outcome::Changed(vec![path])),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ChainError::Io {
                            path,
                            what: "cannot remove",
                            source,
                        })
                    }
                }
            }
            if let Some(pin_root) = pin_root {
                match std::fs::remove_dir_all(&pin_root) {
                    Ok(()) => report("pins", Outcome::Changed(vec![pin_root])),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(ChainError::Io {
                            path: pin_root,
                            what: "cannot remove the pins",
                            source,
                        })
                    }
                }
            }
            Ok(())
        }
    }
}

fn report(what: &str, outcome: Outcome) {
    match outcome {
        Outcome::Unchanged => eprintln!("palisade-cni: {what}: unchanged"),
        Outcome::Changed(paths) => {
            for p in paths {
                eprintln!("palisade-cni: {what}: changed {}", p.display());
            }
        }
    }
}
