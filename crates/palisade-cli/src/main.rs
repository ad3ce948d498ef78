//! The `palisade` binary: parses flags, sets up logging, runs a command, prints errors.

mod args;
mod arrival_tail;
mod bench_enforcement;
mod bench_kube;
mod bench_kube_load;
mod bench_kube_scaleup;
mod convert;
mod diff;
mod ebpf;
mod explain;
mod inputs;
mod inspect;
mod kube_converge;
mod kube_lab;
mod kube_uninstall;
mod kube_upgrade;
mod lab;
mod live;
mod metrics_http;
mod select;
mod service_explain;
mod service_flow;
mod service_simulate;
mod simulate;
mod validate;
mod view;
mod view_serve;

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use palisade_policy::model::Protocol;

use args::{
    AgentArgs, BenchCommand, Cli, Command, EbpfCommand, EndpointCommand, Family, Format, Output,
};
use palisade_policy::verdict::IpFamily;

/// Exit code: the command could not run (unreadable file, agent unreachable, pod not
/// found), or `endpoint diff` found a difference.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: some input objects were rejected (or there was no input), so no complete
/// answer exists; `validate` reports them, `simulate` and `explain` withhold the answer
/// unless `--ignore-invalid` is given. Usage errors exit with 2 (clap's code).
pub const EXIT_INVALID: i32 = 3;
/// Exit code of `explain --exit-code` when the command could not run (1 means denied).
pub const EXIT_COULD_NOT_RUN: i32 = 4;

/// Adds the exit-code scheme to the help of `cmd` and every subcommand below it.
fn with_exit_codes(cmd: clap::Command) -> clap::Command {
    let help = match cmd.get_after_help() {
        Some(h) if !h.to_string().contains(args::EXIT_CODES) => {
            format!("{h}\n\n{}", args::EXIT_CODES)
        }
        Some(h) => h.to_string(),
        None => args::EXIT_CODES.to_string(),
    };
    cmd.after_help(help).mut_subcommands(with_exit_codes)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let matches = with_exit_codes(Cli::command()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let failure = match &cli.command {
        Command::Explain {
            exit_code: true, ..
        }
        | Command::Diff(_) => EXIT_COULD_NOT_RUN,
        _ => EXIT_FAILURE,
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            let invalid = e.downcast_ref::<inputs::InvalidInput>().is_some();
            ExitCode::from(if invalid { EXIT_INVALID } else { failure } as u8)
        }
    }
}

fn port_protocol(p: &str) -> anyhow::Result<Protocol> {
    p.parse::<Protocol>().map_err(|e| anyhow::anyhow!(e))
}

/// Protocol numbers `explain` accepts beyond TCP/UDP/SCTP.
fn protocol_number(p: &str) -> anyhow::Result<u8> {
    if let Ok(proto) = p.parse::<Protocol>() {
        return Ok(proto.number());
    }
    match p.to_ascii_uppercase().as_str() {
        "ICMP" => Ok(1),
        "ICMPV6" => Ok(58),
        other => other.parse::<u8>().map_err(|_| {
            anyhow::anyhow!("unknown protocol {p:?} (TCP, UDP, SCTP, ICMP, ICMPv6 or a number)")
        }),
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Simulate {
            manifests,
            recursive,
            port,
            from,
            to,
            family,
            scope,
            output,
            ignore_invalid,
        } => {
            let filter = scope
                .selector
                .as_deref()
                .map(select::LabelFilter::parse)
                .transpose()?;
            let (loaded, sim, live) =
                inputs::load_input(&manifests.files, recursive, &manifests.live)?;
            inputs::print_problems(&loaded);
            let note = match inputs::completeness_with(&loaded, &live.forbidden, ignore_invalid) {
                Ok(note) => note,
                Err(message) => {
                    eprintln!("{message}");
                    if matches!(output, Format::Json | Format::Yaml) {
                        let v = serde_json::json!({
                            "errors": inputs::errors_json(&loaded),
                            "source": live.json(&loaded),
                        });
                        select::print_document(&v, output)?;
                    }
                    return Ok(EXIT_INVALID);
                }
            };
            let protocol = port_protocol(&port.protocol)?;
            let family = family.map(|f| match f {
                Family::V4 => IpFamily::V4,
                Family::V6 => IpFamily::V6,
            });
            let ns = scope.namespace.as_deref();
            let scoped = select::scoped_pods(&loaded.cluster, ns, filter.as_ref());
            let named =
                |n: String| explain::pods_named(&loaded.cluster, &sim, &select::qualify(&n, ns));
            let place = live.place();
            let to_given = to.is_some();
            let from = from.map(named).or_else(|| scoped.clone());
            let to = to.map(named).or(scoped);
            let m = simulate::simulate(
                &loaded.cluster,
                place,
                protocol,
                port.port,
                family,
                from.as_deref(),
                to.as_deref(),
            )?;
            let mut sim_note: Vec<String> = inputs::simulation_note(&sim).into_iter().collect();
            // Services as destinations, when the input has some and --to does not narrow.
            let svc_results = (!to_given && !loaded.cluster.services.is_empty()).then(|| {
                service_simulate::simulate(
                    &loaded.cluster,
                    protocol,
                    port.port,
                    family,
                    &simulate::matrix_pods(&loaded.cluster, from.as_deref(), None).0,
                    ns,
                    &mut sim_note,
                )
            });
            match output {
                Format::Json | Format::Yaml => {
                    let mut v = serde_json::to_value(&m)?;
                    v["errors"] = inputs::errors_json(&loaded);
                    v["source"] = live.json(&loaded);
                    inputs::add_simulation_json(&mut v, &sim);
                    if let Some(r) = &svc_results {
                        v["services"] = serde_json::to_value(r)?;
                    }
                    for n in note.iter().chain(&live.notes).chain(&sim_note) {
                        eprintln!("{n}");
                    }
                    select::print_document(&v, output)?;
                }
                Format::Table | Format::Wide => {
                    for n in note.iter().chain(&live.notes).chain(&sim_note) {
                        println!("{n}");
                    }
                    print!(
                        "{}",
                        simulate::render_rows(&m, None, &inputs::workload_rows(&sim))
                    );
                    let svc_results = svc_results.unwrap_or_default();
                    print!(
                        "{}",
                        service_simulate::render(
                            &svc_results,
                            protocol,
                            port.port,
                            &inputs::workload_rows(&sim)
                        )
                    );
                    if output == Format::Wide {
                        print!("{}", simulate::render_reasons(&m));
                        print!("{}", service_simulate::render_reasons(&svc_results));
                    }
                }
            }
            Ok(0)
        }
        Command::Explain {
            manifests,
            recursive,
            port,
            from,
            to,
            namespace,
            output,
            json,
            exit_code,
            ignore_invalid,
        } => {
            let output = if json { Format::Json } else { output };
            let structured = matches!(output, Format::Json | Format::Yaml);
            let (loaded, sim, live) =
                inputs::load_input(&manifests.files, recursive, &manifests.live)?;
            inputs::print_problems(&loaded);
            let note = match inputs::completeness_with(&loaded, &live.forbidden, ignore_invalid) {
                Ok(note) => note,
                Err(message) => {
                    eprintln!("{message}");
                    if structured {
                        let v = serde_json::json!({
                            "errors": inputs::errors_json(&loaded),
                            "source": live.json(&loaded),
                        });
                        select::print_document(&v, output)?;
                    }
                    return Ok(EXIT_INVALID);
                }
            };
            let proto = protocol_number(&port.protocol)?;
            let mut picked = Vec::new();
            let ns = namespace.as_deref();
            let from = explain::one_pod(
                &loaded.cluster,
                &sim,
                &select::qualify(&from, ns),
                &mut picked,
            );
            // A Service, or one of its addresses, is judged per backend.
            let before: Vec<String> = note
                .iter()
                .cloned()
                .chain(live.notes.iter().cloned())
                .chain(picked.iter().cloned())
                .chain(inputs::simulation_note(&sim))
                .collect();
            let request = service_explain::Request {
                from: &from,
                to: &to,
                namespace: ns,
                protocol: proto,
                port: port.port,
                output,
                exit_code,
                source: &live,
            };
            let errors = inputs::errors_json(&loaded);
            let (to, svc_note) =
                match service_explain::explain(&loaded.cluster, &sim, &request, &before, errors)
                    .context("explaining")?
                {
                    service_explain::Explained::Done(code) => return Ok(code),
                    service_explain::Explained::Direct { to, note } => (to, note),
                };
            let to = explain::one_pod(&loaded.cluster, &sim, &to, &mut picked);
            let (flow, d) =
                explain::explain(&loaded.cluster, live.place(), &from, &to, proto, port.port)
                    .context("explaining")?;
            let notes: Vec<String> = note
                .into_iter()
                .chain(live.notes.iter().cloned())
                .chain(picked)
                .chain(inputs::simulation_note(&sim))
                .chain(svc_note)
                .collect();
            if structured {
                for n in &notes {
                    eprintln!("{n}");
                }
                let mut v = serde_json::json!({
                    "flow": explain::flow_json(&flow),
                    "decision": d,
                    "source": live.json(&loaded),
                    "errors": inputs::errors_json(&loaded),
                });
                inputs::add_simulation_json(&mut v, &sim);
                select::print_document(&v, output)?;
            } else {
                for n in &notes {
                    println!("{n}");
                }
                print!(
                    "{}",
                    explain::render_wide(
                        &flow,
                        &port.protocol.to_ascii_uppercase(),
                        &d,
                        output == Format::Wide
                    )
                );
                print!(
                    "{}",
                    service_explain::calico_service_lines(&loaded.cluster, &d)
                );
            }
            Ok(if exit_code && !d.allowed { 1 } else { 0 })
        }
        Command::Validate {
            manifests,
            recursive,
            strict,
            output,
        } => {
            let (loaded, sim, live) =
                inputs::load_input(&manifests.files, recursive, &manifests.live)?;
            Ok(validate::report(&loaded, &sim, &live, strict, output)?)
        }
        Command::Diff(a) => diff::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Completion { shell } => {
            let mut cmd = with_exit_codes(Cli::command());
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "palisade", &mut script);
            // `palisade completion bash | head` closes the pipe early: not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
                r => r.map(|_| 0).context("writing the completion script"),
            }
        }
        Command::View {
            manifests,
            recursive,
            ports,
            protocol,
            output,
            serve,
            allow_remote,
            explain_limit,
            ignore_invalid,
        } => run_view(
            &manifests,
            recursive,
            &ports,
            &protocol,
            output,
            serve,
            allow_remote,
            explain_limit,
            ignore_invalid,
        ),
        Command::Agent(a) => run_agent(a),
        Command::Controller(a) => run_controller(a),
        Command::Status {
            policy,
            namespace,
            cluster,
            json,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let report = rt.block_on(async {
                let client = palisade_agent::run::kube_client(
                    cluster.kubeconfig.as_deref(),
                    cluster.context.as_deref(),
                )
                .await?;
                palisade_controller::report::fetch(&client, namespace.as_deref(), policy.as_deref())
                    .await
                    .context("reading the in-force status from the API server")
            })?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", palisade_controller::report::render(&report));
            }
            Ok(0)
        }
        Command::Uninstall { pin_root } => {
            if !pin_root.exists() {
                println!("nothing pinned at {}", pin_root.display());
                return Ok(0);
            }
            palisade_datapath::unpin_all_at(&pin_root)
                .with_context(|| format!("removing the pins at {}", pin_root.display()))?;
            println!(
                "removed every Palisade program, map and link under {}",
                pin_root.display()
            );
            Ok(0)
        }
        Command::Ebpf {
            what,
            pin_root,
            json,
        } => {
            let root = pin_root.unwrap_or_else(lab::default_pin_root_or_node);
            let (progs, maps, links) = ebpf::inventory(&root)?;
            match (what, json) {
                (EbpfCommand::Progs, false) => print!(
                    "{}{}",
                    ebpf::render_progs(&progs),
                    ebpf::render_links(&links)
                ),
                (EbpfCommand::Progs, true) => println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"programs": progs, "links": links})
                    )?
                ),
                (EbpfCommand::Maps, false) => print!("{}", ebpf::render_maps(&maps)),
                (EbpfCommand::Maps, true) => println!("{}", serde_json::to_string_pretty(&maps)?),
            }
            Ok(0)
        }
        Command::Endpoint { what, socket } => {
            let socket = inspect::resolve_socket(socket.socket);
            match what {
                EndpointCommand::List => print!("{}", inspect::endpoint_list(&socket)?),
                EndpointCommand::Get { pod, json } => {
                    print!("{}", inspect::endpoint_get(&socket, &pod, json)?)
                }
                EndpointCommand::Diff { pod } => {
                    let (text, same) = inspect::endpoint_diff(&socket, &pod)?;
                    print!("{text}");
                    return Ok(if same { 0 } else { EXIT_FAILURE });
                }
            }
            Ok(0)
        }
        Command::Flows {
            follow,
            pod,
            verdict,
            socket,
        } => {
            inspect::flows(
                &inspect::resolve_socket(socket.socket),
                follow,
                pod,
                verdict,
            )?;
            Ok(0)
        }
        Command::Metrics {
            socket,
            listen: Some(addr),
        } => {
            metrics_http::serve(addr, &inspect::resolve_socket(socket.socket))?;
            Ok(0)
        }
        Command::Metrics {
            socket,
            listen: None,
        } => {
            let v = inspect::call(
                &inspect::resolve_socket(socket.socket),
                &palisade_agent::api::Metrics,
            )?;
            print!("{}", v.data);
            Ok(0)
        }
        Command::Lab { what, name } => lab::run(&name, what),
        Command::Bench { what } => match what {
            BenchCommand::Datapath {
                output,
                entries,
                rounds,
            } => {
                let opts = palisade_datapath::BenchOptions {
                    entries,
                    rounds: rounds.max(1),
                    ..Default::default()
                };
                let report = palisade_datapath::bench_datapath(&opts)
                    .context("running the datapath benchmark")?;
                let ratios = palisade_bench::datapath::ratios(&report);
                match output {
                    Output::Json => {
                        let mut v = serde_json::to_value(&report)?;
                        v["ratios"] = serde_json::to_value(&ratios)?;
                        println!("{}", serde_json::to_string(&v)?);
                    }
                    Output::Table => {
                        println!("empty program: {:.1} ns/packet", report.noop_ns);
                        println!(
                            "{:>10} {:>14} {:>14} {:>16}",
                            "ENTRIES", "NEW FLOW ns", "ESTABLISHED ns", "NEW - EMPTY ns"
                        );
                        for p in &report.points {
                            println!(
                                "{:>10} {:>14.1} {:>14.1} {:>16.1}",
                                p.entries,
                                p.ns_per_packet,
                                p.established_ns,
                                p.ns_per_packet - report.noop_ns
                            );
                        }
                        println!();
                        print!("{}", palisade_bench::datapath::table(&report, &ratios));
                    }
                }
                Ok(0)
            }
            BenchCommand::Network {
                output,
                rounds,
                entries,
                duration_ms,
                plot,
            } => {
                let opts = palisade_bench::NetworkOptions {
                    rounds,
                    entries,
                    duration: std::time::Duration::from_millis(duration_ms),
                    ..Default::default()
                };
                let report = palisade_bench::run_network(&opts, |line| eprintln!("bench: {line}"))?;
                match output {
                    Output::Json => println!("{}", report.to_json()),
                    Output::Table => print!("{}", report.to_table()),
                }
                if let Some(p) = plot {
                    std::fs::write(&p, palisade_bench::plot::svg(&report))
                        .with_context(|| format!("writing {}", p.display()))?;
                    eprintln!("bench: wrote {}", p.display());
                }
                Ok(0)
            }
            BenchCommand::Fanout {
                output,
                namespaces,
                apps,
                pods_per_app,
                nodes,
                agents,
                updates,
                lifecycles,
                chunk,
            } => {
                let opts = palisade_kube_bench::fanout::Options {
                    shape: palisade_kube_bench::aws_model::Shape {
                        namespaces,
                        apps_per_namespace: apps,
                        pods_per_app,
                        nodes,
                    },
                    agents,
                    updates,
                    lifecycles,
                    chunk,
                };
                let r = palisade_kube_bench::fanout::run(&opts, &|m| eprintln!("fanout: {m}"))?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                    Output::Table => print!("{}", r.table()),
                }
                Ok(0)
            }
            BenchCommand::KubeMemory {
                output,
                pods,
                namespaces,
                nodes,
                pods_per_app,
            } => {
                let opts = palisade_kube_bench::memory::Options {
                    sizes: pods,
                    namespaces,
                    nodes,
                    pods_per_app,
                    agent_exe: std::env::current_exe().context("this binary's path")?,
                };
                let r =
                    palisade_kube_bench::memory::run(&opts, &|m| eprintln!("kube-memory: {m}"))?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                    Output::Table => print!("{}", r.table()),
                }
                Ok(0)
            }
            BenchCommand::KubeEnforcement {
                output,
                nodes,
                load,
                trials,
                cni_bin,
            } => {
                let r = bench_kube::run(nodes, &load.spec(), trials, cni_bin)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                    Output::Table => print!("{}", bench_kube::render(&r)),
                }
                Ok(0)
            }
            BenchCommand::KubeScaleup {
                output,
                nodes,
                load,
                from,
                to,
                rounds,
                cni_bin,
            } => {
                let opts = bench_kube_scaleup::Options { from, to, rounds };
                let r = bench_kube_scaleup::run(nodes, &load.spec(), &opts, cni_bin)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                    Output::Table => print!("{}", bench_kube_scaleup::render(&r)),
                }
                Ok(0)
            }
            BenchCommand::Enforcement {
                output,
                policies,
                trials,
                cni_bin,
            } => {
                let r = bench_enforcement::run(policies, trials, cni_bin)?;
                match output {
                    Output::Json => println!("{}", serde_json::to_string(&r)?),
                    Output::Table => print!("{}", bench_enforcement::render(&r)),
                }
                Ok(0)
            }
        },
    }
}

/// `palisade view`: builds the page, then writes it or serves it.
#[allow(clippy::too_many_arguments)]
fn run_view(
    manifests: &live::Sources,
    recursive: bool,
    ports: &[u16],
    protocol: &str,
    output: Option<std::path::PathBuf>,
    serve: Option<std::net::SocketAddr>,
    allow_remote: bool,
    explain_limit: usize,
    ignore_invalid: bool,
) -> anyhow::Result<i32> {
    if let Some(addr) = serve {
        if let Err(e) = view_serve::check_address(addr, allow_remote) {
            eprintln!("error: {e}");
            return Ok(2);
        }
    }
    let protocol = port_protocol(protocol)?;
    let files = &manifests.files;
    let (loaded, sim, live) = inputs::load_input(files, recursive, &manifests.live)?;
    inputs::print_problems(&loaded);
    let note = match inputs::completeness_with(&loaded, &live.forbidden, ignore_invalid) {
        Ok(note) => note,
        Err(message) => {
            eprintln!("{message}");
            return Ok(EXIT_INVALID);
        }
    };
    for n in note
        .iter()
        .chain(&live.notes)
        .chain(&inputs::simulation_note(&sim))
    {
        eprintln!("{n}");
    }
    let mut seen = std::collections::BTreeSet::new();
    let ports: Vec<u16> = ports.iter().copied().filter(|p| seen.insert(*p)).collect();
    let mut matrices = Vec::new();
    let mut docs = Vec::new();
    for &port in &ports {
        let m = simulate::simulate(
            &loaded.cluster,
            live.place(),
            protocol,
            port,
            None,
            None,
            None,
        )?;
        let mut v = serde_json::to_value(&m)?;
        v["errors"] = inputs::errors_json(&loaded);
        v["source"] = live.json(&loaded);
        inputs::add_simulation_json(&mut v, &sim);
        // The same document as `simulate -o json`: Services as destinations too.
        if !loaded.cluster.services.is_empty() {
            let froms = simulate::matrix_pods(&loaded.cluster, None, None).0;
            let mut svc_note = Vec::new();
            let r = service_simulate::simulate(
                &loaded.cluster,
                protocol,
                port,
                None,
                &froms,
                None,
                &mut svc_note,
            );
            v["services"] = serde_json::to_value(r)?;
        }
        docs.push(v);
        matrices.push(m);
    }
    let pairs: usize = matrices.iter().map(|m| m.results.len()).sum();
    let embedded = pairs <= explain_limit;
    let explain = if embedded {
        Some(
            matrices
                .iter()
                .map(|m| view::explain_all(&loaded.cluster, m, protocol))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    } else {
        None
    };
    let page = view::Page {
        palisade_view: 1,
        inputs: manifests
            .live
            .enabled()
            .then(|| "live cluster".to_string())
            .into_iter()
            .chain(files.iter().map(|f| f.display().to_string()))
            .collect(),
        matrices: docs,
        pods: view::pods(&loaded.cluster, &sim),
        explain,
        explain_mode: match (embedded, serve.is_some()) {
            (true, _) => "embedded",
            (false, true) => "serve",
            (false, false) => "none",
        },
        diff: None,
    };
    let html = view::html(&page)?;
    let what = format!(
        "{} pods, {pairs} pairs on {}, explain text {}",
        page.pods.len(),
        ports
            .iter()
            .map(|p| format!("{}/{p}", protocol.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        match page.explain_mode {
            "embedded" => "embedded for every pair".to_string(),
            "serve" => format!("computed per click (over --explain-limit {explain_limit})"),
            _ => format!("not embedded (over --explain-limit {explain_limit}; --serve computes it per click)"),
        }
    );
    if let Some(addr) = serve {
        eprintln!("palisade view: {what}");
        view_serve::serve(addr, &html, &loaded.cluster)?;
        return Ok(0);
    }
    let path = output.unwrap_or_else(|| "palisade-view.html".into());
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    println!("wrote {}: {what}", path.display());
    Ok(0)
}

fn run_controller(a: args::ControllerArgs) -> anyhow::Result<i32> {
    let identity = match a.identity {
        Some(i) => i,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| format!("{}-{}", h.trim(), std::process::id()))
            .context("no --identity (POD_NAME) and no hostname to make one")?,
    };
    let config = palisade_controller::run::ControllerConfig {
        lease: palisade_controller::lease::LeaseConfig {
            namespace: a.namespace,
            name: palisade_controller::lease::LEASE_NAME.to_string(),
            identity,
            duration: std::time::Duration::from_secs(a.lease_duration_secs),
            renew_every: std::time::Duration::from_secs(a.renew_secs),
        },
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = palisade_agent::run::kube_client(
            a.cluster.kubeconfig.as_deref(),
            a.cluster.context.as_deref(),
        )
        .await?;
        palisade_controller::run::run(client, config).await
    })?;
    Ok(0)
}

fn run_agent(a: AgentArgs) -> anyhow::Result<i32> {
    let mut sizes = palisade_datapath::MapSizes::default();
    if let Some(n) = a.policy_entries {
        sizes.policy = n;
        sizes.policy_parts = n;
    }
    if let Some(n) = a.conntrack_entries {
        sizes.conntrack = n;
    }
    if let Some(n) = a.host_entries {
        sizes.hosts4 = n;
        sizes.hosts6 = n;
    }
    if let Some(n) = a.prefix_entries {
        sizes.addr4 = n;
        sizes.addr6 = n;
    }
    let config = palisade_agent::run::AgentConfig {
        source: match a.source {
            args::SourceKind::Directory if a.publish_status == Some(true) => {
                anyhow::bail!("--publish-status is for --source kubernetes (it writes a NodePolicyStatus object)")
            }
            args::SourceKind::Directory => palisade_agent::run::SourceConfig::Directory(
                a.manifests
                    .context("--source directory needs --manifests DIR")?,
            ),
            args::SourceKind::Kubernetes => {
                if a.manifests.is_some() {
                    anyhow::bail!("--manifests is for --source directory; --source kubernetes reads the API server");
                }
                palisade_agent::run::SourceConfig::Kubernetes {
                    kubeconfig: a.kubeconfig,
                    context: a.context,
                }
            }
        },
        state_dir: a.state_dir,
        read_only_socket: a
            .read_only_socket
            .unwrap_or_else(|| palisade_agent::api::read_only_socket_beside(&a.socket)),
        read_only_group: palisade_agent::listener::resolve_group(&a.read_only_group)
            .context("--read-only-group")?,
        socket: a.socket,
        pin_root: a.pin_root,
        decision_log: a.decision_log,
        log_mode: a.log_mode.parse().map_err(|e: String| anyhow::anyhow!(e))?,
        sample_allow: a.sample,
        events: palisade_agent::enforcer::EventLimits {
            node_per_sec: a.events_per_sec,
            node_burst: a.events_burst,
            pod_per_sec: a.pod_events_per_sec,
        },
        rotation: palisade_agent::decision_log::Rotation {
            max_bytes: a.decision_log_max_bytes,
            keep: a.decision_log_keep,
        },
        api: palisade_agent::listener::ApiLimits {
            max_connections: a.api_max_connections,
            max_request_bytes: a.api_max_request_bytes,
            request_timeout: std::time::Duration::from_millis(a.api_request_timeout_ms),
            ..Default::default()
        },
        sizes,
        registration_ttl: std::time::Duration::from_secs(a.registration_ttl_secs),
        revoke_established: a.revoke_established,
        publish_status: matches!(a.source, args::SourceKind::Kubernetes)
            && a.publish_status.unwrap_or(a.node_name.is_some()),
        node_name: a.node_name,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(palisade_agent::run::run(config))?;
    Ok(0)
}
