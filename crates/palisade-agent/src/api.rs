//! The agent's local API: JSON lines over a unix socket, defined once in the
//! `palisade-api` crate (re-exported here) and shared with the CNI plugin, the CLI and
//! the lab.
//!
//! One request per connection. Most requests get one JSON reply line; `flows` with
//! `follow` streams one decision record per line until the client hangs up. The agent
//! builds its replies from the same typed payloads (`StatusData`, `SyncData`, ...) that
//! clients decode, so the two sides cannot drift apart.

pub use palisade_api::*;
