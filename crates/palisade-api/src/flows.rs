//! `flows` stream items: one decision record per line.

use serde::{Deserialize, Serialize};

use crate::wire::Verdict;

/// Which way a packet went, seen from the enforcing pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the pod (its ingress; the `to_pod` program).
    Ingress,
    /// From the pod (its egress; the `from_pod` program).
    Egress,
}

impl Direction {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// Why the datapath decided as it did (the names `palisade_datapath::reason_name`
/// gives the kernel's reason codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// A policy rule allowed it.
    PolicyAllow,
    /// Part of a connection already allowed.
    CtEstablished,
    /// A reply of an allowed connection.
    CtReply,
    /// An ICMP error about an allowed connection.
    CtRelated,
    /// A non-first fragment of an allowed datagram.
    FragTracked,
    /// IPv6 neighbour discovery.
    Ndp,
    /// Not IP (ARP and the like).
    NonIp,
    /// A policy rule (or the default) denied it.
    PolicyDeny,
    /// The interface has no endpoint entry (fail closed).
    NoEndpoint,
    /// The source is not the pod's own address.
    Spoof,
    /// The packet could not be parsed.
    Malformed,
    /// A fragment whose first fragment was not seen.
    FragNoState,
    /// More IPv6 extension headers than the datapath walks.
    Ipv6ExtLimit,
    /// The peer address has no identity (fail closed).
    NoIdentity,
    /// The endpoint's table is missing (fail closed).
    NoTable,
    /// A VLAN-tagged frame.
    Vlan,
    /// A Service frontend without backends.
    SvcNoBackend,
    /// An untranslated Service frontend (SCTP) with a backend the policy denies.
    SvcUntranslatedDeny,
    /// The reply of a translated flow whose frontend is gone.
    SvcNoRevnat,
    /// A code this build does not know (a newer datapath).
    Unknown,
}

impl Reason {
    /// Every reason, in the kernel's code order, then [`Reason::Unknown`].
    pub const ALL: [Reason; 20] = [
        Reason::PolicyAllow,
        Reason::CtEstablished,
        Reason::CtReply,
        Reason::CtRelated,
        Reason::FragTracked,
        Reason::Ndp,
        Reason::NonIp,
        Reason::PolicyDeny,
        Reason::NoEndpoint,
        Reason::Spoof,
        Reason::Malformed,
        Reason::FragNoState,
        Reason::Ipv6ExtLimit,
        Reason::NoIdentity,
        Reason::NoTable,
        Reason::Vlan,
        Reason::SvcNoBackend,
        Reason::SvcUntranslatedDeny,
        Reason::SvcNoRevnat,
        Reason::Unknown,
    ];

    /// The wire name (`policy-allow`, `spoof`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PolicyAllow => "policy-allow",
            Reason::CtEstablished => "ct-established",
            Reason::CtReply => "ct-reply",
            Reason::CtRelated => "ct-related",
            Reason::FragTracked => "frag-tracked",
            Reason::Ndp => "ndp",
            Reason::NonIp => "non-ip",
            Reason::PolicyDeny => "policy-deny",
            Reason::NoEndpoint => "no-endpoint",
            Reason::Spoof => "spoof",
            Reason::Malformed => "malformed",
            Reason::FragNoState => "frag-no-state",
            Reason::Ipv6ExtLimit => "ipv6-ext-limit",
            Reason::NoIdentity => "no-identity",
            Reason::NoTable => "no-table",
            Reason::Vlan => "vlan",
            Reason::SvcNoBackend => "svc-no-backend",
            Reason::SvcUntranslatedDeny => "svc-untranslated-deny",
            Reason::SvcNoRevnat => "svc-no-revnat",
            Reason::Unknown => "unknown",
        }
    }

    /// The reason a datapath name stands for; [`Reason::Unknown`] for any other.
    pub fn from_name(name: &str) -> Reason {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .unwrap_or(Reason::Unknown)
    }

    /// Whether a policy rule decided (only then does a record name a policy).
    pub fn by_policy(self) -> bool {
        matches!(self, Reason::PolicyAllow | Reason::PolicyDeny)
    }
}

/// One decision, as `palisade flows` and the decision log show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// RFC 3339 time, UTC, milliseconds.
    pub time: String,
    /// The enforcing endpoint, `namespace/name`.
    pub pod: String,
    /// Towards `pod` or from it.
    pub direction: Direction,
    /// Source: `namespace/name` of a pod, or an address.
    pub src: String,
    /// Destination: `namespace/name` of a pod, or an address.
    pub dst: String,
    /// Source address.
    pub src_ip: String,
    /// Destination address.
    pub dst_ip: String,
    /// Source port (0 for portless protocols).
    pub src_port: u16,
    /// Destination port (0 for portless protocols).
    pub dst_port: u16,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or the protocol number.
    pub protocol: String,
    /// Passed or dropped.
    pub verdict: Verdict,
    /// The datapath's reason.
    pub reason: Reason,
    /// The policy that decided (`Kind namespace/name`), when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The decision in plain words.
    pub explanation: String,
}

/// One line of a `flows` stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FlowItem {
    /// A decision.
    Record(DecisionRecord),
    /// The reader fell behind the live stream and `lagged` records were skipped.
    Lagged {
        /// How many.
        lagged: u64,
        /// Said in words.
        note: String,
    },
}

impl FlowItem {
    /// The note the agent sends when a follower fell `n` records behind.
    pub fn lagged(n: u64) -> Self {
        FlowItem::Lagged {
            lagged: n,
            note: "the reader fell behind; records were skipped".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_by_its_wire_name() {
        for r in Reason::ALL {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
            assert_eq!(serde_json::from_str::<Reason>(&json).unwrap(), r);
            assert_eq!(Reason::from_name(r.as_str()), r);
        }
        assert_eq!(Reason::from_name("policy_allow"), Reason::Unknown);
    }

    #[test]
    fn a_flows_line_is_a_record_or_a_lag_note_and_nothing_else() {
        let record = DecisionRecord {
            time: "2026-01-01T00:00:00.000Z".into(),
            pod: "x/a".into(),
            direction: Direction::Egress,
            src: "x/a".into(),
            dst: "10.0.0.9".into(),
            src_ip: "10.0.0.1".into(),
            dst_ip: "10.0.0.9".into(),
            src_port: 1234,
            dst_port: 80,
            protocol: "TCP".into(),
            verdict: Verdict::Deny,
            reason: Reason::PolicyDeny,
            policy: None,
            explanation: "denied".into(),
        };
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains(r#""direction":"egress""#), "{line}");
        assert!(
            line.contains(r#""verdict":"deny","reason":"policy-deny""#),
            "{line}"
        );
        assert_eq!(
            serde_json::from_str::<FlowItem>(&line).unwrap(),
            FlowItem::Record(record)
        );
        let lag = serde_json::to_string(&FlowItem::lagged(3)).unwrap();
        assert_eq!(
            serde_json::from_str::<FlowItem>(&lag).unwrap(),
            FlowItem::lagged(3)
        );
        let bad = line.replace(r#""verdict":"deny""#, r#""verdict":"dropped""#);
        assert!(serde_json::from_str::<FlowItem>(&bad).is_err());
    }
}
