//! Real connection attempts between pods, reported in the `palisade simulate` format:
//!
//! ```json
//! {"port": 80, "protocol": "TCP", "results": [
//!   {"from": "x/a", "to": "y/b", "verdict": "allow", "reason": "measured: connected in 0.3 ms, reply \"y/b\""}]}
//! ```
//!
//! Every ordered pair of distinct pods that both have an address of the probed family
//! is tried, from a thread inside the source pod's namespace, to the destination pod's
//! address. At most [`ProbeOptions::parallelism`] probes run at once, each bounded by
//! [`ProbeOptions::timeout`]. Pairs lacking an address of the family are left out.
//!
//! How outcomes map to verdicts (a datapath deny is a silent drop, so *any* answer
//! from the peer's kernel proves the packet got through):
//!
//! | protocol | outcome | verdict |
//! |---|---|---|
//! | TCP | connected and the server's reply read | allow |
//! | TCP | connection refused (RST: reached the pod, no listener) | allow, reason `refused: no listener` |
//! | TCP | connected but no reply before the deadline | deny (the reply path is broken) |
//! | UDP | reply datagram | allow |
//! | UDP | ICMP port unreachable (`ECONNREFUSED`) | allow, reason `refused: no listener` |
//! | SCTP | ICMP protocol/next-header unreachable to a raw `INIT` | allow (see below) |
//! | any | nothing before the deadline | deny, `timeout after N ms` |
//! | any | other error (no route, …) | deny, with the error |
//!
//! SCTP: this kernel has no SCTP, so no SCTP socket exists on either side. The probe
//! sends an SCTP `INIT` chunk on a raw IP socket (protocol 132), from a new source
//! port every time, as a real client opening a new association does (so each probe
//! is a new flow to the datapath, never a packet of an earlier probe's tracked
//! association); the peer's kernel,
//! lacking SCTP, answers with ICMP protocol unreachable (IPv4) or parameter problem,
//! unrecognized next header (IPv6), which the raw socket reports as an error thanks to
//! `IP_RECVERR`/`IPV6_RECVERR`. That answer proves the INIT reached the peer pod.
//! The lab turns ICMP rate limiting off in pod namespaces so that these answers (and
//! UDP port unreachables) are not suppressed when many probes hit one pod.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sched::{setns, CloneFlags};
use palisade_policy::model::Protocol;
use serde::{Deserialize, Serialize};

use crate::netns::NetNs;
use crate::server::protocol_name;

/// Default per-probe deadline, in milliseconds. Inside one machine a handshake takes
/// well under a millisecond; a second leaves room for a loaded 2-core machine.
pub const DEFAULT_TIMEOUT_MS: u64 = 1000;
/// Default number of probes in flight.
pub const DEFAULT_PARALLELISM: usize = 16;

/// Address family to probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Family {
    /// IPv4 (`--family 4`).
    #[default]
    V4,
    /// IPv6 (`--family 6`).
    V6,
}

impl Family {
    /// `4` or `6`, as given to `--family`.
    pub fn from_number(n: u8) -> Option<Family> {
        match n {
            4 => Some(Family::V4),
            6 => Some(Family::V6),
            _ => None,
        }
    }

    fn matches(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// Probe tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Deadline for one probe (connect + reply).
    pub timeout: Duration,
    /// Probes in flight at most.
    pub parallelism: usize,
    /// Which addresses to use.
    pub family: Family,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            timeout: Duration::from_millis(DEFAULT_TIMEOUT_MS),
            parallelism: DEFAULT_PARALLELISM,
            family: Family::V4,
        }
    }
}

/// A pod as the prober sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `namespace/name`.
    pub key: String,
    /// Its network namespace.
    pub netns: String,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// Allow or deny, as `simulate` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The packet reached the destination pod.
    Allow,
    /// It did not.
    Deny,
}

/// One pair's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Source pod key.
    pub from: String,
    /// Destination pod key.
    pub to: String,
    /// The measured verdict.
    pub verdict: Verdict,
    /// What was measured.
    pub reason: String,
}

/// All pairs for one port and protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Destination port.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Sorted by (from, to).
    pub results: Vec<ProbeResult>,
}

/// Probes every ordered pair of distinct endpoints on `port`/`protocol`.
pub fn probe_all(
    endpoints: &[Endpoint],
    port: u16,
    protocol: Protocol,
    opts: ProbeOptions,
) -> ProbeReport {
    let addr = |e: &Endpoint| e.ips.iter().copied().find(|ip| opts.family.matches(ip));
    // Both directions of a pair run in one job, one after the other: a raw SCTP
    // socket probing b from a would otherwise swallow b's INIT to a (it matches the
    // socket's connected peer), so a's kernel would send no ICMP answer to b.
    let mut jobs: Vec<Vec<(&Endpoint, &Endpoint, IpAddr, SocketAddr)>> = Vec::new();
    for (i, a) in endpoints.iter().enumerate() {
        for b in &endpoints[i + 1..] {
            if a.key == b.key {
                continue;
            }
            let job: Vec<_> = [(a, b), (b, a)]
                .into_iter()
                .filter_map(|(from, to)| {
                    Some((from, to, addr(from)?, SocketAddr::new(addr(to)?, port)))
                })
                .collect();
            if !job.is_empty() {
                jobs.push(job);
            }
        }
    }
    let queue = Mutex::new(jobs.into_iter());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.parallelism.max(1) {
            s.spawn(|| loop {
                let Some(job) = queue.lock().expect("no panics holding it").next() else {
                    break;
                };
                for (from, to, src, dst) in job {
                    // From the source's own address: in a pod namespace it is what the
                    // kernel would pick anyway; a host-network pod shares the node
                    // namespace, where the kernel would pick a gateway address.
                    let (verdict, reason) = in_netns(&from.netns, || {
                        probe_from(Some(src), dst, protocol, opts.timeout)
                    });
                    results
                        .lock()
                        .expect("no panics holding it")
                        .push(ProbeResult {
                            from: from.key.clone(),
                            to: to.key.clone(),
                            verdict,
                            reason,
                        });
                }
            });
        }
    });
    let mut results = results.into_inner().expect("threads joined");
    results.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    ProbeReport {
        port,
        protocol: protocol_name(protocol).to_owned(),
        results,
    }
}

/// Joins `netns` on the current (worker) thread and runs `f`. Worker threads are
/// private to [`probe_all`] and end with it, so leaving them in a pod namespace is
/// harmless.
fn in_netns(netns: &str, f: impl FnOnce() -> (Verdict, String)) -> (Verdict, String) {
    let file = match std::fs::File::open(NetNs::open(netns).path()) {
        Ok(f) => f,
        Err(e) => {
            return (
                Verdict::Deny,
                format!("error: source namespace {netns}: {e}"),
            )
        }
    };
    if let Err(e) = setns(file.as_fd(), CloneFlags::CLONE_NEWNET) {
        return (Verdict::Deny, format!("error: entering {netns}: {e}"));
    }
    f()
}

/// Tries per probe. Attempts are spread evenly over the deadline (each gets a third
/// of it, the last whatever remains), each on a fresh socket, so one lost packet or a
/// scheduling stall on a loaded machine does not read as a deny. A datapath deny drops
/// every attempt alike. (TCP's own SYN retransmission starts only after 1 s.)
pub const ATTEMPTS: u32 = 3;

/// One probe from the calling thread's namespace.
pub fn probe_one(dst: SocketAddr, protocol: Protocol, timeout: Duration) -> (Verdict, String) {
    probe_from(None, dst, protocol, timeout)
}

/// One probe from the calling thread's namespace, from source address `src` when
/// given (the kernel's choice otherwise).
pub fn probe_from(
    src: Option<IpAddr>,
    dst: SocketAddr,
    protocol: Protocol,
    timeout: Duration,
) -> (Verdict, String) {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut attempt = 0;
    let r = loop {
        attempt += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(std::io::ErrorKind::TimedOut.into());
        }
        let slot = if attempt == ATTEMPTS {
            left
        } else {
            (timeout / ATTEMPTS).min(left)
        };
        let r = match protocol {
            Protocol::Tcp => probe_tcp(src, dst, slot, deadline),
            Protocol::Udp => probe_udp(src, dst, slot),
            Protocol::Sctp => probe_sctp(src, dst, next_sctp_port(), slot),
        };
        match r {
            Err(e) if is_timeout(&e) && attempt < ATTEMPTS => continue,
            r => break r,
        }
    };
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let nth = if attempt > 1 {
        format!(", attempt {attempt}")
    } else {
        String::new()
    };
    let verb = if protocol == Protocol::Tcp {
        "connected"
    } else {
        "answered"
    };
    match r {
        Ok(Outcome::Reply(reply)) => (
            Verdict::Allow,
            format!(
                "measured: {verb} in {ms:.1} ms{nth}, reply {:?}",
                reply.trim()
            ),
        ),
        Ok(Outcome::Refused) => (
            Verdict::Allow,
            format!("measured: refused: no listener (reached the pod in {ms:.1} ms{nth})"),
        ),
        Ok(Outcome::Unreachable(what)) => (
            Verdict::Allow,
            format!("measured: {what} in {ms:.1} ms{nth} (reached the pod)"),
        ),
        Ok(Outcome::NoReply) => (
            Verdict::Deny,
            format!(
                "connected in {ms:.1} ms{nth} but no reply within {} ms",
                timeout.as_millis()
            ),
        ),
        Err(e) if is_timeout(&e) => (
            Verdict::Deny,
            format!("timeout after {} ms", timeout.as_millis()),
        ),
        Err(e) => (Verdict::Deny, format!("error: {e}")),
    }
}

enum Outcome {
    Reply(String),
    Refused,
    Unreachable(&'static str),
    NoReply,
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
    )
}

/// Connects within `slot`, then reads the reply until `deadline`.
fn probe_tcp(
    src: Option<IpAddr>,
    dst: SocketAddr,
    slot: Duration,
    deadline: Instant,
) -> std::io::Result<Outcome> {
    let mut s = match connect_from(src, dst, slot) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(Outcome::Refused),
        Err(e) => return Err(e),
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left))?;
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) if !buf.is_empty() => Ok(Outcome::Reply(String::from_utf8_lossy(&buf).into_owned())),
        Ok(_) => Ok(Outcome::NoReply),
        Err(e) if is_timeout(&e) && !buf.is_empty() => {
            Ok(Outcome::Reply(String::from_utf8_lossy(&buf).into_owned()))
        }
        Err(e) if is_timeout(&e) => Ok(Outcome::NoReply),
        Err(e) => Err(e),
    }
}

/// `TcpStream::connect_timeout`, bound first to `src` (port chosen by the kernel).
pub(crate) fn connect_from(
    src: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let Some(src) = src else {
        return TcpStream::connect_timeout(&dst, timeout);
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), timeout)?;
    Ok(s.into())
}

fn probe_udp(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> std::io::Result<Outcome> {
    let any: IpAddr = if dst.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let bind = SocketAddr::new(src.unwrap_or(any), 0);
    let s = UdpSocket::bind(bind)?;
    s.connect(dst)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"palisade-probe")?;
    let mut buf = [0u8; 512];
    match s.recv(&mut buf) {
        Ok(n) => Ok(Outcome::Reply(
            String::from_utf8_lossy(&buf[..n]).into_owned(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(Outcome::Refused),
        Err(e) => Err(e),
    }
}

/// IANA protocol number of SCTP.
const IPPROTO_SCTP: i32 = 132;

/// First port of the range SCTP probes take their source ports from: the IANA
/// dynamic range, 49152..=65535 (RFC 6335), 16384 ports.
const SCTP_PORT_BASE: u16 = 49_152;
/// Ports in that range.
const SCTP_PORT_COUNT: u32 = 16_384;

/// The source port of the next SCTP association: every call gives the next port
/// of the dynamic range, from a start picked once per process (clock and pid),
/// so consecutive probes never share a 5-tuple within 16384 probes and two
/// `lab probe` runs do not replay each other's tuples. A raw socket has no port
/// of its own to allocate from, so the prober allocates it.
fn next_sctp_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        AtomicU32::new(nanos ^ std::process::id().rotate_left(16))
    });
    let n = next.fetch_add(1, Ordering::Relaxed) % SCTP_PORT_COUNT;
    SCTP_PORT_BASE + n as u16
}

/// Sends one INIT from `src_port` and waits for the peer's answer.
fn probe_sctp(
    src: Option<IpAddr>,
    dst: SocketAddr,
    src_port: u16,
    timeout: Duration,
) -> std::io::Result<Outcome> {
    let (domain, level, recverr) = match dst {
        SocketAddr::V4(_) => (libc::AF_INET, libc::SOL_IP, libc::IP_RECVERR),
        SocketAddr::V6(_) => (libc::AF_INET6, libc::SOL_IPV6, libc::IPV6_RECVERR),
    };
    // SAFETY: plain socket(2); the fd is owned immediately.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, IPPROTO_SCTP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(src) = src {
        // A raw socket's bound address is the source of what it sends.
        socket2::SockRef::from(&fd).bind(&SocketAddr::new(src, 0).into())?;
    }
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as _,
        tv_usec: timeout.subsec_micros() as _,
    };
    // SAFETY: option values point to live locals of the sizes given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            recverr,
            (&one as *const libc::c_int).cast(),
            4,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    // Raw sockets take the port as 0; the SCTP header carries the real one.
    let sa = nix::sys::socket::SockaddrStorage::from(SocketAddr::new(dst.ip(), 0));
    nix::sys::socket::connect(fd.as_raw_fd(), &sa).map_err(std::io::Error::from)?;
    let packet = sctp_init(src_port, dst.port());
    nix::sys::socket::send(fd.as_raw_fd(), &packet, nix::sys::socket::MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    loop {
        match nix::sys::socket::recv(
            fd.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            // A raw socket also receives SCTP packets *from* the peer (its own
            // concurrent INIT to us): only an answer to our INIT counts.
            Ok(n) if is_answer_to_init(&buf[..n], dst, src_port) => {
                return Ok(Outcome::Reply("SCTP answer".into()))
            }
            Ok(_) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::ErrorKind::TimedOut.into());
                }
                set_rcvtimeo(&fd, left);
            }
            Err(nix::Error::ENOPROTOOPT) => {
                return Ok(Outcome::Unreachable(
                    "ICMP protocol unreachable (peer kernel has no SCTP)",
                ))
            }
            Err(nix::Error::EPROTO) => {
                return Ok(Outcome::Unreachable(
                    "ICMPv6 unrecognized next header (peer kernel has no SCTP)",
                ))
            }
            Err(nix::Error::ECONNREFUSED) => return Ok(Outcome::Refused),
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

fn set_rcvtimeo(fd: &OwnedFd, t: Duration) {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as _,
        tv_usec: t.subsec_micros().max(1) as _,
    };
    // SAFETY: the option value points to a live timeval of the size given.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
}

/// Whether `data` (as a raw socket returns it: with the IPv4 header, without an IPv6
/// one) is an SCTP INIT-ACK (2) or ABORT (6) from `dst`'s port to `src_port`.
fn is_answer_to_init(data: &[u8], dst: SocketAddr, src_port: u16) -> bool {
    let sctp = match dst {
        SocketAddr::V4(_) => {
            let Some(ihl) = data.first().map(|b| usize::from(b & 0x0f) * 4) else {
                return false;
            };
            data.get(ihl..).unwrap_or_default()
        }
        SocketAddr::V6(_) => data,
    };
    sctp.len() >= 13
        && u16::from_be_bytes([sctp[0], sctp[1]]) == dst.port()
        && u16::from_be_bytes([sctp[2], sctp[3]]) == src_port
        && matches!(sctp[12], 2 | 6)
}

/// An SCTP packet holding one INIT chunk (RFC 9260 §3.3.2), checksummed with CRC32c.
fn sctp_init(src_port: u16, dst_port: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(32);
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // verification tag: 0 for INIT
    p.extend_from_slice(&0u32.to_be_bytes()); // checksum, filled below
    p.push(1); // chunk type INIT
    p.push(0); // flags
    p.extend_from_slice(&20u16.to_be_bytes()); // chunk length
    p.extend_from_slice(&0x5041_4c49u32.to_be_bytes()); // initiate tag ("PALI"), non-zero
    p.extend_from_slice(&65_535u32.to_be_bytes()); // a_rwnd
    p.extend_from_slice(&1u16.to_be_bytes()); // outbound streams
    p.extend_from_slice(&1u16.to_be_bytes()); // inbound streams
    p.extend_from_slice(&1u32.to_be_bytes()); // initial TSN
    let crc = crc32c(&p);
    // SCTP stores CRC32c little-endian in the header (RFC 9260 appendix A).
    p[8..12].copy_from_slice(&crc.to_le_bytes());
    p
}

fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sctp_source_ports_are_new_for_every_association_and_dynamic() {
        let ports: Vec<u16> = (0..2000).map(|_| next_sctp_port()).collect();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "a port repeated: {ports:?}");
        assert!(ports.iter().all(|&p| p >= SCTP_PORT_BASE), "{ports:?}");
    }

    #[test]
    fn sctp_init_is_sent_from_its_port_and_only_answers_to_that_port_count() {
        let dst: SocketAddr = "[fd00::2]:132".parse().unwrap();
        let init = sctp_init(50_000, 132);
        assert_eq!(&init[0..4], &[0xc3, 0x50, 0x00, 0x84], "ports 50000 -> 132");
        // An ABORT from the peer's port 132 back to 50000 (IPv6: no IP header).
        let mut abort = vec![0x00, 0x84, 0xc3, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 0, 4];
        assert!(is_answer_to_init(&abort, dst, 50_000));
        assert!(
            !is_answer_to_init(&abort, dst, 50_001),
            "another probe's answer"
        );
        abort[12] = 1;
        assert!(
            !is_answer_to_init(&abort, dst, 50_000),
            "an INIT is not an answer"
        );
    }

    /// Real packets (needs root for raw sockets; loopback only): two SCTP probes
    /// send six INITs (three attempts each), from six different source ports.
    #[test]
    fn sctp_probes_open_a_new_association_each_on_the_wire() {
        use palisade_testkit::{require, Need};
        if !require(&[Need::Root]) {
            return;
        }
        // Capture INITs to one port on loopback. While this raw socket takes them,
        // the kernel sends no protocol unreachable, so the probes time out: only
        // the INITs matter here.
        // SAFETY: plain socket(2); the fd is owned immediately.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, IPPROTO_SCTP) };
        assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
        // SAFETY: fd is a fresh, valid descriptor we own.
        let cap = unsafe { OwnedFd::from_raw_fd(fd) };
        set_rcvtimeo(&cap, Duration::from_millis(200));
        let port = 40_000 + (std::process::id() % 9_000) as u16;
        let dst: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..2 {
            let (verdict, _) = probe_one(dst, Protocol::Sctp, Duration::from_millis(300));
            assert_eq!(
                verdict,
                Verdict::Deny,
                "nothing answers on the capture port"
            );
        }
        let mut sources = Vec::new();
        let mut buf = [0u8; 1500];
        while let Ok(n) = nix::sys::socket::recv(
            cap.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            let ihl = usize::from(buf[0] & 0x0f) * 4;
            let sctp = &buf[ihl..n];
            if sctp.len() >= 13 && u16::from_be_bytes([sctp[2], sctp[3]]) == port && sctp[12] == 1 {
                sources.push(u16::from_be_bytes([sctp[0], sctp[1]]));
            }
        }
        let distinct: std::collections::BTreeSet<_> = sources.iter().collect();
        assert_eq!(sources.len(), 6, "INITs captured: {sources:?}");
        assert_eq!(
            distinct.len(),
            6,
            "one association per attempt: {sources:?}"
        );
    }

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn report_serializes_in_simulate_format() {
        let r = ProbeReport {
            port: 80,
            protocol: "TCP".into(),
            results: vec![ProbeResult {
                from: "x/a".into(),
                to: "y/b".into(),
                verdict: Verdict::Deny,
                reason: "timeout after 1000 ms".into(),
            }],
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"port":80,"protocol":"TCP","results":[
                {"from":"x/a","to":"y/b","verdict":"deny","reason":"timeout after 1000 ms"}]})
        );
    }
}
