//! # palisade-api: the node agent's local API, defined once
//!
//! Transport: a unix stream socket. The client connects, writes one request as a single
//! JSON line, reads one reply line (or, for `flows`, one record per line) and closes.
//! Every request is a type implementing [`Call`], which names its reply type, so the
//! agent (server), the CNI plugin, the CLI and the lab share one definition and a reply
//! that does not decode is an error naming the field, never an empty answer.
//!
//! The wire format is the one the agent has always spoken:
//!
//! ```text
//! > {"op":"register","namespace":"x","pod":"a","container_id":"c1","netns":"/run/netns/p1","host_ifname":"veth1234","ips":["10.244.0.5"]}
//! < {"ok":true,"generation":7,"in_force":true}
//! ```
#![deny(missing_docs)]

pub mod client;
pub mod endpoint;
pub mod flows;
pub mod wire;

pub use client::{call, ClientError, MAX_REPLY_BYTES};
pub use endpoint::*;
pub use flows::*;
pub use wire::*;
