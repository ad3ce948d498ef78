//! The pod **sender**: a process that, from the moment its pod's network exists, sends
//! to a target again and again, each datagram or connection marked with the sender's
//! pod identity; and the receiving side's record of what arrived.
//!
//! It exists to measure the window that matters for new pods: a policy must be in
//! force for a pod's *first* packet, and a real container starts sending as soon as
//! the container runtime has run CNI `ADD`, not when anything reports the pod ready.
//! The lab kubelet therefore starts the sender the instant `ADD` returns.
//!
//! # Target format (`lab.palisade.io/send` annotation, `--send` argument)
//!
//! A comma-separated list of `PROTO://HOST:PORT[?every=DURATION][&for=DURATION]`:
//!
//! - `PROTO` is `udp` (one datagram per tick) or `tcp` (one connection per tick,
//!   connect timeout [`TCP_CONNECT_TIMEOUT`]);
//! - `HOST` an IP address, IPv6 in brackets (`tcp://[fd00:10:244::5]:80`);
//! - `every` the interval (`5ms`, `1s`; default [`DEFAULT_EVERY`], at least 1 ms);
//! - `for` how long to keep sending (default [`DEFAULT_FOR`], at most [`MAX_FOR`]):
//!   a sender always stops by itself.
//!
//! Durations are an integer followed by `ms` or `s`. Anything else is an error naming
//! the target and the part; nothing is silently ignored.
//!
//! # Wire mark and arrival lines
//!
//! Each datagram (and each connection's first bytes) is `palisade-send <identity>
//! <seq>\n`. A server that receives such a mark writes one line to its stderr (its log
//! file): `arrival proto=UDP port=7000 from=10.244.1.3 identity=ns/name seq=0
//! unix_ms=1767225600123`; [`arrivals`] reads them back.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::netns::NetNs;
use crate::process::ProcessRecord;
use crate::server::{ServerCommand, ServerError};

/// Interval when a target names none.
pub const DEFAULT_EVERY: Duration = Duration::from_millis(100);
/// How long a sender sends when a target names no `for`.
pub const DEFAULT_FOR: Duration = Duration::from_secs(300);
/// The longest `for` accepted: senders are bounded.
pub const MAX_FOR: Duration = Duration::from_secs(3600);
/// Per-connection timeout of a TCP sender (a dropped SYN costs at most this).
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// What every mark starts with.
pub const MARK: &str = "palisade-send";

/// A bad target.
#[derive(Debug, thiserror::Error)]
#[error("send target {target:?}: {problem}")]
pub struct TargetError {
    /// The target as written.
    pub target: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Transport of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SendProto {
    /// One datagram per tick.
    Udp,
    /// One connection per tick.
    Tcp,
}

/// One parsed target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendTarget {
    /// Transport.
    pub proto: SendProto,
    /// Where to.
    pub addr: SocketAddr,
    /// Interval between sends.
    pub every: Duration,
    /// How long to keep sending.
    pub duration: Duration,
}

impl std::fmt::Display for SendTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = match self.proto {
            SendProto::Udp => "udp",
            SendProto::Tcp => "tcp",
        };
        write!(
            f,
            "{proto}://{}?every={}ms&for={}ms",
            self.addr,
            self.every.as_millis(),
            self.duration.as_millis()
        )
    }
}

/// Parses a comma-separated list of targets (see the module docs). Empty entries
/// (a trailing comma) are errors too.
pub fn parse_targets(spec: &str) -> Result<Vec<SendTarget>, TargetError> {
    spec.split(',').map(|t| parse_target(t.trim())).collect()
}

fn parse_target(target: &str) -> Result<SendTarget, TargetError> {
    let err = |problem: String| TargetError {
        target: target.to_owned(),
        problem,
    };
    let (proto, rest) = target
        .split_once("://")
        .ok_or_else(|| err("expected PROTO://HOST:PORT".into()))?;
    let proto = match proto {
        "udp" => SendProto::Udp,
        "tcp" => SendProto::Tcp,
        other => return Err(err(format!("protocol {other:?} is not udp or tcp"))),
    };
    let (addr, query) = rest.split_once('?').unwrap_or((rest, ""));
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| err(format!("{addr:?} is not IP:PORT (IPv6 in brackets)")))?;
    let mut every = DEFAULT_EVERY;
    let mut duration = DEFAULT_FOR;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| err(format!("{pair:?} is not KEY=VALUE")))?;
        let d = parse_duration(v).ok_or_else(|| err(format!("{k}={v:?} is not like 5ms or 2s")))?;
        match k {
            "every" => every = d,
            "for" => duration = d,
            other => return Err(err(format!("unknown parameter {other:?} (every, for)"))),
        }
    }
    if every < Duration::from_millis(1) {
        return Err(err("every must be at least 1ms".into()));
    }
    if duration > MAX_FOR {
        return Err(err(format!("for may be at most {}s", MAX_FOR.as_secs())));
    }
    Ok(SendTarget {
        proto,
        addr,
        every,
        duration,
    })
}

fn parse_duration(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    v.strip_suffix('s')?.parse().ok().map(Duration::from_secs)
}

/// Sends to every target, one thread each, until every target's `for` has passed.
/// Each leaves from the address of `sources` of its target's family, if any (a
/// host-network pod's sender runs in the node namespace, where the kernel would pick
/// a gateway address), otherwise from the kernel's choice.
///
/// Once every target's first send was attempted it prints [`crate::server::READY_LINE`]
/// on stdout: [`spawn`] waits for it, so the lab kubelet's first packet of a pod is
/// sent before the pod's servers start and before it reports the pod Ready.
pub fn send_all(identity: &str, targets: &[SendTarget], sources: &[IpAddr]) {
    let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
    let threads: Vec<_> = targets
        .iter()
        .cloned()
        .map(|t| {
            let identity = identity.to_owned();
            let src = sources
                .iter()
                .copied()
                .find(|s| s.is_ipv4() == t.addr.is_ipv4());
            let first = first_tx.clone();
            std::thread::spawn(move || send_loop(&identity, &t, src, first))
        })
        .collect();
    drop(first_tx);
    // Ends when every thread has reported its first attempt (or given up).
    while first_rx.recv().is_ok() {}
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", crate::server::READY_LINE);
        let _ = out.flush();
    }
    for t in threads {
        let _ = t.join();
    }
}

/// Sends to one target every `every` for `duration`; reports on stderr when it
/// starts, its first error of each kind is not repeated, and a summary at the end.
fn send_loop(
    identity: &str,
    t: &SendTarget,
    src: Option<IpAddr>,
    first: std::sync::mpsc::Sender<()>,
) {
    let mut first = Some(first);
    let start = Instant::now();
    eprintln!(
        "sender {identity}: sending to {t} from unix_ms={}",
        unix_ms()
    );
    let udp = match t.proto {
        SendProto::Udp => {
            let any: IpAddr = match t.addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            };
            let bind = SocketAddr::new(src.unwrap_or(any), 0);
            match UdpSocket::bind(bind) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("sender {identity}: cannot bind a UDP socket: {e}");
                    return;
                }
            }
        }
        SendProto::Tcp => None,
    };
    let (mut sent, mut failed) = (0u64, 0u64);
    let mut seq = 0u64;
    while start.elapsed() < t.duration {
        let tick = Instant::now();
        let mark = format!("{MARK} {identity} {seq}\n");
        let ok = match &udp {
            Some(s) => s.send_to(mark.as_bytes(), t.addr).map(|_| ()),
            None => crate::probe::connect_from(src, t.addr, TCP_CONNECT_TIMEOUT)
                .and_then(|c| tcp_mark(c, mark.as_bytes())),
        };
        match ok {
            Ok(()) => sent += 1,
            Err(e) => {
                if failed == 0 {
                    eprintln!("sender {identity}: {t}: {e} (further errors counted)");
                }
                failed += 1;
            }
        }
        if let Some(f) = first.take() {
            eprintln!(
                "sender {identity}: first send to {} done at unix_ms={}",
                t.addr,
                unix_ms()
            );
            let _ = f.send(());
        }
        seq += 1;
        if let Some(rest) = t.every.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    eprintln!("sender {identity}: {t}: done, {sent} sent, {failed} failed");
}

/// Writes the mark, then reads the server's reply to its end before closing: a socket
/// closed with unread data sends RST, and the server could lose the mark with it.
fn tcp_mark(mut c: TcpStream, mark: &[u8]) -> std::io::Result<()> {
    c.write_all(mark)?;
    c.shutdown(std::net::Shutdown::Write)?;
    c.set_read_timeout(Some(TCP_CONNECT_TIMEOUT))?;
    let mut sink = Vec::new();
    let _ = c.read_to_end(&mut sink);
    Ok(())
}

/// One marked arrival at a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arrival {
    /// `UDP` or `TCP`.
    pub proto: String,
    /// The server port it arrived on.
    pub port: u16,
    /// The source address (IPv4-mapped IPv6 shown as IPv4).
    pub from: IpAddr,
    /// The identity in the mark.
    pub identity: String,
    /// The sequence number in the mark.
    pub seq: u64,
    /// When it arrived, in milliseconds since the Unix epoch.
    pub unix_ms: u128,
}

impl Arrival {
    /// The log line (see the module docs).
    pub fn line(&self) -> String {
        format!(
            "arrival proto={} port={} from={} identity={} seq={} unix_ms={}",
            self.proto, self.port, self.from, self.identity, self.seq, self.unix_ms
        )
    }

    /// Parses a line made by [`Arrival::line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<Arrival> {
        let rest = line.trim().strip_prefix("arrival ")?;
        let mut fields = std::collections::BTreeMap::new();
        for f in rest.split(' ') {
            let (k, v) = f.split_once('=')?;
            fields.insert(k, v);
        }
        Some(Arrival {
            proto: fields.get("proto")?.to_string(),
            port: fields.get("port")?.parse().ok()?,
            from: fields.get("from")?.parse().ok()?,
            identity: fields.get("identity")?.to_string(),
            seq: fields.get("seq")?.parse().ok()?,
            unix_ms: fields.get("unix_ms")?.parse().ok()?,
        })
    }
}

/// Every arrival recorded in a server's log file (none if it cannot be read).
pub fn arrivals(log: &Path) -> Vec<Arrival> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(Arrival::parse)
        .collect()
}

/// Parses a mark (`palisade-send <identity> <seq>`).
fn parse_mark(bytes: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut parts = text.trim_end().splitn(3, ' ');
    if parts.next()? != MARK {
        return None;
    }
    let identity = parts.next()?.to_owned();
    let seq = parts.next()?.parse().ok()?;
    Some((identity, seq))
}

fn log_arrival(proto: &str, port: u16, from: SocketAddr, bytes: &[u8]) {
    if let Some((identity, seq)) = parse_mark(bytes) {
        let a = Arrival {
            proto: proto.to_owned(),
            port,
            from: from.ip().to_canonical(),
            identity,
            seq,
            unix_ms: unix_ms(),
        };
        eprintln!("{}", a.line());
    }
}

/// Called by the UDP server for every datagram.
pub(crate) fn record_udp_arrival(bytes: &[u8], from: SocketAddr, port: u16) {
    log_arrival("UDP", port, from, bytes);
}

/// Called by the TCP server for every accepted connection, after its reply: reads
/// what the client sent (a sender's mark; nothing from a prober) for a short while.
pub(crate) fn record_tcp_arrival(mut c: TcpStream, from: SocketAddr, port: u16) {
    let _ = c.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 512];
    let mut n = 0;
    while n < buf.len() {
        match c.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => {
                n += k;
                if buf[..n].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    log_arrival("TCP", port, from, &buf[..n]);
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Starts a sender for pod `identity` inside `netns`, detached (own session, stdin
/// closed, stderr appended to `log`), and returns once it printed its ready line, i.e.
/// once its first packet to every target has been sent (or attempted: a TCP connect
/// gives up after [`TCP_CONNECT_TIMEOUT`]).
pub fn spawn(
    cmd: &ServerCommand,
    netns: &NetNs,
    identity: &str,
    targets: &[SendTarget],
    sources: &[IpAddr],
    log: &Path,
) -> Result<ProcessRecord, ServerError> {
    use std::io::{BufRead, BufReader};
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
    for t in targets {
        c.arg("--send").arg(t.to_string());
    }
    for ip in sources {
        c.arg("--source").arg(ip.to_string());
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file);
    netns.enter_on_exec(&mut c)?;
    // SAFETY: setsid(2) is async-signal-safe; the sender outlives its starter.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = c.spawn().map_err(spawn_err)?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let ready = rx
        .recv_timeout(crate::server::READY_TIMEOUT)
        .map(|l| l.trim() == crate::server::READY_LINE)
        .unwrap_or(false);
    let record = ProcessRecord::of(format!("sender {identity}"), child.id() as i32);
    match record {
        Some(r) if ready => {
            // Reaped by whoever stops it (ProcessRecord::stop); a sender whose time
            // is up stays a zombie until then, which `is_alive` reports as gone.
            std::mem::forget(child);
            Ok(r)
        }
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
    fn targets_parse_with_defaults_and_bad_ones_name_the_part() {
        let t = parse_targets("udp://10.244.2.5:7000?every=5ms, tcp://[fd00::5]:80").unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].proto, SendProto::Udp);
        assert_eq!(t[0].every, Duration::from_millis(5));
        assert_eq!(t[0].duration, DEFAULT_FOR);
        assert_eq!(t[1].addr, "[fd00::5]:80".parse().unwrap());
        assert_eq!(t[1].every, DEFAULT_EVERY);
        // Round trip through the command line form.
        assert_eq!(parse_targets(&t[0].to_string()).unwrap()[0], t[0]);
        for (bad, part) in [
            ("icmp://1.2.3.4:1", "icmp"),
            ("udp://1.2.3.4", "IP:PORT"),
            ("udp://1.2.3.4:1?every=5m", "every"),
            ("udp://1.2.3.4:1?each=5ms", "each"),
            ("udp://1.2.3.4:1?every=0ms", "at least"),
            ("udp://1.2.3.4:1?for=7200s", "at most"),
            ("udp://1.2.3.4:1,", "expected"),
        ] {
            let e = parse_targets(bad).unwrap_err().to_string();
            assert!(e.contains(part), "{bad}: {e}");
        }
    }

    #[test]
    fn arrival_lines_round_trip_and_marks_are_recognised() {
        let a = Arrival {
            proto: "UDP".into(),
            port: 7000,
            from: "10.244.1.3".parse().unwrap(),
            identity: "ns/web-1".into(),
            seq: 4,
            unix_ms: 1_767_225_600_123,
        };
        assert_eq!(Arrival::parse(&a.line()), Some(a));
        assert_eq!(Arrival::parse("ready"), None);
        assert_eq!(
            parse_mark(b"palisade-send ns/a 12\n"),
            Some(("ns/a".into(), 12))
        );
        assert_eq!(parse_mark(b"hello"), None);
        assert_eq!(parse_mark(b"palisade-send ns/a x"), None);
    }

    #[test]
    fn a_udp_sender_sends_numbered_marks_then_stops_by_itself() {
        // Loopback only, bounded: 1 ms ticks for 100 ms.
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let port = server.local_addr().unwrap().port();
        let t = parse_targets(&format!("udp://127.0.0.1:{port}?every=1ms&for=100ms")).unwrap();
        let sender = std::thread::spawn(move || send_all("ns/a", &t, &[]));
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(parse_mark(&buf[..n]), Some(("ns/a".into(), 0)));
        assert_eq!(from.ip(), IpAddr::from([127, 0, 0, 1]));
        sender.join().unwrap();
        let mut last = 0;
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        while let Ok((n, _)) = server.recv_from(&mut buf) {
            last = parse_mark(&buf[..n]).unwrap().1;
        }
        assert!(last >= 1, "more than one mark sent");
    }
}
