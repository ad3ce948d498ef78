//! The `palisade` configuration: Palisade's eBPF datapath attached to the host-side
//! veths in the node namespace (`to_pod`/`from_pod` on `ns` for the server pod, and on
//! `nc` for the client pod), enforcing the same [`Compiled`] the iptables baselines are
//! generated from.
//!
//! This is the only place that knows about `palisade-datapath`. Until that crate has a
//! loader (branch `datapath`), [`attach`] reports [`BenchError::PalisadeUnavailable`] and
//! the runner measures the other configurations and says why `palisade` is missing.

use palisade_policy::compiled::Compiled;

use crate::testbed::TestBed;
use crate::BenchError;

/// Attached programs and synced maps; detaching happens on drop (and, whatever
/// happens to this process, when the node namespace and its interfaces are deleted).
#[derive(Debug)]
pub struct Attachment {
    _private: (),
}

/// Loads the datapath, attaches it in `bed`'s node namespace and syncs `compiled`.
pub fn attach(_bed: &TestBed, _compiled: &Compiled) -> Result<Attachment, BenchError> {
    Err(BenchError::PalisadeUnavailable(
        "palisade-datapath has no loader API yet (branch datapath)".into(),
    ))
}
