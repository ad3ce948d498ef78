//! The `palisade` configuration: Palisade's eBPF datapath ([`palisade_datapath`])
//! attached to the host-side veths in the node namespace, `from_pod`/`to_pod` on `ns`
//! for the server pod and on `nc` for the client pod (as on a real node, where every
//! pod's veth carries the programs), enforcing the same [`Compiled`] the iptables
//! baselines are generated from.
//!
//! ## Why a worker thread
//!
//! Interface names resolve, and TCX links attach, in the network namespace of the
//! calling *thread*; the runner's thread stays in the root namespace. So one worker
//! thread enters the node namespace and owns every [`Datapath`] for the whole run;
//! the runner sends it commands. A `Datapath` never crosses threads.
//!
//! ## Load once per N, attach per measurement
//!
//! Each N gets its own datapath (programs and maps pinned under
//! `/sys/fs/bpf/palisade-netbench-<pid>-<tag>/n<N>`), loaded and synced once, so that a
//! configuration switch is only attach/detach (TCX link create/unpin), not a 50k-entry
//! map sync. The conntrack map is flushed on every detach so each measurement starts
//! from an empty table, like a fresh attachment.
//!
//! Cleanup: dropping [`Enforcer`] stops the worker, which detaches and unpins every
//! datapath and removes the pin directory. Deleting the node namespace also removes
//! any attachment left by a crash; pins left by a `kill -9` are under the pid-named
//! directory and can be removed with `rm -r`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use palisade_datapath::{Datapath, MapSizes};
use palisade_policy::compiled::Compiled;

use crate::policy::{CLIENT_POD, SERVER_POD};
use crate::testbed::{enter_netns_and_pin, TestBed, NODE_IF_CLIENT, NODE_IF_SERVER};
use crate::BenchError;

/// Headroom over the encoded size of the largest policy, so capacity checks pass.
const POLICY_HEADROOM: f64 = 1.25;

enum Cmd {
    Load(
        usize,
        Box<Compiled>,
        mpsc::Sender<Result<usize, BenchError>>,
    ),
    Attach(usize, mpsc::Sender<Result<(), BenchError>>),
    Detach(mpsc::Sender<Result<(), BenchError>>),
}

/// The worker owning every loaded datapath; see the module doc.
pub struct Enforcer {
    tx: Option<mpsc::Sender<Cmd>>,
    worker: Option<JoinHandle<Result<(), BenchError>>>,
    root: PathBuf,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer").finish_non_exhaustive()
    }
}

fn dp_err(what: &str) -> impl Fn(palisade_datapath::Error) -> BenchError + '_ {
    move |e| {
        let mut msg = format!("{what}: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        BenchError::Palisade(msg)
    }
}

impl Enforcer {
    /// Starts the worker in `bed`'s node namespace.
    /// With `client_side` false, only the server's veth gets the programs (the same
    /// single enforcement point as the iptables baselines), to split the cost.
    pub fn start(bed: &TestBed, tag: &str, client_side: bool) -> Result<Enforcer, BenchError> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let node = bed.node.clone();
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/palisade-netbench-{}-{tag}",
            std::process::id()
        ));
        let worker_root = root.clone();
        let worker = std::thread::Builder::new()
            .name("bench-palisade".into())
            .spawn(move || worker(&node, worker_root, client_side, rx))
            .map_err(|e| BenchError::Io {
                what: "spawning datapath thread".into(),
                source: e,
            })?;
        Ok(Enforcer {
            tx: Some(tx),
            worker: Some(worker),
            root,
        })
    }

    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::Sender<Result<T, BenchError>>) -> Cmd,
    ) -> Result<T, BenchError> {
        let (rtx, rrx) = mpsc::channel();
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(make(rtx)).ok())
            .ok_or_else(|| BenchError::Palisade("datapath worker is gone".into()))?;
        rrx.recv()
            .map_err(|_| BenchError::Palisade("datapath worker stopped".into()))?
    }

    /// Loads a datapath for policy size `n` and syncs `compiled` into it (not attached).
    /// Returns the number of policy-map entries the compiled tables encode to.
    pub fn load(&self, n: usize, compiled: &Compiled) -> Result<usize, BenchError> {
        self.call(|r| Cmd::Load(n, Box::new(compiled.clone()), r))
    }

    /// Attaches the datapath of size `n` to the server's and client's interfaces.
    pub fn attach(&self, n: usize) -> Result<(), BenchError> {
        self.call(|r| Cmd::Attach(n, r))
    }

    /// Where the datapath of size `n` is pinned (its programs are under `progs/`).
    pub fn pin_root(&self, n: usize) -> PathBuf {
        self.root.join(format!("n{n}"))
    }

    /// Detaches whatever is attached.
    pub fn detach(&self) -> Result<(), BenchError> {
        self.call(Cmd::Detach)
    }
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        // Closing the channel ends the worker, which detaches and unpins everything.
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

fn worker(
    node: &str,
    root: PathBuf,
    client_side: bool,
    rx: mpsc::Receiver<Cmd>,
) -> Result<(), BenchError> {
    let entered = enter_netns_and_pin(node, None);
    let mut loaded: BTreeMap<usize, Datapath> = BTreeMap::new();
    let mut attached: Option<usize> = None;
    for cmd in rx.iter() {
        match cmd {
            Cmd::Load(n, compiled, reply) => {
                let r = entered.as_ref().map_err(clone_err).and_then(|_| {
                    let encoded = encoded_policy_entries(&compiled)?;
                    let sizes = MapSizes {
                        policy: ((encoded as f64 * POLICY_HEADROOM) as u32)
                            .max(MapSizes::default().policy),
                        addr4: ((compiled.addresses.len() as f64 * POLICY_HEADROOM) as u32)
                            .max(MapSizes::default().addr4),
                        ..MapSizes::default()
                    };
                    let path = root.join(format!("n{n}"));
                    let mut dp = Datapath::load_or_adopt(&path, sizes)
                        .map_err(dp_err("loading the datapath"))?;
                    dp.sync(&compiled)
                        .map_err(dp_err("syncing the compiled policy"))?;
                    loaded.insert(n, dp);
                    Ok(encoded)
                });
                let _ = reply.send(r);
            }
            Cmd::Attach(n, reply) => {
                let r = (|| {
                    detach(&mut loaded, &mut attached)?;
                    let dp = loaded.get_mut(&n).ok_or_else(|| {
                        BenchError::Palisade(format!("no datapath loaded for N={n}"))
                    })?;
                    // Mark it attached first so that a half-done attach is undone too.
                    attached = Some(n);
                    dp.attach(SERVER_POD, NODE_IF_SERVER)
                        .map_err(dp_err("attaching to the server veth"))?;
                    if client_side {
                        dp.attach(CLIENT_POD, NODE_IF_CLIENT)
                            .map_err(dp_err("attaching to the client veth"))?;
                    }
                    Ok(())
                })();
                let _ = reply.send(r);
            }
            Cmd::Detach(reply) => {
                let _ = reply.send(detach(&mut loaded, &mut attached));
            }
        }
    }
    // Shutdown: detach, unpin every datapath, remove the root.
    let mut result = detach(&mut loaded, &mut attached);
    for (_, dp) in std::mem::take(&mut loaded) {
        if let Err(e) = dp.unpin_all().map_err(dp_err("unpinning")) {
            result = result.and(Err(e));
        }
    }
    let _ = std::fs::remove_dir(&root);
    result
}

fn detach(
    loaded: &mut BTreeMap<usize, Datapath>,
    attached: &mut Option<usize>,
) -> Result<(), BenchError> {
    let Some(n) = attached.take() else {
        return Ok(());
    };
    let Some(dp) = loaded.get_mut(&n) else {
        return Ok(());
    };
    let mut result = Ok(());
    for pod in [SERVER_POD, CLIENT_POD] {
        match dp.detach(pod) {
            Ok(()) | Err(palisade_datapath::Error::NotAttached(_)) => {}
            Err(e) => result = result.and(Err(dp_err("detaching")(e))),
        }
    }
    dp.flush_conntrack(None)
        .map_err(dp_err("flushing conntrack"))?;
    result
}

/// Number of policy-map entries (after port-range → prefix expansion) of every table.
fn encoded_policy_entries(compiled: &Compiled) -> Result<usize, BenchError> {
    let mut n = 0;
    for (id, t) in &compiled.tables {
        n += palisade_datapath::maps::encode_table(*id, t)
            .map_err(|e| BenchError::Palisade(format!("encoding table {id}: {e}")))?
            .len();
    }
    Ok(n)
}

fn clone_err(e: &BenchError) -> BenchError {
    BenchError::Palisade(format!("entering the node namespace: {e}"))
}
