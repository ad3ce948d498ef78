//! The pod server: answers on every declared container port with the pod's identity.
//!
//! - TCP: accept, write `<namespace>/<name>\n`, close.
//! - UDP: on any datagram, reply `<namespace>/<name>\n` to the sender.
//! - SCTP: skipped (this kernel has no SCTP; see [`crate::probe`]).
//!
//! The same program is also the pod's **sender** (`--send URL`, see [`crate::sender`]):
//! it sends [`crate::sender`]'s marked datagrams or connections to a target, and a
//! server logs every marked arrival on stderr (its log file) as one
//! [`crate::sender::Arrival`] line, so a test can tell which pod reached it and when.
//!
//! Sockets bind `[::]:<port>` without `IPV6_V6ONLY`, so one socket serves IPv4 (as
//! mapped addresses) and IPv6; if IPv6 is unavailable, `0.0.0.0:<port>`.
//!
//! The server is a *process* so pods keep serving after `palisade lab up` returns: the
//! lab spawns it inside the pod namespace ([`spawn`]), detached in its own session,
//! waits for its `ready` line, and records its PID in the lab state; teardown stops
//! exactly that PID. The process is either the `palisade-lab-serve` binary or any
//! binary that calls [`main_with_args`] from a hidden subcommand (`palisade lab serve`).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use palisade_policy::model::{ContainerPort, Protocol};
use serde::{Deserialize, Serialize};

use crate::netns::{NetNs, NetNsError};
use crate::process::ProcessRecord;

/// How long [`spawn`] waits for the server's `ready` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// What a server prints on stdout once every socket is bound.
pub const READY_LINE: &str = "ready";
/// Per-connection write timeout, so a stuck client cannot stall the accept loop.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// How to start a server process: `program args... --identity ns/name --port 80/TCP…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerCommand {
    /// The executable.
    pub program: PathBuf,
    /// Arguments before the server's own (e.g. `["lab", "serve"]`).
    pub args: Vec<String>,
}

impl ServerCommand {
    /// `palisade-lab-serve` next to the running executable (or in its parent
    /// directory, where cargo puts binaries when the current one is a test).
    pub fn sibling() -> Option<ServerCommand> {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        [
            dir.join("palisade-lab-serve"),
            dir.parent()?.join("palisade-lab-serve"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .map(|program| ServerCommand {
            program,
            args: Vec::new(),
        })
    }
}

/// Server errors. `NotReady` may be retried.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad command-line arguments.
    #[error("usage: --identity NS/NAME [--port PORT/PROTO]... | --identity NS/NAME --send TARGETS... [--source IP]...: {0}")]
    Usage(String),
    /// Binding a port failed.
    #[error("binding {port}/{proto}")]
    Bind {
        /// The port.
        port: u16,
        /// `TCP` or `UDP`.
        proto: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Spawning the process failed.
    #[error("starting server {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The process did not report ready in time.
    #[error("server for {identity} not ready after {} ms: {log}", READY_TIMEOUT.as_millis())]
    NotReady {
        /// The pod.
        identity: String,
        /// Its log so far.
        log: String,
    },
    /// Entering the namespace failed.
    #[error(transparent)]
    NetNs(#[from] NetNsError),
}

/// Protocol spelled as in Kubernetes manifests.
pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

fn parse_port(s: &str) -> Result<ContainerPort, ServerError> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "TCP"));
    let port = port
        .parse()
        .map_err(|_| ServerError::Usage(format!("bad port {s:?}")))?;
    let protocol = match proto.to_ascii_uppercase().as_str() {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => Protocol::Sctp,
        _ => return Err(ServerError::Usage(format!("bad protocol {s:?}"))),
    };
    Ok(ContainerPort {
        name: None,
        port,
        protocol,
    })
}

/// Entry point for a server process: parses `--identity ns/name --port 80/TCP ...`
/// and serves forever (until killed). Prints [`READY_LINE`] once bound.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> Result<(), ServerError> {
    let mut identity = None;
    let mut ports = Vec::new();
    let mut sends = Vec::new();
    let mut sources = Vec::new();
    let mut binds = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| ServerError::Usage(format!("{a} needs a value")))
        };
        match a.as_str() {
            "--identity" => identity = Some(value()?),
            "--port" => ports.push(parse_port(&value()?)?),
            "--bind" => binds.push(
                value()?
                    .parse()
                    .map_err(|_| ServerError::Usage("--bind needs an IP address".into()))?,
            ),
            "--source" => sources.push(
                value()?
                    .parse()
                    .map_err(|_| ServerError::Usage("--source needs an IP address".into()))?,
            ),
            "--send" => sends.extend(
                crate::sender::parse_targets(&value()?)
                    .map_err(|e| ServerError::Usage(e.to_string()))?,
            ),
            other => return Err(ServerError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let identity = identity.ok_or_else(|| ServerError::Usage("--identity is required".into()))?;
    if !sends.is_empty() {
        // A sender only sends (the lab starts it before the servers, as its own process).
        crate::sender::send_all(&identity, &sends, &sources);
        return Ok(());
    }
    serve_on(&identity, &ports, &binds)
}

/// Binds every port, prints [`READY_LINE`] on stdout, then serves forever.
pub fn serve(identity: &str, ports: &[ContainerPort]) -> Result<(), ServerError> {
    serve_on(identity, ports, &[])
}

/// [`serve`] on the given addresses only (`--bind`; the wildcard when empty). Host-network
/// pods of the file lab share one node namespace: each binds its node's addresses, so
/// pods of two nodes may declare the same port.
pub fn serve_on(
    identity: &str,
    ports: &[ContainerPort],
    binds: &[IpAddr],
) -> Result<(), ServerError> {
    let reply = format!("{identity}\n").into_bytes();
    let mut workers = Vec::new();
    let bind_err = |port, proto| {
        move |source| ServerError::Bind {
            port,
            proto,
            source,
        }
    };
    for p in ports {
        match p.protocol {
            Protocol::Tcp => {
                let ls = if binds.is_empty() {
                    vec![bind_dual(p.port, "TCP", TcpListener::bind)?]
                } else {
                    binds
                        .iter()
                        .map(|ip| TcpListener::bind((*ip, p.port)).map_err(bind_err(p.port, "TCP")))
                        .collect::<Result<_, _>>()?
                };
                for l in ls {
                    let reply = reply.clone();
                    let port = p.port;
                    workers.push(std::thread::spawn(move || tcp_loop(l, port, reply)));
                }
            }
            Protocol::Udp => {
                let ss = if binds.is_empty() {
                    vec![bind_dual(p.port, "UDP", UdpSocket::bind)?]
                } else {
                    binds
                        .iter()
                        .map(|ip| UdpSocket::bind((*ip, p.port)).map_err(bind_err(p.port, "UDP")))
                        .collect::<Result<_, _>>()?
                };
                for s in ss {
                    let reply = reply.clone();
                    let port = p.port;
                    workers.push(std::thread::spawn(move || udp_loop(s, port, reply)));
                }
            }
            Protocol::Sctp => eprintln!(
                "palisade-lab-serve: {identity}: SCTP {} skipped: no SCTP in kernel",
                p.port
            ),
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{READY_LINE}");
    let _ = out.flush();
    drop(out);
    for w in workers {
        let _ = w.join();
    }
    // No port to serve: stay alive so the recorded PID keeps meaning "this pod's server".
    loop {
        std::thread::park();
    }
}

fn bind_dual<T>(
    port: u16,
    proto: &'static str,
    bind: impl Fn(SocketAddr) -> std::io::Result<T>,
) -> Result<T, ServerError> {
    bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)))
        .or_else(|_| bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))))
        .map_err(|source| ServerError::Bind {
            port,
            proto,
            source,
        })
}

fn tcp_loop(l: TcpListener, port: u16, reply: Vec<u8>) {
    loop {
        // The peer's address from accept(2): once a quick client has closed, the
        // socket may already be closed at the TCP level and getpeername(2) fail.
        let Ok((mut c, from)) = l.accept() else {
            continue;
        };
        let _ = c.set_write_timeout(Some(WRITE_TIMEOUT));
        let _ = c.write_all(&reply);
        let _ = c.shutdown(std::net::Shutdown::Write);
        // A sender writes its mark right after connecting; a prober writes nothing
        // and closes after reading the reply, so this read ends at once for it. It
        // runs on its own thread so a silent client cannot stall the accept loop.
        std::thread::spawn(move || crate::sender::record_tcp_arrival(c, from, port));
    }
}

fn udp_loop(s: UdpSocket, port: u16, reply: Vec<u8>) {
    let mut buf = [0u8; 2048];
    loop {
        if let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&reply, from);
            crate::sender::record_udp_arrival(&buf[..n], from, port);
        }
    }
}

/// Starts a server for pod `identity` inside `netns`, detached (own session, stdin
/// closed, stderr appended to `log`), and returns once it printed [`READY_LINE`].
pub fn spawn(
    cmd: &ServerCommand,
    netns: &NetNs,
    identity: &str,
    ports: &[ContainerPort],
    log: &Path,
) -> Result<ProcessRecord, ServerError> {
    spawn_on(cmd, netns, identity, ports, &[], log)
}

/// [`spawn`] bound to `binds` only (see [`serve_on`]).
pub fn spawn_on(
    cmd: &ServerCommand,
    netns: &NetNs,
    identity: &str,
    ports: &[ContainerPort],
    binds: &[IpAddr],
    log: &Path,
) -> Result<ProcessRecord, ServerError> {
    use std::os::unix::process::CommandExt;
    let spawn_err = |source| ServerError::Spawn {
        program: cmd.program.display().to_string(),
        source,
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(spawn_err)?;
    let mut c = Command::new(&cmd.program);
    c.args(&cmd.args).arg("--identity").arg(identity);
    for p in ports {
        c.arg("--port")
            .arg(format!("{}/{}", p.port, protocol_name(p.protocol)));
    }
    for ip in binds {
        c.arg("--bind").arg(ip.to_string());
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    netns.enter_on_exec(&mut c)?;
    // SAFETY: setsid(2) is async-signal-safe; it detaches the server from the CLI's
    // session and terminal so it outlives `palisade lab up`.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(spawn_err)?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(READY_TIMEOUT)
        .map(|l| l.trim() == READY_LINE)
        .unwrap_or(false);
    let record = ProcessRecord::of(format!("server {identity}"), child.id() as i32);
    match record {
        Some(r) if ready => Ok(r),
        other => {
            if let Some(r) = other {
                r.stop();
            }
            let _ = child.wait();
            Err(ServerError::NotReady {
                identity: identity.to_owned(),
                log: std::fs::read_to_string(log).unwrap_or_default(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_arguments_parse_with_default_tcp() {
        assert_eq!(parse_port("80").unwrap().protocol, Protocol::Tcp);
        assert_eq!(parse_port("53/udp").unwrap().protocol, Protocol::Udp);
        assert!(parse_port("x/TCP").is_err());
        assert!(parse_port("80/ICMP").is_err());
    }
}
