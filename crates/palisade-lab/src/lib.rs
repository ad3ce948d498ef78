//! # palisade-lab: a one-node cluster on one Linux machine
//!
//! The lab makes Palisade's promises visible on real packets without Kubernetes:
//!
//! - a **node** network namespace plays the node: it holds every pod's host-side veth,
//!   forwards between pods, and is where the datapath attaches and the agent runs;
//! - each **pod** is a network namespace attached with the standard `ptp` CNI plugin
//!   (static IPAM with the manifest's `status.podIPs`, host-local otherwise), invoked
//!   like a container runtime would from inside the node namespace, optionally followed
//!   by chained plugins (`palisade-cni`, which registers the pod with the agent);
//! - each pod runs a small **server** process on its declared ports answering with the
//!   pod's `namespace/name`; a `hostNetwork` pod has no namespace of its own and runs
//!   its server in the node namespace, at its node's addresses (put on its loopback);
//! - a pod may also run a **sender** ([`sender`]) that marks what it sends with its
//!   identity, and servers log every marked arrival;
//! - the **prober** tries every pair of pods for real and reports in the same JSON
//!   format as `palisade simulate`, so measured and predicted verdicts diff directly;
//! - **state** on disk records everything created, so `palisade lab up` can return
//!   while the lab keeps running, and `down` removes exactly what was made.
//!
//! The root network namespace is never modified: no veth, route or sysctl there.
//!
//! What this crate is not: it does not load BPF or run the agent; the agent's launcher
//! records the agent's PID and pins in [`state::LabState`] so teardown covers them.
//!
//! # Wiring it into a CLI
//!
//! ```no_run
//! # fn demo(pods: Vec<palisade_policy::model::Pod>) -> Result<(), palisade_lab::LabError> {
//! use palisade_lab::{palisade_cni_plugin, Lab, LabConfig};
//! use palisade_lab::probe::{Family, ProbeOptions};
//! use palisade_lab::server::ServerCommand;
//!
//! // `palisade lab up`: servers are this binary re-executed as `palisade lab serve
//! // --identity ns/name --port 80/TCP ...`, whose handler calls
//! // `palisade_lab::server::main_with_args(rest_of_args)`.
//! let mut config = LabConfig::new("demo");
//! config.server = Some(ServerCommand {
//!     program: std::env::current_exe().unwrap(),
//!     args: vec!["lab".into(), "serve".into()],
//! });
//! config.plugin_dirs.push("/usr/local/lib/palisade/cni".into()); // palisade-cni
//! config.chain = vec![palisade_cni_plugin("/run/palisade/agent.sock".as_ref(), 10_000)];
//! let lab = Lab::up(config, &pods)?; // torn down if anything fails
//! let state = lab.persist();         // keep running after this process exits
//!
//! // `palisade lab probe --port 80 --protocol TCP --family 6`
//! let lab = Lab::load(&state.state_dir)?;
//! let opts = ProbeOptions { family: Family::V6, ..Default::default() };
//! let report = lab.probe(80, palisade_policy::model::Protocol::Tcp, opts);
//! println!("{}", serde_json::to_string_pretty(&report).unwrap());
//!
//! // `palisade lab down`
//! for problem in lab.down() {
//!     eprintln!("{problem}");
//! }
//! # Ok(()) }
//! ```
//!
//! The agent's launcher records its process and pins so `down` removes them too:
//! `lab.state_mut().agent = ProcessRecord::of("agent", pid)`, push to
//! `state_mut().pin_paths`, then `lab.save()`.
//!
//! Start reading at [`lab::Lab`]; the wiring details are in [`cni`] (why ptp) and
//! [`addressing`]; the verdict rules of measurements are in [`probe`].
#![deny(missing_docs)]

pub mod addressing;
pub mod cni;
pub mod lab;
pub mod netns;
pub mod probe;
pub mod process;
pub mod sender;
pub mod server;
pub mod state;

pub use lab::{palisade_cni_plugin, Lab, LabConfig, LabError};
