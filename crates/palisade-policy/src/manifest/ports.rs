//! Protocol and port pieces shared by every policy kind.

use super::error::Problems;
use super::names;
use crate::model::{PortMatch, Protocol};

/// Parses an optional protocol at `field`, defaulting to TCP like the API server.
/// Protocols are case-sensitive (`tcp` is rejected, as upstream does).
pub(crate) fn protocol(s: Option<&str>, field: &str, p: &mut Problems) -> Protocol {
    match s {
        None => Protocol::Tcp,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(other) => {
            p.error(
                field,
                format!(
                    "unsupported value {other:?}: supported values: \"SCTP\", \"TCP\", \"UDP\""
                ),
            );
            Protocol::Tcp
        }
    }
}

/// Checks a port number at `field`, returning it as `u16` when valid.
pub(crate) fn number(n: i64, field: &str, p: &mut Problems) -> Option<u16> {
    let errs = names::port_number(n);
    if errs.is_empty() {
        u16::try_from(n).ok()
    } else {
        for m in errs {
            p.error(field, format!("invalid port {n}: {m}"));
        }
        None
    }
}

/// Checks a named port at `field`.
pub(crate) fn check_name(name: &str, field: &str, p: &mut Problems) {
    for m in names::port_name(name) {
        p.error(field, format!("invalid port name {name:?}: {m}"));
    }
}

/// A protocol-less named port (cluster policies' `destinationNamedPort`, ANP
/// `namedPort`): it matches a container port of that name whatever its protocol. The
/// model's [`PortMatch::Named`] carries a protocol, so emit one per protocol; a pod's
/// port names are unique, so exactly one can resolve.
pub(crate) fn named_any_protocol(name: &str) -> Vec<PortMatch> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .map(|protocol| PortMatch::Named {
            protocol,
            name: name.to_string(),
        })
        .collect()
}
