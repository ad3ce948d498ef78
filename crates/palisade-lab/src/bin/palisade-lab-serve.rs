//! `palisade-lab-serve --identity NS/NAME --port 80/TCP ...`: the lab's pod server.
//! See [`palisade_lab::server`].

fn main() {
    if let Err(e) = palisade_lab::server::main_with_args(std::env::args().skip(1)) {
        eprintln!("palisade-lab-serve: {e}");
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            eprintln!("  caused by: {s}");
            src = s.source();
        }
        std::process::exit(1);
    }
}
