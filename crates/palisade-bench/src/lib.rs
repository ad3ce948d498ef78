//! # palisade-bench: Palisade against no policy and against iptables, on real traffic
//!
//! `palisade bench network` is a thin wrapper around [`run_network`]. This crate is not
//! a micro-benchmark of the BPF program (that is `BPF_PROG_TEST_RUN`'s job, in
//! `palisade-datapath`): it measures what a pod sees, packets crossing veths and a
//! routing hop, with the policy enforced where a real node enforces it.
//!
//! ## Method
//!
//! 1. **Test bed** ([`testbed`]): node, client and server network namespaces created for
//!    this run (names carry the pid), veth pairs client↔node and server↔node, routed
//!    through the node namespace (forwarding on there only). Nothing touches the root
//!    namespace. A guard deletes the namespaces on drop, on error, and on Ctrl-C
//!    ([`interrupt`]), which also removes every rule and attachment inside them.
//! 2. **One policy, three enforcers** ([`policy`]): the server pod gets one NetworkPolicy
//!    with `N` ingress rules (other /32s with port ranges; the client's rule last). It is
//!    compiled once by the policy core; the `palisade` configuration loads that compiled
//!    form into the eBPF datapath ([`mod@palisade`]), and the iptables configurations are
//!    *generated from the same compiled form* ([`iptables`]), so all three enforce the
//!    same thing.
//! 3. **Verification before measuring**: every configuration, at every N, must let the
//!    measured TCP and UDP flows through and block a denied port and a denied source
//!    address (`none` must let everything through). A configuration that fails aborts
//!    the run: a fast wrong answer is not a result.
//! 4. **Paired rounds**: each round measures, for each N, `none`, `palisade`,
//!    `iptables-flat`, `iptables-stateful` in turn, the order rotated by one every round
//!    (and the order of the N too), so slow drift (other tenants, thermal, page cache)
//!    hits every configuration alike and no configuration always goes first. Medians over
//!    rounds are reported with min, max and the coefficient of variation; and every ratio
//!    against `none` (and palisade against iptables-flat) is taken *per round*, then
//!    summarized as the median with the order-statistic interval of the median
//!    ([`stats`]), a verdict per goal (met / missed / within noise) and whether the
//!    interval contains 1.
//! 5. **Kernel counters**: `kernel.bpf_stats_enabled` is set to 1 for the run (restored
//!    on return, error or Ctrl-C; [`counters`]) and the Palisade programs' `run_time_ns /
//!    run_cnt` over each measurement slot gives ns per program run on real traffic.
//!    Hardware instruction counters are probed with `perf_event_open`; where they are
//!    missing (this VM) the report says so.
//! 6. **Metrics** ([`traffic`]): UDP and TCP 64-byte request/response (median round
//!    trip of the run's transactions, µs), connection rate (connect, one byte each way,
//!    close; per s), bulk TCP throughput (Gbit/s) with CPU seconds per GB from
//!    `/proc/stat`. Client and server are threads of this process, moved into their
//!    namespaces with setns(2) and pinned to different CPUs. Every run is bounded in
//!    time and every blocking call has a timeout.
//!
//! ## What it does not do
//!
//! - ipset: the kernel here has no `ip_set`, so the iptables baselines are one rule per
//!   entry, the shape an iptables-based engine produces without ipset. With ipset the
//!   address part of iptables-flat would be one hash lookup; the port ranges would not.
//! - `none` is "no rules", not "no netfilter": once an iptables configuration has run,
//!   the node namespace keeps an empty legacy `filter` table (a table cannot be removed
//!   from a namespace without unloading the module). Its cost is one hook with an empty
//!   FORWARD chain, and it is the same for `palisade`.
//! - IPv6 is not measured (the datapath handles it; the test bed is IPv4 only).
//!
//! Start reading at [`run_network`]; the CLI calls [`run_network`], then
//! [`Report::to_table`] or [`Report::to_json`], and [`plot::svg`] for `--plot`.
#![deny(missing_docs)]

pub mod counters;
pub mod datapath;
pub mod interrupt;
pub mod iptables;
pub mod palisade;
pub mod plot;
pub mod policy;
pub mod report;
pub mod stats;
pub mod testbed;
pub mod traffic;

use std::collections::BTreeMap;
use std::time::Duration;

use palisade_policy::compiled::Compiled;

pub use report::{Config, Metric, Ratio, Report, Summary};

/// Errors of a benchmark run. None is retryable as-is: each names the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A command could not be started.
    #[error("running `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command exited with failure.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its standard error.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("entering network namespace {ns}")]
    Netns {
        /// Namespace name.
        ns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Pinning a thread failed.
    #[error("pinning a thread to CPU {cpu}")]
    Affinity {
        /// The CPU.
        cpu: usize,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A socket operation failed during a run.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The traffic harness itself failed.
    #[error("traffic: {0}")]
    Traffic(String),
    /// The policy could not be built, compiled or translated.
    #[error("policy: {0}")]
    Policy(String),
    /// The Palisade datapath failed (load, sync, attach, detach), with its cause chain.
    #[error("palisade datapath: {0}")]
    Palisade(String),
    /// A configuration did not enforce what it should.
    #[error("verification failed for {config} at N={entries}: {detail}")]
    Verification {
        /// Configuration.
        config: &'static str,
        /// N.
        entries: usize,
        /// Which probe saw what.
        detail: String,
    },
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
    /// Bad options.
    #[error("invalid options: {0}")]
    Options(String),
}

/// What to run. [`Default`] is the full benchmark documented in `docs/performance.md`.
#[derive(Debug, Clone)]
pub struct NetworkOptions {
    /// Rounds (each round measures every configuration at every N once). At least 1.
    pub rounds: usize,
    /// Policy sizes N (number of ingress rules), each at least 1.
    pub entries: Vec<usize>,
    /// Duration of each metric's run (four metrics per configuration per round).
    pub duration: Duration,
    /// Configurations to measure (`none` is always included as the baseline).
    pub configs: Vec<Config>,
    /// Attach Palisade to the client's veth too (default, as on a real node where every
    /// pod's veth carries the programs); `false` enforces at the server's veth only.
    pub palisade_client_side: bool,
}

impl Default for NetworkOptions {
    fn default() -> Self {
        NetworkOptions {
            rounds: 5,
            entries: vec![10, 1_000, 10_000, 50_000],
            duration: Duration::from_secs(1),
            configs: Config::ALL.to_vec(),
            palisade_client_side: true,
        }
    }
}

/// The configuration currently enforced in the node namespace.
enum Active {
    Nothing,
    Iptables,
    Palisade,
}

/// Per-N state built once: the compiled policy and the iptables rule sets.
struct Prepared {
    compiled: Compiled,
    flat: iptables::RuleSet,
    stateful: iptables::RuleSet,
}

/// Runs the network benchmark and returns the measurements.
///
/// `progress` receives one line per step (for stderr); the function prints nothing
/// itself. Must run as root. Installs a SIGINT handler for the duration of the call
/// (restoring the previous one on return) so that Ctrl-C ends the run between two
/// measurements and the namespaces are deleted; see [`interrupt`].
pub fn run_network(
    opts: &NetworkOptions,
    mut progress: impl FnMut(&str),
) -> Result<Report, BenchError> {
    if opts.rounds == 0 || opts.entries.is_empty() || opts.entries.contains(&0) {
        return Err(BenchError::Options(
            "need rounds ≥ 1 and every N ≥ 1".into(),
        ));
    }
    let _sigint = interrupt::Guard::install();
    // Declared before the test bed, so restored after it is deleted, on every return path.
    let _stats = counters::StatsGuard::enable()?;
    let configs: Vec<Config> = Config::ALL
        .into_iter()
        .filter(|c| *c == Config::None || opts.configs.contains(c))
        .collect();

    let mut report = Report {
        rounds: opts.rounds,
        entries: opts.entries.clone(),
        ..Default::default()
    };
    report.hw_instructions_unavailable = counters::hw_instructions_available().err();
    report.notes.push(
        "ipset is impossible here: this kernel is built without ip_set, so iptables \
         configurations use one rule per entry"
            .into(),
    );

    let mut prepared = BTreeMap::new();
    for &n in &opts.entries {
        interrupt::check()?;
        let t0 = std::time::Instant::now();
        let compiled = policy::compile(&policy::cluster(n));
        progress(&format!(
            "compiled the N={n} policy in {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        let flat = iptables::generate(&compiled, iptables::Flavor::Flat)?;
        let stateful = iptables::generate(&compiled, iptables::Flavor::Stateful)?;
        report.iptables_rules.insert(n, flat.rules);
        prepared.insert(
            n,
            Prepared {
                compiled,
                flat,
                stateful,
            },
        );
    }

    progress("creating namespaces");
    let bed = testbed::TestBed::create("net")?;
    // Declared after `bed`, so dropped before it: detach and unpin, then delete.
    let enforcer = if configs.contains(&Config::Palisade) {
        let e = palisade::Enforcer::start(&bed, "net", opts.palisade_client_side)?;
        for &n in &opts.entries {
            interrupt::check()?;
            let t0 = std::time::Instant::now();
            let encoded = e.load(n, &prepared[&n].compiled)?;
            progress(&format!(
                "loaded and synced the palisade datapath for N={n} in {:.1} s",
                t0.elapsed().as_secs_f64()
            ));
            report.palisade_entries.insert(n, encoded);
        }
        Some(e)
    } else {
        None
    };
    let mut active = Active::Nothing;

    // Verification: every configuration at every N.
    for &n in &opts.entries {
        for &c in &configs {
            interrupt::check()?;
            switch(&bed, enforcer.as_ref(), &mut active, c, n, &prepared[&n])?;
            progress(&format!("verifying {} at N={n}", c.as_str()));
            verify(&bed, c, n)?;
        }
    }
    report.configs = configs.clone();

    // Warm-up (discarded): first runs pay for page faults and cold caches.
    switch(
        &bed,
        enforcer.as_ref(),
        &mut active,
        Config::None,
        0,
        &prepared[&opts.entries[0]],
    )?;
    for m in Metric::ALL {
        measure(&bed, m, opts.duration / 4)?;
    }

    for round in 1..=opts.rounds {
        let k = opts.entries.len();
        for j in 0..k {
            let n = opts.entries[(j + round - 1) % k];
            for i in 0..configs.len() {
                let c = configs[(i + round - 1) % configs.len()];
                interrupt::check()?;
                progress(&format!(
                    "round {round}/{}: {} N={n}",
                    opts.rounds,
                    c.as_str()
                ));
                switch(&bed, enforcer.as_ref(), &mut active, c, n, &prepared[&n])?;
                let key_n = if c == Config::None { 0 } else { n };
                let prog_root = match (&enforcer, c) {
                    (Some(e), Config::Palisade) => Some(e.pin_root(n)),
                    _ => None,
                };
                let before = prog_root.as_deref().map(counters::Snapshot::read);
                for m in Metric::ALL {
                    interrupt::check()?;
                    let sample = measure(&bed, m, opts.duration)?;
                    report
                        .samples
                        .entry((c, key_n, m))
                        .or_default()
                        .push(sample.value);
                    report
                        .paired
                        .entry((c, n, m))
                        .or_default()
                        .push(sample.value);
                    if let Some(cpu) = sample.cpu_s_per_gb {
                        report.cpu_s_per_gb.entry((c, key_n)).or_default().push(cpu);
                    }
                    if let Some(us) = sample.median_conn_us {
                        report.conn_us.entry((c, key_n)).or_default().push(us);
                    }
                }
                if let (Some(root), Some(before)) = (&prog_root, before) {
                    if let Some(ns) = counters::Snapshot::read(root).ns_per_run_since(&before) {
                        report.prog_ns_per_run.entry(n).or_default().push(ns);
                    }
                }
            }
        }
    }
    // `active` is dropped before `bed` (reverse declaration order): detach, then delete.
    Ok(report)
}

fn measure(bed: &testbed::TestBed, m: Metric, d: Duration) -> Result<traffic::Sample, BenchError> {
    match m {
        Metric::UdpRrUs => traffic::udp_rr(bed, d),
        Metric::TcpRrUs => traffic::tcp_rr(bed, d),
        Metric::CrrPerS => traffic::tcp_crr(bed, d),
        Metric::TcpGbps => traffic::tcp_stream(bed, d),
    }
}

/// Makes `c` the enforced configuration: removes what was active, then applies `c`.
fn switch(
    bed: &testbed::TestBed,
    enforcer: Option<&palisade::Enforcer>,
    active: &mut Active,
    c: Config,
    n: usize,
    p: &Prepared,
) -> Result<(), BenchError> {
    // Remove the previous enforcer first, so two never overlap.
    match std::mem::replace(active, Active::Nothing) {
        Active::Nothing => {}
        Active::Iptables => iptables::apply(bed, &iptables::empty())?,
        Active::Palisade => {
            if let Some(e) = enforcer {
                e.detach()?;
            }
        }
    }
    match c {
        Config::None => {}
        Config::Palisade => {
            let e = enforcer.ok_or_else(|| BenchError::Palisade("datapath not started".into()))?;
            // Recorded before attaching so that a half-done attach is undone next time.
            *active = Active::Palisade;
            e.attach(n)?;
        }
        Config::IptablesFlat => {
            *active = Active::Iptables;
            iptables::apply(bed, &p.flat)?;
        }
        Config::IptablesStateful => {
            *active = Active::Iptables;
            iptables::apply(bed, &p.stateful)?;
        }
    }
    Ok(())
}

/// Checks that the active configuration enforces the policy: measured flows pass,
/// denied flows do not (`none`: everything passes).
fn verify(bed: &testbed::TestBed, c: Config, n: usize) -> Result<(), BenchError> {
    let p = traffic::probe(bed)?;
    let enforcing = c != Config::None;
    let mut wrong = Vec::new();
    if !p.allowed_tcp {
        wrong.push("allowed TCP flow blocked".to_string());
    }
    if !p.allowed_udp {
        wrong.push("allowed UDP flow blocked".to_string());
    }
    if p.denied_port_tcp == enforcing {
        wrong.push(format!(
            "TCP to denied port {} {}",
            policy::PORT_DENIED,
            if enforcing {
                "passed"
            } else {
                "blocked without policy"
            }
        ));
    }
    if p.denied_source_udp == enforcing {
        wrong.push(format!(
            "UDP from denied source {} {}",
            testbed::DENIED_CLIENT_IP,
            if enforcing {
                "passed"
            } else {
                "blocked without policy"
            }
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(BenchError::Verification {
            config: c.as_str(),
            entries: n,
            detail: wrong.join("; "),
        })
    }
}

/// Runs only the verification step for `configs` at one N, on a fresh test bed: the
/// quick self-check behind the privileged test and `--verify-only` style use.
pub fn verify_configs(entries: usize, configs: &[Config]) -> Result<Vec<Config>, BenchError> {
    let _sigint = interrupt::Guard::install();
    let compiled = policy::compile(&policy::cluster(entries));
    let prepared = Prepared {
        flat: iptables::generate(&compiled, iptables::Flavor::Flat)?,
        stateful: iptables::generate(&compiled, iptables::Flavor::Stateful)?,
        compiled,
    };
    let bed = testbed::TestBed::create("verify")?;
    let enforcer = if configs.contains(&Config::Palisade) {
        let e = palisade::Enforcer::start(&bed, "verify", true)?;
        e.load(entries, &prepared.compiled)?;
        Some(e)
    } else {
        None
    };
    let mut active = Active::Nothing;
    for &c in configs {
        switch(&bed, enforcer.as_ref(), &mut active, c, entries, &prepared)?;
        verify(&bed, c, entries)?;
    }
    Ok(configs.to_vec())
}
