//! Runs the network benchmark without the CLI:
//! `cargo run -p palisade-bench --release --example network -- [--rounds R]
//! [--entries 10,1000,10000,50000] [--duration-ms MS] [--output table|json] [--plot FILE.svg]
//! [--save-json FILE] [--configs none,palisade,iptables-flat,iptables-stateful]
//! [--palisade-server-only]`
//!
//! The real front end is `palisade bench network`; this example parses the same flags by
//! hand to keep the crate free of a CLI dependency.

use std::process::ExitCode;
use std::time::Duration;

use palisade_bench::{plot, run_network, Config, NetworkOptions};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut src = std::error::Error::source(&*e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut opts = NetworkOptions::default();
    let mut output = "table".to_string();
    let mut plot_path: Option<String> = None;
    let mut json_path: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--rounds" => opts.rounds = value()?.parse()?,
            "--entries" => {
                opts.entries = value()?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            // Example only: measure a subset (`none` is always measured).
            "--configs" => {
                opts.configs = value()?
                    .split(',')
                    .map(|s| match s.trim() {
                        "none" => Ok(Config::None),
                        "palisade" => Ok(Config::Palisade),
                        "iptables-flat" => Ok(Config::IptablesFlat),
                        "iptables-stateful" => Ok(Config::IptablesStateful),
                        other => Err(format!("unknown configuration {other}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            // Example only: Palisade on the server's veth only (cost split).
            "--palisade-server-only" => opts.palisade_client_side = false,
            "--duration-ms" => opts.duration = Duration::from_millis(value()?.parse()?),
            "--output" => output = value()?,
            "--plot" => plot_path = Some(value()?),
            // Example only: keep the JSON too when printing the table (for docs).
            "--save-json" => json_path = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if output != "table" && output != "json" {
        return Err(format!("--output must be table or json, not {output}").into());
    }
    let report = run_network(&opts, |line| eprintln!("bench: {line}"))?;
    if output == "json" {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    if let Some(p) = json_path {
        std::fs::write(&p, report.to_json())?;
        eprintln!("bench: wrote {p}");
    }
    if let Some(p) = plot_path {
        std::fs::write(&p, plot::svg(&report))?;
        eprintln!("bench: wrote {p}");
    }
    Ok(())
}
