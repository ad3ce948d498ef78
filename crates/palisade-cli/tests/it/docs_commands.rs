//! Every `palisade` command printed in README.md and docs/*.md works as printed
//! (issue 12).
//!
//! The convention, checked here for every fenced block of those files:
//!
//! 1. A ```` ```console ```` block is run offline: each `$ ` line is a shell command run
//!    from the repository root with this build's `palisade` first on `PATH`. The lines
//!    after it (up to the next `$ ` line) are its expected standard output, compared
//!    exactly (trailing spaces aside) when there are any. The exit code must be 0,
//!    unless the command ends with `# exit N`.
//! 2. A block of shell commands that cannot run offline (lab, bench, agent, a live
//!    cluster) says so in its info string: ```` ```sh root ```` (needs root: network
//!    namespaces, BPF) or ```` ```sh cluster ```` (needs an API server). Such a block may
//!    not hold an offline command (`simulate`, `explain`, `validate`, `diff`, `completion`,
//!    `view`): those belong in a console block, where they are run. One of them that
//!    reads the cluster (`--live`, `--kubeconfig`, `--context`) is a cluster command. A server that runs
//!    until stopped (`palisade view --serve`) is in a ```` ```sh serve ```` block, each
//!    of whose commands must be one.
//! 3. A ```` ```text ```` block is output: only a `$ palisade ` line in it fails.
//! 4. Any other block with a line starting `palisade ` or `$ palisade ` fails the test:
//!    a command is never left out silently.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::repo;

/// Subcommands that need nothing but files, so every printed use of them is run.
const OFFLINE: [&str; 7] = [
    "simulate",
    "convert",
    "explain",
    "validate",
    "diff",
    "completion",
    "view",
];

/// One fenced block.
struct Block {
    file: String,
    /// 1-based line of the opening fence.
    line: usize,
    info: String,
    lines: Vec<String>,
}

fn blocks(path: &Path, name: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut out = Vec::new();
    let mut open: Option<Block> = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            match open.take() {
                Some(b) => out.push(b),
                None => {
                    open = Some(Block {
                        file: name.to_string(),
                        line: i + 1,
                        info: info.trim().to_string(),
                        lines: Vec::new(),
                    })
                }
            }
            continue;
        }
        if let Some(b) = &mut open {
            b.lines.push(l.to_string());
        }
    }
    assert!(open.is_none(), "{name}: a fenced block is never closed");
    out
}

fn documents() -> Vec<(PathBuf, String)> {
    let root = repo();
    let mut docs = vec![(root.join("README.md"), "README.md".to_string())];
    let mut more: Vec<_> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    more.sort();
    for p in more {
        let name = format!("docs/{}", p.file_name().unwrap().to_string_lossy());
        docs.push((p, name));
    }
    docs
}

/// The subcommand of a `palisade ...` command line.
fn subcommand(cmd: &str) -> Option<&str> {
    cmd.split_whitespace()
        .skip_while(|w| *w != "palisade")
        .nth(1)
}

/// One command of a console block with what the document says it does.
struct Case {
    at: String,
    command: String,
    exit: i32,
    stdout: Vec<String>,
}

fn console_cases(b: &Block) -> Vec<Case> {
    let mut out: Vec<Case> = Vec::new();
    for (i, l) in b.lines.iter().enumerate() {
        if let Some(cmd) = l.strip_prefix("$ ") {
            let (command, exit) = match cmd.rsplit_once("# exit ") {
                Some((c, n)) => (
                    c.trim().to_string(),
                    n.trim().parse().expect("# exit N takes a number"),
                ),
                None => (cmd.trim().to_string(), 0),
            };
            out.push(Case {
                at: format!("{}:{}", b.file, b.line + 1 + i),
                command,
                exit,
                stdout: Vec::new(),
            });
        } else {
            match out.last_mut() {
                Some(c) => c.stdout.push(l.trim_end().to_string()),
                None => panic!(
                    "{}:{}: a console block starts with output, not a `$ ` command",
                    b.file,
                    b.line + 1 + i
                ),
            }
        }
    }
    out
}

fn run_case(c: &Case, bin_dir: &Path) -> Result<(), String> {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(&c.command)
        .current_dir(repo())
        .env("PATH", path)
        .env("PALISADE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("{}: {e}", c.at))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(c.exit) {
        return Err(format!(
            "{}: `{}` exited {:?}, the document says {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            c.at,
            c.command,
            out.status.code(),
            c.exit
        ));
    }
    let got: Vec<&str> = stdout.lines().map(str::trim_end).collect();
    let mut want: Vec<&str> = c.stdout.iter().map(String::as_str).collect();
    while want.last() == Some(&"") {
        want.pop();
    }
    if !want.is_empty() && got != want {
        return Err(format!(
            "{}: `{}` printed something other than the document shows\n--- document\n{}\n--- printed\n{}",
            c.at,
            c.command,
            want.join("\n"),
            got.join("\n")
        ));
    }
    Ok(())
}

#[test]
fn issue_12_every_command_in_the_readme_and_docs_works_as_printed() {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_palisade"));
    let bin_dir = bin.parent().unwrap();
    let mut problems = Vec::new();
    let mut ran = 0;
    let mut marked = 0;
    for (path, name) in documents() {
        for b in blocks(&path, &name) {
            let commands: Vec<(usize, &str)> = b
                .lines
                .iter()
                .enumerate()
                .map(|(i, l)| (i, l.trim_start()))
                .filter(|(_, l)| l.starts_with("palisade ") || l.starts_with("$ palisade "))
                .collect();
            let kind = b.info.split_whitespace().collect::<Vec<_>>();
            match kind.as_slice() {
                ["console", ..] => {
                    for c in console_cases(&b) {
                        ran += 1;
                        if let Err(e) = run_case(&c, bin_dir) {
                            problems.push(e);
                        }
                    }
                }
                [_, "serve"] => {
                    for (i, l) in &commands {
                        marked += 1;
                        if !l.contains(" --serve ") {
                            problems.push(format!(
                                "{}:{}: `{l}` is no server: a ```sh serve block holds only `palisade view --serve` commands",
                                b.file,
                                b.line + 1 + i
                            ));
                        }
                    }
                }
                [_, "root" | "cluster"] => {
                    for (i, l) in &commands {
                        marked += 1;
                        let sub = subcommand(l).unwrap_or_default();
                        let live = l.split_whitespace().any(|w| {
                            w == "--live"
                                || w.starts_with("--kubeconfig")
                                || w.starts_with("--context")
                        });
                        if OFFLINE.contains(&sub) && !(live && kind[1] == "cluster") {
                            problems.push(format!(
                                "{}:{}: `{l}` runs offline: put it in a ```console block, where it is run",
                                b.file,
                                b.line + 1 + i
                            ));
                        }
                    }
                }
                ["text", ..] => {
                    for (i, l) in commands.iter().filter(|(_, l)| l.starts_with("$ ")) {
                        problems.push(format!(
                            "{}:{}: `{l}` is a command in a ```text block: use ```console",
                            b.file,
                            b.line + 1 + i
                        ));
                    }
                }
                _ => {
                    for (i, l) in &commands {
                        problems.push(format!(
                            "{}:{}: `{l}` is in a ```{} block: use ```console (run by this test) or ```sh root / ```sh cluster (says why it is not run)",
                            b.file,
                            b.line + 1 + i,
                            b.info
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    assert!(
        ran >= 5,
        "expected the README's offline examples to be run, ran {ran}"
    );
    eprintln!("ran {ran} documented commands; {marked} marked as needing root or a cluster");
}

#[test]
fn issue_12_the_doc_convention_catches_an_unmarked_command_and_wrong_output() {
    let b = Block {
        file: "x.md".into(),
        line: 1,
        info: "console".into(),
        lines: vec![
            "$ palisade validate -f nowhere # exit 1".into(),
            "$ echo one".into(),
            "two".into(),
        ],
    };
    let cases = console_cases(&b);
    assert_eq!(cases.len(), 2);
    assert_eq!(cases[0].exit, 1);
    assert_eq!(cases[0].command, "palisade validate -f nowhere");
    assert_eq!(cases[1].stdout, vec!["two".to_string()]);
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_palisade"));
    let dir = bin.parent().unwrap();
    run_case(&cases[0], dir).expect("an unreadable file exits 1, as documented");
    let e = run_case(&cases[1], dir).expect_err("`echo one` does not print `two`");
    assert!(e.contains("x.md:3"), "{e}");
    assert_eq!(subcommand("palisade lab up -f x"), Some("lab"));
}

/// The example lines (`  palisade ...`) of a help text.
fn help_examples(help: &str) -> Vec<String> {
    help.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("palisade "))
        .map(str::to_string)
        .collect()
}

fn help_of(words: &[&str]) -> String {
    let out = crate::support::palisade()
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "palisade {} --help exited {:?}: {}",
        words.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands a help text lists under `Commands:`.
fn listed_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .map(str::to_string)
        .collect()
}

#[test]
fn issue_12_every_example_in_the_help_names_a_real_command_and_the_offline_ones_work() {
    let top = help_of(&[]);
    let mut helps = vec![top.clone()];
    for c in listed_commands(&top) {
        let h = help_of(&[&c]);
        for sub in listed_commands(&h) {
            helps.push(help_of(&[&c, &sub]));
        }
        helps.push(h);
    }
    let mut checked = 0;
    for h in &helps {
        for ex in help_examples(h) {
            // The command words, up to the first flag or argument with a `/` or `.`.
            let words: Vec<&str> = ex
                .split_whitespace()
                .skip(1)
                .take_while(|w| !w.starts_with('-') && !w.contains(['/', '.', '~']))
                .collect();
            help_of(&words);
            let sub = words.first().copied().unwrap_or_default();
            if OFFLINE.contains(&sub) {
                let args: Vec<&str> = ex.split_whitespace().skip(1).collect();
                let out = crate::support::palisade()
                    .args(&args)
                    .current_dir(repo())
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "help example `{ex}` exited {:?}: {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected examples in the help, found {checked}"
    );
    // The one-line description names no command that does not exist.
    let about = top.lines().next().unwrap_or_default();
    assert!(!about.contains("inspect"), "{about}");
}
