//! `palisade lab uninstall`: Palisade taken off a `--kubernetes` lab the way
//! `docs/install.md` ("Uninstall") takes it off a cluster, so that procedure is
//! tested against the real control plane and kernel:
//!
//! 1. the agent DaemonSet and the controller Deployment go away: the lab stops those
//!    processes (SIGTERM); the pinned programs stay in force meanwhile;
//! 2. on every node, `palisade-cni uninstall --conf-dir --pin-root` (the image's
//!    installer, as the per-node step runs it): the chaining entry leaves the node's
//!    configuration list (the rest restored byte for byte), every pin goes, and with
//!    the pins the kernel detaches the programs from every pod's interface; the
//!    agent's state directory (its registrations) is removed. The plugin binary stays:
//!    a runtime that deletes a sandbox with the configuration it was created with (as
//!    CRI-O and the lab kubelet do) still runs `palisade-cni` DEL for the pods created
//!    while it was chained, and DEL completes without an agent;
//! 3. the chart's objects are deleted (`helm uninstall` and the CRDs: with the CRDs,
//!    every NodePolicyStatus and NetworkPolicyStatus object).
//!
//! Pods keep running, with no policy; pods created afterwards run the node's chain
//! without Palisade.

use anyhow::{bail, Context};
use serde::Serialize;

use crate::kube_lab;

/// What was removed on one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeUninstall {
    /// The node.
    pub node: String,
    /// What `palisade-cni uninstall` changed, in its words.
    pub changes: Vec<String>,
}

/// What `lab uninstall` did.
#[derive(Debug, Clone, Serialize)]
pub struct UninstallReport {
    /// Per node.
    pub nodes: Vec<NodeUninstall>,
    /// What the deletion of the chart's objects said.
    pub objects: Vec<String>,
}

/// `lab uninstall` of lab `name`.
pub fn run(name: &str) -> anyhow::Result<UninstallReport> {
    let mut lab = kube_lab::open(name)?;
    let cp = lab.control_plane()?;
    // 1. The Deployment's and the DaemonSet's pods end.
    if let Some(c) = lab.controller.take() {
        c.stop();
    }
    for node in &mut lab.nodes {
        if let Some(a) = node.agent.take() {
            a.stop();
        }
    }
    lab.save()?;
    // 2. Per node.
    let mut nodes = Vec::new();
    for node in &lab.nodes {
        let (conf_dir, bin_dir, _) = kube_lab::cni_paths(node);
        let plugin = bin_dir.join("palisade-cni");
        if !plugin.is_file() {
            bail!(
                "node {}: {} is not installed",
                node.net.name,
                plugin.display()
            );
        }
        let out = std::process::Command::new(&plugin)
            .arg("uninstall")
            .arg("--conf-dir")
            .arg(&conf_dir)
            .arg("--pin-root")
            .arg(&node.pin_root)
            .output()
            .context("running palisade-cni uninstall")?;
        if !out.status.success() {
            bail!(
                "palisade-cni uninstall on node {}: {}",
                node.net.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let state = node.dir.join("agent");
        if state.exists() {
            std::fs::remove_dir_all(&state).with_context(|| format!("{}", state.display()))?;
        }
        let _ = std::fs::remove_file(&node.socket);
        nodes.push(NodeUninstall {
            node: node.net.name.clone(),
            changes: String::from_utf8_lossy(&out.stderr)
                .lines()
                .map(str::to_string)
                .collect(),
        });
    }
    // 3. The release's objects and the CRDs (and with them every status object).
    let out = cp
        .kubectl(
            &[
                "delete",
                "--ignore-not-found",
                "--wait=true",
                "--timeout=120s",
                "-f",
                "-",
            ],
            Some(&kube_lab::chart_objects()),
        )
        .context("deleting the chart's objects")?;
    Ok(UninstallReport {
        nodes,
        objects: out.lines().map(str::to_string).collect(),
    })
}
