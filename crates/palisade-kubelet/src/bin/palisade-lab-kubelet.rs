//! `palisade-lab-kubelet`: see [`palisade_kubelet`]. SIGTERM or SIGINT stops it and
//! leaves its pods running; `--teardown --state-dir DIR` removes them.
//! `palisade-lab-kubelet serve ARGS` is the lab's pod server and sender
//! ([`palisade_lab::server::main_with_args`]), so one binary is enough
//! (`--server palisade-lab-kubelet --server-arg serve`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("serve") {
        return match palisade_lab::server::main_with_args(std::env::args().skip(2)) {
            Ok(()) => 0.into(),
            Err(e) => {
                eprintln!(
                    "palisade-lab-kubelet serve: {}",
                    palisade_kubelet::sandbox::chain(&e)
                );
                1.into()
            }
        };
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = palisade_kubelet::Args::parse();
    if args.teardown {
        let problems = palisade_kubelet::teardown(&args.state_dir);
        for p in &problems {
            eprintln!("palisade-lab-kubelet: teardown: {p}");
        }
        return if problems.is_empty() {
            0.into()
        } else {
            1.into()
        };
    }
    let cfg = match args.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade-lab-kubelet: {e}");
            return 2.into();
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = rt.block_on(palisade_kubelet::run(cfg, async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }));
    match result {
        Ok(()) => 0.into(),
        Err(e) => {
            eprintln!("palisade-lab-kubelet: {e:#}");
            1.into()
        }
    }
}
