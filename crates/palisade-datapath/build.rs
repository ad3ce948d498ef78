//! Compiles `bpf/palisade.bpf.c` with clang-19 into `OUT_DIR/palisade.bpf.o`
//! (embedded by `src/loader.rs`). Flags from TOOLCHAIN.md. `CLANG` overrides the
//! compiler.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("palisade.bpf.o");
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang-19".to_string());
    for path in [
        "bpf/palisade.bpf.c",
        "bpf/include/palisade_abi.h",
        "bpf/lib/parse.h",
        "bpf/lib/policy.h",
        "bpf/lib/conntrack.h",
        "bpf/lib/events.h",
        "bpf/lib/service.h",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");
    let status = Command::new(&clang)
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-D__TARGET_ARCH_x86",
            "-I/usr/include/x86_64-linux-gnu",
            "-Ibpf/include",
            "-Ibpf",
            "-Wall",
            "-Werror",
            "-c",
            "bpf/palisade.bpf.c",
            "-o",
        ])
        .arg(&obj)
        .status()
        .unwrap_or_else(|e| panic!("running {clang}: {e} (install clang-19: scripts/setup.sh)"));
    assert!(
        status.success(),
        "{clang} failed to compile bpf/palisade.bpf.c"
    );
}
