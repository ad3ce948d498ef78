//! One endpoint as `endpoint` shows it: the desired rows and the kernel's, in the same
//! terms, so `palisade endpoint diff` compares like with like.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// What a table row decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The packet passes.
    Allow,
    /// The packet is dropped.
    Deny,
}

impl Action {
    /// The wire name (`allow`, `deny`).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// One row of a rule table as the kernel holds it (or as the compiler wants it), in the
/// same terms on both sides so `palisade endpoint diff` can compare them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRow {
    /// Peer identity (0 = any other).
    pub peer: u32,
    /// 6, 17, 132 or 0 (other protocols).
    pub proto: u8,
    /// First port.
    pub port_lo: u16,
    /// Last port.
    pub port_hi: u16,
    /// What the row decides.
    pub action: Action,
    /// Rule id.
    pub rule: u32,
}

/// An endpoint as the kernel holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEndpoint {
    /// Ingress table id.
    pub ingress_table: u32,
    /// Egress table id.
    pub egress_table: u32,
    /// Addresses allowed as source (anti-spoofing).
    pub ips: Vec<std::net::IpAddr>,
    /// Ingress table rows.
    pub ingress: Vec<TableRow>,
    /// Egress table rows.
    pub egress: Vec<TableRow>,
}

/// Which programs the kernel runs on an endpoint's interface: what makes the tables in
/// [`KernelEndpoint`] matter at all (maps without attached programs enforce nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelAttachment {
    /// The interface's name now; `None` when no interface has the registered index.
    pub interface: Option<String>,
    /// Whether the endpoint map has an entry for the interface.
    pub endpoint_entry: bool,
    /// One per hook (`from_pod` on TC ingress, `to_pod` on TC egress).
    pub hooks: Vec<KernelHook>,
}

/// The programs on one hook, in the order the kernel runs them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelHook {
    /// Our program's name for this hook.
    pub hook: String,
    /// Ids of the programs attached, in run order.
    pub programs: Vec<u32>,
    /// Our program's id.
    pub ours: u32,
}

impl KernelAttachment {
    /// Every way the interface registered as `ifname` is not enforced by our programs;
    /// empty when it is. A program ahead of ours counts: it can pass packets first.
    pub fn problems(&self, ifname: &str) -> Vec<String> {
        let Some(now) = &self.interface else {
            return vec![format!("interface {ifname} no longer exists")];
        };
        let mut out = Vec::new();
        if now != ifname {
            out.push(format!(
                "the registered interface {ifname} is now called {now}"
            ));
        }
        if !self.endpoint_entry {
            out.push(format!("no endpoint entry for {now} in the kernel"));
        }
        for hook in ["from_pod", "to_pod"] {
            let why = match self.hooks.iter().find(|h| h.hook == hook) {
                None => format!("{hook}: not queried"),
                Some(h) if h.programs.is_empty() => {
                    format!("{hook}: no program attached to {now}")
                }
                Some(h) if h.programs.first() == Some(&h.ours) => continue,
                Some(h) if h.programs.contains(&h.ours) => format!(
                    "{hook}: program(s) {:?} run before ours ({}) on {now}",
                    &h.programs[..h.programs.iter().position(|p| *p == h.ours).unwrap_or(0)],
                    h.ours
                ),
                Some(h) => format!(
                    "{hook}: programs {:?} attached to {now}, not ours ({})",
                    h.programs, h.ours
                ),
            };
            out.push(why);
        }
        out
    }
}

/// A part of the view the agent could not read from the kernel says why instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KernelRead<T> {
    /// The read failed.
    Failed {
        /// Why.
        error: String,
    },
    /// What the kernel holds.
    Read(T),
}

/// The desired tables of one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesiredTables {
    /// Ingress table id (none when the pod is not compiled).
    pub ingress_table: Option<u32>,
    /// Egress table id.
    pub egress_table: Option<u32>,
    /// Ingress rows.
    pub ingress: Vec<TableRow>,
    /// Egress rows.
    pub egress: Vec<TableRow>,
}

/// What `endpoint` answers: one endpoint's desired and kernel state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndpointView {
    /// `namespace/name`.
    pub pod: String,
    /// The registered host-side interface.
    pub interface: String,
    /// Its index.
    pub ifindex: u32,
    /// The pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The generation in force for the pod, if any.
    pub generation_in_force: Option<u64>,
    /// What the compiler wants.
    pub desired: DesiredTables,
    /// What the kernel's maps hold.
    pub kernel: KernelRead<KernelEndpoint>,
    /// Which programs the kernel runs on the interface.
    pub attachment: KernelRead<KernelAttachment>,
    /// Rule id → the policy rule it stands for, in words.
    pub rules: BTreeMap<String, String>,
    /// Identity id → its description (free-form: for people).
    pub identities: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, programs: &[u32], ours: u32) -> KernelHook {
        KernelHook {
            hook: name.into(),
            programs: programs.to_vec(),
            ours,
        }
    }

    #[test]
    fn attachment_problems_name_every_way_an_interface_escapes_enforcement() {
        let good = KernelAttachment {
            interface: Some("veth1".into()),
            endpoint_entry: true,
            hooks: vec![hook("from_pod", &[5], 5), hook("to_pod", &[6], 6)],
        };
        assert!(good.problems("veth1").is_empty());
        let cases = [
            (
                KernelAttachment {
                    hooks: vec![hook("from_pod", &[], 5), hook("to_pod", &[6], 6)],
                    ..good.clone()
                },
                "from_pod: no program attached",
            ),
            (
                KernelAttachment {
                    hooks: vec![hook("from_pod", &[5], 5), hook("to_pod", &[9, 6], 6)],
                    ..good.clone()
                },
                "to_pod: program(s) [9] run before ours",
            ),
            (
                KernelAttachment {
                    hooks: vec![hook("from_pod", &[4], 5), hook("to_pod", &[6], 6)],
                    ..good.clone()
                },
                "not ours (5)",
            ),
            (
                KernelAttachment {
                    endpoint_entry: false,
                    ..good.clone()
                },
                "no endpoint entry",
            ),
            (
                KernelAttachment {
                    interface: None,
                    ..good.clone()
                },
                "no longer exists",
            ),
        ];
        for (a, want) in cases {
            let p = a.problems("veth1");
            assert!(p.iter().any(|s| s.contains(want)), "{want}: {p:?}");
        }
        assert!(good.problems("veth2")[0].contains("now called veth1"));
    }
}
