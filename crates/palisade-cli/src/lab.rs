//! `palisade lab ...`: the embedded one-node cluster.
//!
//! `palisade-lab` builds pods (network namespaces through the standard CNI plugins,
//! servers, the prober). This module adds the Palisade parts around it: the desired
//! state as one manifest file per object under `<state>/manifests`, the real agent
//! running inside the node namespace, and `palisade-cni` chained after `ptp`, so a pod
//! is created only once its policy is in force.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_lab::probe::{Family as ProbeFamily, ProbeOptions};
use palisade_lab::process::ProcessRecord;
use palisade_lab::server::ServerCommand;
use palisade_lab::{Lab, LabConfig};
use palisade_policy::manifest;
use palisade_policy::model::{Cluster, Protocol};

use crate::args::{Family, LabCommand, Output};
use crate::inputs::read_inputs;
use crate::simulate::{self, Matrix};

/// How long `lab up` waits for the agent to answer on its socket.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(20);

/// State directory of a lab.
pub fn state_dir(name: &str) -> PathBuf {
    Path::new(palisade_lab::state::DEFAULT_STATE_ROOT).join(name)
}

/// State directory of the default lab.
pub fn default_state_dir() -> PathBuf {
    state_dir("default")
}

/// The bpffs root a lab's agent pins under.
pub fn pin_root(name: &str) -> PathBuf {
    pin_root_of(name)
}

/// The bpffs root of one agent of a lab (`name`, or `name-nI` for a node).
pub fn pin_root_of(name: &str) -> PathBuf {
    Path::new(palisade_lab::state::BPFFS_ROOT).join(format!("palisade-lab-{name}"))
}

/// The node agent's pin root, or the default lab's if only that exists.
pub fn default_pin_root_or_node() -> PathBuf {
    let node = PathBuf::from("/sys/fs/bpf/palisade");
    let lab = pin_root("default");
    if !node.exists() && lab.exists() {
        lab
    } else {
        node
    }
}

fn socket(name: &str) -> PathBuf {
    state_dir(name).join("agent.sock")
}

fn manifests_dir(name: &str) -> PathBuf {
    state_dir(name).join("manifests")
}

/// Dispatches a lab subcommand.
pub fn run(name: &str, what: LabCommand) -> anyhow::Result<i32> {
    match what {
        LabCommand::Up {
            files,
            cni_bin,
            kubernetes: true,
            nodes,
        } => {
            let lab = crate::kube_lab::up(name, nodes, cni_bin)?;
            println!("lab {name} is up: {}", crate::kube_lab::describe(&lab));
            if !files.is_empty() {
                let g = crate::kube_lab::apply(name, &files)?;
                println!("in force (generation {g})");
            }
            Ok(0)
        }
        LabCommand::Kubeconfig => {
            print!("{}", crate::kube_lab::kubeconfig(name)?);
            Ok(0)
        }
        LabCommand::Forward { fd, netns, to } => {
            crate::kube_lab::forward(fd, &netns, to)?;
            Ok(0)
        }
        LabCommand::Up { files, cni_bin, .. } => {
            let lab = up(name, &files, cni_bin)?;
            println!(
                "lab {name} is up: {} pods; agent socket {}",
                lab.pods.len(),
                socket(name).display()
            );
            Ok(0)
        }
        LabCommand::Apply { manifests } if crate::kube_lab::is_kube(name) => {
            let g = crate::kube_lab::apply(name, &manifests.files)?;
            println!("in force (generation {g})");
            Ok(0)
        }
        LabCommand::Delete { manifests } if crate::kube_lab::is_kube(name) => {
            let g = crate::kube_lab::delete(name, &manifests.files)?;
            println!("in force (generation {g})");
            Ok(0)
        }
        LabCommand::Apply { manifests } => {
            let g = apply(name, &manifests.files)?;
            println!("in force (generation {g})");
            Ok(0)
        }
        LabCommand::Delete { manifests } => {
            let g = delete(name, &manifests.files)?;
            println!("in force (generation {g})");
            Ok(0)
        }
        LabCommand::Probe {
            port,
            output,
            compare,
            family,
            timeout_ms,
        } => {
            let protocol: Protocol = port
                .protocol
                .parse()
                .map_err(|e: String| anyhow::anyhow!(e))?;
            let measured = probe(name, protocol, port.port, family, timeout_ms)?;
            let simulated = if compare {
                Some(simulate_lab(name, protocol, port.port, family)?)
            } else {
                None
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&measured)?),
                Output::Table => {
                    print!("{}", simulate::render_table(&measured, simulated.as_ref()));
                    if let Some(sim) = &simulated {
                        print!("{}", disagreements(&measured, sim));
                    }
                }
            }
            Ok(0)
        }
        LabCommand::Down => {
            let left = down(name)?;
            for l in &left {
                eprintln!("warning: {l}");
            }
            println!("lab {name} is down");
            Ok(0)
        }
        LabCommand::Resync => {
            let (g, _) = sync_with(name, true)?;
            println!("in force after a full pass (generation {g})");
            Ok(0)
        }
        LabCommand::Upgrade {
            rounds,
            agent,
            output,
        } => {
            if !crate::kube_lab::is_kube(name) {
                bail!("lab {name} is not a --kubernetes lab\n\nhint: palisade lab up --kubernetes --name {name}");
            }
            let report = crate::kube_upgrade::run(name, rounds, agent.as_deref())?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => print!("{}", crate::kube_upgrade::render(&report)),
            }
            Ok(if report.failures.is_empty() { 0 } else { 1 })
        }
        LabCommand::Uninstall { output } => {
            if !crate::kube_lab::is_kube(name) {
                bail!("lab {name} is not a --kubernetes lab\n\nhint: palisade lab up --kubernetes --name {name}");
            }
            let report = crate::kube_uninstall::run(name)?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Table => {
                    for n in &report.nodes {
                        for c in &n.changes {
                            println!("{}: {c}", n.node);
                        }
                    }
                    for o in &report.objects {
                        println!("{o}");
                    }
                    println!("Palisade is uninstalled from lab {name}; pods keep running, with no policy");
                }
            }
            Ok(0)
        }
        LabCommand::StartAgent => {
            let mut lab = open(name)?;
            if lab.state().agent.as_ref().is_some_and(|a| a.is_alive()) {
                bail!("the agent of lab {name} is already running");
            }
            start_agent(&mut lab, name)?;
            println!("agent of lab {name} is running");
            Ok(0)
        }
        LabCommand::Walkthrough { cni_bin, keep, dir } => walkthrough(name, cni_bin, keep, &dir),
        LabCommand::Serve { args } => {
            palisade_lab::server::main_with_args(args).context("pod server")?;
            Ok(0)
        }
    }
}

/// One file per object so `apply` replaces and `delete` removes exactly that object.
fn object_file(v: &serde_json::Value) -> Option<String> {
    let kind = v.get("kind")?.as_str()?;
    let md = v.get("metadata")?;
    let name = md.get("name")?.as_str()?;
    let ns = md.get("namespace").and_then(|n| n.as_str()).unwrap_or(
        if matches!(kind, "Pod" | "NetworkPolicy" | "Service" | "EndpointSlice") {
            "default"
        } else {
            ""
        },
    );
    let safe = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    Some(format!("{}_{}_{}.json", safe(kind), safe(ns), safe(name)))
}

/// Splits inputs into objects; refuses the whole set if any object is invalid, so a lab
/// change is all-or-nothing and the error is shown before anything changes.
pub(crate) fn objects(paths: &[PathBuf]) -> anyhow::Result<(Vec<serde_json::Value>, Cluster)> {
    let inputs = read_inputs(paths)?;
    let loaded = manifest::load(&inputs);
    if !loaded.errors.is_empty() {
        let mut msg = String::from("invalid manifests; nothing was changed:");
        for e in &loaded.errors {
            let _ = write!(msg, "\n  {e}");
        }
        return Err(crate::inputs::InvalidInput(msg).into());
    }
    let mut out = Vec::new();
    for (file, text) in &inputs {
        for obj in manifest::split_objects(text) {
            out.push(obj.map_err(|e| anyhow::anyhow!("{file}: {e}"))?);
        }
    }
    Ok((out, loaded.cluster))
}

pub(crate) fn write_objects(name: &str, objs: &[serde_json::Value]) -> anyhow::Result<()> {
    let dir = manifests_dir(name);
    std::fs::create_dir_all(&dir)?;
    for o in objs {
        let Some(file) = object_file(o) else { continue };
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(o)?)?;
        std::fs::rename(&tmp, dir.join(file))?;
    }
    Ok(())
}

pub(crate) fn desired(name: &str) -> anyhow::Result<Cluster> {
    let dir = manifests_dir(name);
    let loaded = manifest::load(&read_inputs(&[dir])?);
    Ok(loaded.cluster)
}

pub(crate) fn cni_dir(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(d) = explicit {
        let d = if d.is_file() {
            d.parent().map(Path::to_path_buf).unwrap_or(d)
        } else {
            d
        };
        return std::fs::canonicalize(&d)
            .with_context(|| format!("CNI plugin directory {}", d.display()));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("binary directory")?.to_path_buf();
    if dir.join("palisade-cni").is_file() {
        return Ok(dir);
    }
    bail!("palisade-cni not found beside {}\n\nhint: build it (cargo build -p palisade-cni) or pass --cni-bin", exe.display())
}

fn start_agent(lab: &mut Lab, name: &str) -> anyhow::Result<()> {
    let dir = state_dir(name);
    let exe = std::env::current_exe()?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut cmd = Proc::new(exe);
    cmd.args(["agent", "--manifests"])
        .arg(manifests_dir(name))
        .arg("--socket")
        .arg(socket(name))
        .arg("--state-dir")
        .arg(dir.join("agent"))
        .arg("--pin-root")
        .arg(pin_root(name))
        .arg("--decision-log")
        .arg(dir.join("decisions.jsonl"))
        .args(["--log-mode", "all"])
        // Extra agent flags for experiments (e.g. `--conntrack-entries 8192`).
        .args(
            std::env::var("PALISADE_LAB_AGENT_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    lab.node().enter_on_exec(&mut cmd)?;
    // SAFETY: setsid is async-signal-safe; it detaches the agent from our session so it
    // outlives `palisade lab up`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the agent")?;
    let pid = child.id() as i32;
    let rec = ProcessRecord::of("agent", pid).context("recording the agent process")?;
    lab.state_mut().agent = Some(rec);
    if !lab.state().pin_paths.contains(&pin_root(name)) {
        lab.state_mut().pin_paths.push(pin_root(name));
    }
    lab.save()?;
    wait_for_agent(name, pid)
}

/// Waits until the agent answers `status` (readiness, not a fixed sleep).
fn wait_for_agent(name: &str, pid: i32) -> anyhow::Result<()> {
    let deadline = Instant::now() + AGENT_START_TIMEOUT;
    let mut backoff = Duration::from_millis(5);
    loop {
        if crate::inspect::call(&socket(name), &palisade_agent::api::Status).is_ok() {
            return Ok(());
        }
        if !Path::new(&format!("/proc/{pid}")).exists() || Instant::now() > deadline {
            let log =
                std::fs::read_to_string(state_dir(name).join("agent.log")).unwrap_or_default();
            bail!("the agent did not start; its log:\n{log}");
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(200));
    }
}

fn chain(name: &str) -> Vec<serde_json::Value> {
    vec![serde_json::json!({
        "type": "palisade-cni",
        "agentSocket": socket(name),
        "timeoutMs": 10000,
        "failPolicy": "closed",
    })]
}

fn server_command() -> anyhow::Result<ServerCommand> {
    Ok(ServerCommand {
        program: std::env::current_exe()?,
        args: vec!["lab".into(), "serve".into()],
    })
}

/// `lab up`: node namespace, agent, then every pod through the CNI chain.
pub fn up(
    name: &str,
    files: &[PathBuf],
    cni_bin: Option<PathBuf>,
) -> anyhow::Result<palisade_lab::state::LabState> {
    let (objs, cluster) = objects(files)?;
    let cni = cni_dir(cni_bin)?;
    let mut config = LabConfig::new(name);
    config.plugin_dirs = vec![PathBuf::from("/usr/lib/cni"), cni];
    config.chain = chain(name);
    config.server = Some(server_command()?);
    let mut lab = Lab::create(config).with_context(|| format!("creating lab {name}"))?;
    write_objects(name, &objs)?;
    start_agent(&mut lab, name)?;
    add_pods(&mut lab, &cluster)?;
    lab.save()?;
    // Until here an error drops `lab`, which tears down everything made so far.
    Ok(lab.persist())
}

fn add_pods(lab: &mut Lab, cluster: &Cluster) -> anyhow::Result<()> {
    // Host-network pods too: they serve in the node namespace at their node's address.
    for pod in cluster.pods.values() {
        if lab.state().pod(&pod.key()).is_none() {
            lab.add_pod(pod)
                .with_context(|| format!("adding pod {}", pod.key()))?;
        }
    }
    Ok(())
}

pub(crate) fn open(name: &str) -> anyhow::Result<Lab> {
    let mut lab = Lab::load(&state_dir(name))
        .with_context(|| format!("lab {name} is not up\n\nhint: palisade lab up -f MANIFESTS"))?;
    lab.set_server(Some(server_command()?));
    lab.set_chain(chain(name));
    Ok(lab)
}

pub(crate) fn sync(name: &str) -> anyhow::Result<(u64, palisade_agent::api::Stages)> {
    sync_with(name, false)
}

/// Asks the lab's agent for a pass (`full`: a full rebuild and datapath resync) and
/// waits until it is in force.
pub(crate) fn sync_with(
    name: &str,
    full: bool,
) -> anyhow::Result<(u64, palisade_agent::api::Stages)> {
    let socket = socket(name);
    let reply = crate::inspect::call(&socket, &palisade_agent::api::Sync { full })?;
    for e in &reply.data.errors {
        eprintln!("warning: rejected by the agent: {e}");
    }
    Ok((reply.generation, reply.data.stages))
}

/// `lab apply`: write objects, create new pods, and wait until in force.
pub fn apply(name: &str, files: &[PathBuf]) -> anyhow::Result<u64> {
    let mut lab = open(name)?;
    let (objs, applied) = objects(files)?;
    write_objects(name, &objs)?;
    let (generation, _) = sync(name)?;
    // Only pods named in this apply can be new.
    add_pods(&mut lab, &applied)?;
    if !applied.pods.is_empty() {
        lab.save()?;
    }
    Ok(generation)
}

/// `lab delete`: remove objects (and pods), and wait until in force.
pub fn delete(name: &str, files: &[PathBuf]) -> anyhow::Result<u64> {
    let mut lab = open(name)?;
    let (objs, _) = objects(files)?;
    for o in &objs {
        let Some(file) = object_file(o) else { continue };
        if o.get("kind").and_then(|k| k.as_str()) == Some("Pod") {
            let md = &o["metadata"];
            let key = format!(
                "{}/{}",
                md["namespace"].as_str().unwrap_or("default"),
                md["name"].as_str().unwrap_or("")
            );
            if lab.state().pod(&key).is_some() {
                lab.remove_pod(&key)
                    .with_context(|| format!("removing pod {key}"))?;
            }
        }
        match std::fs::remove_file(manifests_dir(name).join(&file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                eprintln!("warning: {file} was not in the lab")
            }
            Err(e) => return Err(e.into()),
        }
    }
    lab.save()?;
    Ok(sync(name)?.0)
}

fn probe_family(f: Option<Family>) -> ProbeFamily {
    match f {
        Some(Family::V6) => ProbeFamily::V6,
        _ => ProbeFamily::V4,
    }
}

/// `lab probe`: real connection attempts, in the simulator's JSON shape.
pub fn probe(
    name: &str,
    protocol: Protocol,
    port: u16,
    family: Option<Family>,
    timeout_ms: u64,
) -> anyhow::Result<Matrix> {
    let opts = ProbeOptions {
        family: probe_family(family),
        timeout: Duration::from_millis(timeout_ms),
        ..ProbeOptions::default()
    };
    if crate::kube_lab::is_kube(name) {
        return crate::kube_lab::probe(name, protocol, port, opts);
    }
    let lab = open(name)?;
    let report = lab.probe(port, protocol, opts);
    serde_json::from_value(serde_json::to_value(&report)?).context("decoding the probe report")
}

fn simulate_lab(
    name: &str,
    protocol: Protocol,
    port: u16,
    family: Option<Family>,
) -> anyhow::Result<Matrix> {
    let fam = match family {
        Some(Family::V6) => palisade_policy::verdict::IpFamily::V6,
        _ => palisade_policy::verdict::IpFamily::V4,
    };
    let cluster = if crate::kube_lab::is_kube(name) {
        // The objects read back from the API server, pods as the kubelets run them.
        crate::kube_lab::cluster_from_api(name)?
    } else {
        let mut cluster = desired(name)?;
        // Pods are where the lab put them (the CNI chain may have assigned addresses).
        let lab = open(name)?;
        for rec in &lab.state().pods {
            if let Some(p) = cluster.pods.get_mut(&rec.key) {
                p.ips = rec.ips.clone();
            }
        }
        cluster.pods.retain(|k, _| lab.state().pod(k).is_some());
        cluster
    };
    simulate::simulate(&cluster, "the lab", protocol, port, Some(fam), None, None)
}

fn disagreements(measured: &Matrix, simulated: &Matrix) -> String {
    let mut out = String::new();
    let mut n = 0;
    for m in &measured.results {
        if let Some(s) = simulated
            .results
            .iter()
            .find(|s| s.from == m.from && s.to == m.to)
        {
            if s.verdict != m.verdict {
                n += 1;
                let _ = writeln!(
                    out,
                    "  {} -> {}: measured {} ({}), simulator says {} ({})",
                    m.from, m.to, m.verdict, m.reason, s.verdict, s.reason
                );
            }
        }
    }
    if n == 0 {
        let _ = writeln!(
            out,
            "measured and simulated verdicts agree on all {} pairs",
            measured.results.len()
        );
    } else {
        out.insert_str(0, &format!("{n} pair(s) disagree:\n"));
    }
    out
}

/// `lab down`: everything the lab made, by PID and by name. Returns what could not be removed.
pub fn down(name: &str) -> anyhow::Result<Vec<String>> {
    if crate::kube_lab::is_kube(name) {
        return crate::kube_lab::down(name);
    }
    let dir = state_dir(name);
    if !palisade_lab::state::LabState::file(&dir).exists() {
        // Nothing recorded; still remove our pins if a crashed `up` left them.
        let _ = palisade_datapath::unpin_all_at(&pin_root(name));
        return Ok(Vec::new());
    }
    let lab = Lab::load(&dir)?;
    let mut left = lab.down();
    if pin_root(name).exists() {
        if let Err(e) = palisade_datapath::unpin_all_at(&pin_root(name)) {
            left.push(format!("pins at {}: {e}", pin_root(name).display()));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(left)
}

/// The AWS walkthrough (seeds/000) on real packets: each step applied, then the
/// measured matrix printed and compared with the simulator.
fn walkthrough(
    name: &str,
    cni_bin: Option<PathBuf>,
    keep: bool,
    dir: &Path,
) -> anyhow::Result<i32> {
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            )
        })
        .collect();
    steps.sort();
    let Some((cluster_file, policy_steps)) = steps.split_first() else {
        bail!("no manifests in {}", dir.display())
    };
    if state_dir(name).join("state.json").exists() {
        bail!("lab {name} is already up\n\nhint: palisade lab down --name {name}");
    }
    let result = (|| -> anyhow::Result<i32> {
        println!(
            "== {}: creating pods as network namespaces",
            cluster_file.display()
        );
        let started = Instant::now();
        up(name, std::slice::from_ref(cluster_file), cni_bin)?;
        println!("   ready in {:.1} s", started.elapsed().as_secs_f64());
        let mut disagreements_total = 0;
        let mut show = |title: &str| -> anyhow::Result<()> {
            println!("\n== {title}");
            for (proto, port) in [(Protocol::Tcp, 80u16), (Protocol::Udp, 53)] {
                let measured = probe(name, proto, port, None, 1000)?;
                let simulated = simulate_lab(name, proto, port, None)?;
                print!("{}", simulate::render_table(&measured, Some(&simulated)));
                let d = disagreements(&measured, &simulated);
                if !d.starts_with("measured and simulated") {
                    disagreements_total += 1;
                }
                print!("{d}");
            }
            Ok(())
        };
        show("no policy: every pod reaches every pod")?;
        for step in policy_steps {
            let started = Instant::now();
            let g = apply(name, std::slice::from_ref(step))?;
            let title = format!(
                "applied {} (in force as generation {g} after {:.0} ms)",
                step.display(),
                started.elapsed().as_secs_f64() * 1000.0
            );
            show(&title)?;
        }
        Ok(if disagreements_total == 0 { 0 } else { 1 })
    })();
    if !keep {
        for l in down(name)? {
            eprintln!("warning: {l}");
        }
    } else {
        println!("\nthe lab is still up: palisade lab down --name {name}");
    }
    result
}
