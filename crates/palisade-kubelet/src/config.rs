//! The command line (a contract with `palisade lab up --kubernetes`, which spawns one
//! kubelet per node namespace) and the configuration it yields.

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::Value;

/// `palisade-lab-kubelet` arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "palisade-lab-kubelet",
    about = "The lab kubelet: runs the pods bound to one node of the lab cluster"
)]
pub struct Args {
    /// Kubeconfig with the node's client certificate (CN=system:node:NAME, O=system:nodes).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The Node's name.
    #[arg(long)]
    pub node_name: Option<String>,
    /// The node's network namespace (`/run/netns/NAME`), where pods' host veths live.
    #[arg(long)]
    pub netns: Option<String>,
    /// The node's address (InternalIP); give twice for dual stack.
    #[arg(long = "node-ip")]
    pub node_ips: Vec<IpAddr>,
    /// The node's pod CIDR; give twice for dual stack (one IPv4 CIDR required).
    #[arg(long = "pod-cidr")]
    pub pod_cidrs: Vec<IpNet>,
    /// Where CNI plugins are looked up, in order (repeatable).
    #[arg(long = "cni-bin-dir")]
    pub cni_bin_dirs: Vec<PathBuf>,
    /// JSON file holding an array of plugin configurations chained after ptp.
    #[arg(long, conflicts_with = "cni_conf_dir")]
    pub chain: Option<PathBuf>,
    /// The node's CNI configuration directory (a node's `/etc/cni/net.d`): at every
    /// ADD, the plugins after the first of its first list (in the runtime's order) are
    /// chained after ptp, so what `palisade-cni install|uninstall` writes there is what
    /// the next pod runs.
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The pod server and sender program (`palisade-lab-serve`).
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// An argument put before the server's own (repeatable), e.g. `--server
    /// palisade-lab-kubelet --server-arg serve` or `--server palisade --server-arg lab
    /// --server-arg serve`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// The kubelet's own state directory (IPAM store, pod records, logs).
    #[arg(long)]
    pub state_dir: PathBuf,
    /// Remove every pod recorded in --state-dir (processes, CNI, namespaces) and exit;
    /// needs only --state-dir.
    #[arg(long)]
    pub teardown: bool,
}

/// A bad command line or chain file; names the flag or file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required flag is missing.
    #[error("--{0} is required")]
    Missing(&'static str),
    /// A flag's value is not acceptable.
    #[error("--{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// Why.
        problem: String,
    },
    /// The chain file cannot be read or is not a JSON array of objects with `type`.
    #[error("--chain {path}: {problem}")]
    Chain {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
    /// The node's CNI configuration (`--cni-conf-dir`) gives no usable chain.
    #[error("--cni-conf-dir: {path}: {problem}")]
    ConfDir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        problem: String,
    },
}

/// Everything the kubelet runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Kubeconfig file.
    pub kubeconfig: PathBuf,
    /// The Node's name.
    pub node_name: String,
    /// The node's network namespace.
    pub node_netns: String,
    /// Node addresses, primary family first.
    pub node_ips: Vec<IpAddr>,
    /// Pod CIDRs: exactly one IPv4, at most one IPv6, in the order given.
    pub pod_cidrs: Vec<IpNet>,
    /// CNI plugin directories.
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Plugins chained after ptp (`--chain`).
    pub chain: Vec<Value>,
    /// Read the chain from this directory at every ADD instead (`--cni-conf-dir`).
    pub cni_conf_dir: Option<PathBuf>,
    /// `palisade-lab-serve` (or a program that serves with `server_args` first).
    pub server: PathBuf,
    /// Arguments before the server's own.
    pub server_args: Vec<String>,
    /// State directory.
    pub state_dir: PathBuf,
}

impl Args {
    /// Checks the arguments and reads the chain file.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let node_name = self.node_name.ok_or(ConfigError::Missing("node-name"))?;
        let node_netns = self.netns.ok_or(ConfigError::Missing("netns"))?;
        if self.node_ips.is_empty() {
            return Err(ConfigError::Missing("node-ip"));
        }
        if self.node_ips.len() > 2
            || (self.node_ips.len() == 2
                && self.node_ips[0].is_ipv4() == self.node_ips[1].is_ipv4())
        {
            return Err(ConfigError::Invalid {
                flag: "node-ip",
                problem: format!("at most one per family, got {:?}", self.node_ips),
            });
        }
        let v4 = self
            .pod_cidrs
            .iter()
            .filter(|c| matches!(c, IpNet::V4(_)))
            .count();
        let v6 = self.pod_cidrs.len() - v4;
        if v4 != 1 || v6 > 1 {
            return Err(ConfigError::Invalid {
                flag: "pod-cidr",
                problem: format!(
                    "need exactly one IPv4 and at most one IPv6 CIDR, got {:?}",
                    self.pod_cidrs
                ),
            });
        }
        if let Some(c) = self.pod_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(ConfigError::Invalid {
                flag: "pod-cidr",
                problem: format!("{c} has host bits set (did you mean {}?)", c.trunc()),
            });
        }
        if self.cni_bin_dirs.is_empty() {
            return Err(ConfigError::Missing("cni-bin-dir"));
        }
        let chain = match &self.chain {
            None => Vec::new(),
            Some(path) => read_chain(path)?,
        };
        Ok(Config {
            kubeconfig: self.kubeconfig.ok_or(ConfigError::Missing("kubeconfig"))?,
            node_name,
            node_netns,
            node_ips: self.node_ips,
            pod_cidrs: self.pod_cidrs,
            cni_bin_dirs: self.cni_bin_dirs,
            chain,
            cni_conf_dir: self.cni_conf_dir,
            server: self.server.ok_or(ConfigError::Missing("server"))?,
            server_args: self.server_args,
            state_dir: self.state_dir,
        })
    }
}

/// Reads a chain file: a JSON array of plugin objects, each with a string `type`.
pub fn read_chain(path: &std::path::Path) -> Result<Vec<Value>, ConfigError> {
    let err = |problem: String| ConfigError::Chain {
        path: path.to_owned(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let Value::Array(plugins) = v else {
        return Err(err("expected a JSON array of plugin configurations".into()));
    };
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type").and_then(Value::as_str).is_none() {
            return Err(err(format!("plugin #{i} has no string \"type\"")));
        }
    }
    Ok(plugins)
}

/// The chain a node's CNI configuration directory gives now: the runtime's file (the
/// first, in lexical order, ending in `.conflist`; containerd and CRI-O also take
/// `.conf`/`.json` single plugins, which have nothing to chain), and of its `plugins`
/// every one after the first: the first is the node's network plugin, which the lab
/// kubelet runs itself (ptp, with the addresses it chose).
pub fn chain_from_conf_dir(dir: &std::path::Path) -> Result<Vec<Value>, ConfigError> {
    let err = |path: PathBuf, problem: String| ConfigError::ConfDir { path, problem };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| err(dir.to_owned(), e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conflist" || x == "conf" || x == "json")
        })
        .collect();
    files.sort();
    let Some(file) = files.into_iter().next() else {
        return Err(err(dir.to_owned(), "no CNI configuration file".into()));
    };
    let text = std::fs::read_to_string(&file).map_err(|e| err(file.clone(), e.to_string()))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| err(file.clone(), format!("not JSON: {e}")))?;
    let Some(plugins) = v.get("plugins").and_then(Value::as_array) else {
        // A single-plugin file: the node's plugin alone, nothing chained.
        return Ok(Vec::new());
    };
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type").and_then(Value::as_str).is_none() {
            return Err(err(file, format!("plugin #{i} has no string \"type\"")));
        }
    }
    Ok(plugins.iter().skip(1).cloned().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec![
            "palisade-lab-kubelet",
            "--kubeconfig=/k",
            "--node-name=n1",
            "--netns=n1-ns",
            "--node-ip=10.0.0.1",
            "--cni-bin-dir=/usr/lib/cni",
            "--server=/bin/serve",
            "--state-dir=/tmp/s",
        ];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap().into_config()
    }

    #[test]
    fn pod_cidrs_need_one_ipv4_and_no_host_bits() {
        assert!(args(&["--pod-cidr=10.244.1.0/24"]).is_ok());
        assert!(args(&["--pod-cidr=10.244.1.0/24", "--pod-cidr=fd00:10:244:1::/64"]).is_ok());
        let e = args(&[]).unwrap_err().to_string();
        assert!(e.contains("--pod-cidr"), "{e}");
        let e = args(&["--pod-cidr=fd00::/64"]).unwrap_err().to_string();
        assert!(e.contains("exactly one IPv4"), "{e}");
        let e = args(&["--pod-cidr=10.244.1.7/24"]).unwrap_err().to_string();
        assert!(e.contains("10.244.1.0/24"), "{e}");
        let e = args(&["--pod-cidr=10.244.1.0/24", "--node-ip=10.0.0.2"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--node-ip"), "{e}");
    }

    #[test]
    fn a_chain_file_must_be_an_array_of_typed_plugins() {
        let dir = std::env::temp_dir().join(format!("plk-chain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("chain.json");
        std::fs::write(&f, r#"[{"type":"palisade-cni"}]"#).unwrap();
        assert_eq!(read_chain(&f).unwrap().len(), 1);
        std::fs::write(&f, r#"[{"name":"x"}]"#).unwrap();
        let e = read_chain(&f).unwrap_err().to_string();
        assert!(e.contains("plugin #0") && e.contains("chain.json"), "{e}");
        std::fs::write(&f, r#"{"type":"x"}"#).unwrap();
        assert!(read_chain(&f).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_chain_of_a_conf_dir_is_what_its_first_list_has_after_the_nodes_plugin() {
        let dir = std::env::temp_dir().join(format!("plk-confdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let e = chain_from_conf_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("no CNI configuration file"), "{e}");
        std::fs::write(
            dir.join("10-a.conflist"),
            r#"{"name":"n","plugins":[{"type":"ptp"},{"type":"palisade-cni","x":1}]}"#,
        )
        .unwrap();
        // Not the first in lexical order: ignored, as the runtime ignores it.
        std::fs::write(
            dir.join("20-b.conflist"),
            r#"{"name":"n","plugins":[{"type":"ptp"},{"type":"other"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("05-notes.txt"), "not a configuration").unwrap();
        let chain = chain_from_conf_dir(&dir).unwrap();
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0]["type"], "palisade-cni");
        std::fs::write(
            dir.join("10-a.conflist"),
            r#"{"name":"n","plugins":[{"type":"ptp"}]}"#,
        )
        .unwrap();
        assert!(chain_from_conf_dir(&dir).unwrap().is_empty());
        std::fs::write(
            dir.join("10-a.conflist"),
            r#"{"plugins":[{"type":"ptp"},{}]}"#,
        )
        .unwrap();
        let e = chain_from_conf_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("10-a.conflist") && e.contains("plugin #1"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
