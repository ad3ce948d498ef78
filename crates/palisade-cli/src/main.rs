//! The `palisade` binary: parses flags, sets up logging, runs a command, prints errors.

mod args;
mod explain;
mod inputs;
mod simulate;
mod validate;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use palisade_policy::model::Protocol;

use args::{Cli, Command, Family, Output};
use palisade_policy::verdict::IpFamily;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG").unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn print_load_problems(loaded: &palisade_policy::manifest::Loaded) {
    for e in &loaded.errors {
        eprintln!("warning: ignored invalid object: {e}");
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
        other => other.parse::<u8>().map_err(|_| anyhow::anyhow!("unknown protocol {p:?} (TCP, UDP, SCTP, ICMP, ICMPv6 or a number)")),
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Simulate { manifests, port, from, to, family, output } => {
            let loaded = inputs::load_manifests(&manifests.files)?;
            print_load_problems(&loaded);
            let protocol = port_protocol(&port.protocol)?;
            let family = family.map(|f| match f {
                Family::V4 => IpFamily::V4,
                Family::V6 => IpFamily::V6,
            });
            let m = simulate::simulate(&loaded.cluster, protocol, port.port, family, from.as_deref(), to.as_deref())?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                Output::Table => print!("{}", simulate::render_table(&m, None)),
            }
            Ok(0)
        }
        Command::Explain { manifests, port, from, to, json } => {
            let loaded = inputs::load_manifests(&manifests.files)?;
            print_load_problems(&loaded);
            let proto = protocol_number(&port.protocol)?;
            let (flow, d) = explain::explain(&loaded.cluster, &from, &to, proto, port.port).context("explaining")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"flow": flow, "decision": d}))?);
            } else {
                print!("{}", explain::render(&flow, &port.protocol.to_ascii_uppercase(), &d));
            }
            Ok(0)
        }
        Command::Validate { manifests, strict } => {
            let loaded = inputs::load_manifests(&manifests.files)?;
            Ok(validate::report(&loaded, strict))
        }
    }
}
