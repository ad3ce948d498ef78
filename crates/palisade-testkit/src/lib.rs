//! Test support shared by the privileged tests of every crate: the one place that
//! decides whether a test needing root, bpffs, the CNI plugins or a system tool runs.
//!
//! A privileged test must never pass by skipping (issue 8). When something it needs
//! is missing, [`require`] panics, naming what is missing and the Debian package
//! that provides it, whenever
//! 1. `CI` is set (to anything but `""`, `0` or `false`), or
//! 2. the test runs as root: root with a package missing is a broken set-up, which
//!    must turn CI red rather than green.
//!
//! Only a developer who is neither root nor in CI gets a skip, printed as a
//! `SKIPPED` line on stderr. Nothing but tests depends on this crate; start with
//! [`require`] and [`Need`].

#![deny(missing_docs)]

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Something a privileged test needs from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0: network namespaces, BPF programs and maps, mounts.
    Root,
    /// bpffs mounted at `/sys/fs/bpf`, where pins live.
    Bpffs,
    /// An executable found on `PATH` or in the sbin directories.
    Program {
        /// File name, e.g. `ip`.
        name: &'static str,
        /// The Debian package that installs it, for the message.
        package: &'static str,
    },
    /// A CNI plugin in [`CNI_DIR`] (package `containernetworking-plugins`).
    CniPlugin(&'static str),
}

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const CNI_DIR: &str = "/usr/lib/cni";

/// `ip` from iproute2: namespaces, links, addresses.
pub const IP: Need = Need::Program {
    name: "ip",
    package: "iproute2",
};

/// What a lab needs: root, `ip`, and the CNI plugins it chains (ptp with static or
/// host-local addressing).
pub const LAB: &[Need] = &[
    Need::Root,
    IP,
    Need::CniPlugin("ptp"),
    Need::CniPlugin("static"),
    Need::CniPlugin("host-local"),
];

/// The environment a decision depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// `CI` is set to a true value.
    pub ci: bool,
    /// Running as root.
    pub root: bool,
}

impl Context {
    /// The calling process's context.
    pub fn current() -> Self {
        Self {
            ci: ci_value(std::env::var("CI").ok().as_deref()),
            // SAFETY: geteuid has no preconditions and cannot fail.
            root: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// What to do with a test, given what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Everything is there.
    Run,
    /// A developer's machine lacks something: skip, saying so.
    Skip(String),
    /// CI or root lacks something: the test fails.
    Fail(String),
}

/// Whether the value of `CI` means "this is CI" (`true`, `1`, `yes`...; not unset,
/// empty, `0` or `false`).
pub fn ci_value(v: Option<&str>) -> bool {
    match v.map(str::trim) {
        None | Some("") => false,
        Some(v) => !(v == "0" || v.eq_ignore_ascii_case("false")),
    }
}

/// The decision for a test that lacks `missing` (descriptions), in `ctx`.
pub fn decide(test: &str, missing: &[String], ctx: Context) -> Decision {
    if missing.is_empty() {
        return Decision::Run;
    }
    let what = missing.join("; ");
    if ctx.ci || ctx.root {
        let why = if ctx.ci {
            "CI is set"
        } else {
            "running as root"
        };
        Decision::Fail(format!(
            "{test} cannot run: {what}. It must not be skipped because {why}\n\nhint: run scripts/setup.sh as root"
        ))
    } else {
        Decision::Skip(format!(
            "SKIPPED {test}: {what} (not root and CI unset; run as root to test for real)"
        ))
    }
}

/// The needs among `needs` that this machine does not meet, described with the
/// package that provides each.
pub fn missing(needs: &[Need], ctx: Context) -> Vec<String> {
    needs
        .iter()
        .filter_map(|n| match *n {
            Need::Root => (!ctx.root).then(|| "needs root".to_string()),
            Need::Bpffs => (!bpffs_mounted(Path::new("/sys/fs/bpf")))
                .then(|| "needs bpffs mounted at /sys/fs/bpf".to_string()),
            Need::Program { name, package } => find_program(name)
                .is_none()
                .then(|| format!("needs `{name}` (Debian package {package})")),
            Need::CniPlugin(name) => (!is_executable(&Path::new(CNI_DIR).join(name))).then(|| {
                format!("needs the CNI plugin {CNI_DIR}/{name} (Debian package containernetworking-plugins)")
            }),
        })
        .collect()
}

/// Whether the calling test can run: `true` when every need is met. Otherwise it
/// panics in CI or as root, and returns `false` after printing `SKIPPED` for a
/// developer. Use it as `if !palisade_testkit::require(LAB) { return; }`.
pub fn require(needs: &[Need]) -> bool {
    require_in(Context::current(), needs)
}

/// [`require`] in a given context (so the rule itself can be tested).
pub fn require_in(ctx: Context, needs: &[Need]) -> bool {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    match decide(test, &missing(needs, ctx), ctx) {
        Decision::Run => true,
        Decision::Skip(msg) => {
            // Written to the stderr handle itself: the test harness captures
            // `eprintln!` of passing tests, and a skip must be seen.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{msg}");
            false
        }
        Decision::Fail(msg) => panic!("{msg}"),
    }
}

/// `statfs(2)` magic of bpffs (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Whether `path` is the root of a mounted bpffs (a plain directory is not).
pub fn bpffs_mounted(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// `name` on `PATH`, or in the sbin directories (a root tool is not always on a
/// user's `PATH`).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// For tests that check the source tree itself: walks every `.rs` file under `root`
/// and returns how many it read and `path:line: text` for each line `matches` accepts.
pub fn rust_lines_matching(root: &Path, matches: impl Fn(&str) -> bool) -> (usize, Vec<String>) {
    let (mut files, mut found) = (0, Vec::new());
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files += 1;
                let text = std::fs::read_to_string(&path).expect("source");
                for (n, line) in text.lines().enumerate() {
                    if matches(line) {
                        found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    (files, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOWHERE: Need = Need::Program {
        name: "palisade-testkit-no-such-program",
        package: "none",
    };

    fn ctx(ci: bool, root: bool) -> Context {
        Context { ci, root }
    }

    #[test]
    fn something_missing_fails_under_ci_and_as_root_and_skips_only_for_a_developer() {
        let missing = vec!["needs `x` (Debian package y)".to_string()];
        for (ci, root) in [(true, false), (false, true), (true, true)] {
            let d = decide("t", &missing, ctx(ci, root));
            assert!(
                matches!(&d, Decision::Fail(m) if m.contains("needs `x` (Debian package y)")),
                "ci={ci} root={root}: {d:?}"
            );
        }
        let d = decide("t", &missing, ctx(false, false));
        assert!(
            matches!(&d, Decision::Skip(m) if m.starts_with("SKIPPED t:")),
            "{d:?}"
        );
    }

    #[test]
    fn nothing_missing_runs_everywhere() {
        for (ci, root) in [(false, false), (true, false), (false, true), (true, true)] {
            assert_eq!(decide("t", &[], ctx(ci, root)), Decision::Run);
        }
    }

    #[test]
    fn require_panics_under_ci_without_the_capability() {
        let r = std::panic::catch_unwind(|| require_in(ctx(true, false), &[Need::Root]));
        let msg = *r.expect_err("must panic").downcast::<String>().unwrap();
        assert!(
            msg.contains("needs root") && msg.contains("CI is set"),
            "{msg}"
        );
    }

    #[test]
    fn require_panics_as_root_when_a_package_is_missing() {
        let r = std::panic::catch_unwind(|| require_in(ctx(false, true), &[NOWHERE]));
        let msg = *r.expect_err("must panic").downcast::<String>().unwrap();
        assert!(msg.contains("palisade-testkit-no-such-program"), "{msg}");
        assert!(msg.contains("running as root"), "{msg}");
    }

    #[test]
    fn require_returns_false_only_for_a_developer() {
        assert!(!require_in(ctx(false, false), &[NOWHERE, Need::Root]));
    }

    #[test]
    fn ci_values() {
        for v in ["true", "1", "yes", "TRUE"] {
            assert!(ci_value(Some(v)), "{v}");
        }
        for v in [None, Some(""), Some("0"), Some("false"), Some("False")] {
            assert!(!ci_value(v), "{v:?}");
        }
    }

    /// Issue 8: no test decides on its own to print "skipped" and pass; every
    /// privileged test asks [`require`].
    #[test]
    fn no_test_skips_on_its_own() {
        let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        // Built at run time so that this file does not match itself.
        let needle = format!("println!(\"{}", "skipped");
        let (files, found) =
            rust_lines_matching(&crates, |line| line.to_lowercase().contains(&needle));
        assert!(files > 50, "walked only {files} Rust files");
        assert!(
            found.is_empty(),
            "tests that skip by themselves (use palisade_testkit::require):\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn probes_see_what_is_there_and_what_is_not() {
        assert!(find_program("sh").is_some(), "sh on PATH");
        assert!(find_program("palisade-testkit-no-such-program").is_none());
        // A directory that exists is not a bpffs.
        assert!(!bpffs_mounted(Path::new("/tmp")));
        let m = missing(
            &[NOWHERE, Need::CniPlugin("no-such-plugin")],
            ctx(false, true),
        );
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(missing(&[Need::Root], ctx(false, true)).is_empty());
    }
}
