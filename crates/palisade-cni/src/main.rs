//! `palisade-cni`: the chained CNI plugin binary. All logic is in the library
//! ([`palisade_cni::plugin::run`]); this file wires it to the process: environment,
//! stdin, stdout, stderr and the exit code the CNI spec asks for. With a first argument
//! `install` or `uninstall` it is the node-side installer instead ([`palisade_cni::admin`]).

use std::io::Write;

use palisade_cni::spec::Env;

fn main() {
    if palisade_cni::admin::is_admin(std::env::args().nth(1).as_deref()) {
        use clap::Parser as _;
        let cli = palisade_cni::admin::Cli::parse();
        if let Err(e) = palisade_cni::admin::run(cli) {
            eprintln!("palisade-cni: {e}");
            std::process::exit(1);
        }
        return;
    }
    let result = Env::from_lookup(|k| std::env::var(k).ok()).and_then(|env| {
        let stdin = if env.command != palisade_cni::spec::Command::Version {
            palisade_cni::plugin::read_stdin(std::io::stdin().lock())?
        } else {
            Vec::new()
        };
        palisade_cni::plugin::run(&env, &stdin, &mut std::io::stderr())
    });
    let mut out = std::io::stdout().lock();
    match result {
        Ok(text) => {
            let _ = out.write_all(text.as_bytes());
        }
        Err(e) => {
            let _ = serde_json::to_writer(&mut out, &e);
            let _ = out.flush();
            std::process::exit(1);
        }
    }
}
