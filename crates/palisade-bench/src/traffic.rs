//! The traffic: small clients and servers of our own, each run as a pair of threads, the
//! server thread inside the server namespace and the client thread inside the client
//! namespace (setns on the thread), pinned to different CPUs.
//!
//! Every run is bounded in time (`duration`) and every blocking call has a timeout, so
//! a policy that drops the measured flow makes a run fail within a second instead of
//! hanging. Servers serve exactly the connections of their run and then exit.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::policy::{PORT_DENIED, PORT_TCP_CRR, PORT_TCP_RR, PORT_TCP_STREAM, PORT_UDP_RR};
use crate::testbed::{cpu_pair, enter_netns_and_pin, TestBed, DENIED_CLIENT_IP, SERVER_IP};
use crate::BenchError;

/// Payload of a request/response transaction, in bytes (each way).
const RR_PAYLOAD: usize = 64;
/// Write/read size of the bulk stream, in bytes.
const STREAM_CHUNK: usize = 128 * 1024;
/// How long any single blocking socket call may wait before the run is declared failed.
const IO_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an idle server wakes to check whether its run is over.
const SERVER_POLL: Duration = Duration::from_millis(50);
/// How long a probe waits for an answer before it calls the flow blocked.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// One measurement of one metric.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// The metric's value (µs per transaction, connections/s, or Gbit/s).
    pub value: f64,
    /// For the bulk stream only: CPU seconds (all CPUs, from /proc/stat) per GB moved.
    pub cpu_s_per_gb: Option<f64>,
    /// For the connection rate only: the median connection's duration in µs (connect,
    /// one byte each way, close), which preemption by other tenants barely moves.
    pub median_conn_us: Option<f64>,
}

/// Which server a run needs.
#[derive(Debug, Clone, Copy)]
enum ServerKind {
    UdpEcho,
    TcpEcho,
    TcpCrr,
    TcpSink,
}

/// Runs `client` in the client namespace against a server of `kind` in the server
/// namespace. The server thread stops when `client` returns (or fails).
fn with_server<T: Send + 'static>(
    bed: &TestBed,
    kind: ServerKind,
    client: impl FnOnce() -> Result<T, BenchError> + Send + 'static,
) -> Result<T, BenchError> {
    let (client_cpu, server_cpu) = cpu_pair();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), BenchError>>();
    let server_ns = bed.server.clone();
    let server_stop = stop.clone();
    let server = std::thread::Builder::new()
        .name("bench-server".into())
        .spawn(move || -> Result<(), BenchError> {
            enter_netns_and_pin(&server_ns, server_cpu)?;
            serve(kind, &server_stop, ready_tx)
        })
        .map_err(|e| BenchError::Io {
            what: "spawning server thread".into(),
            source: e,
        })?;
    let ready = ready_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| Err(BenchError::Traffic("server did not start".into())));
    if ready.is_err() {
        stop.store(true, Ordering::SeqCst);
        // The server's own error (bind, setns) says more than "did not start".
        server
            .join()
            .unwrap_or_else(|_| Err(BenchError::Traffic("server thread panicked".into())))?;
        return Err(ready
            .err()
            .unwrap_or_else(|| BenchError::Traffic("server did not start".into())));
    }
    let client_ns = bed.client.clone();
    let result = std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || -> Result<T, BenchError> {
            enter_netns_and_pin(&client_ns, client_cpu)?;
            client()
        })
        .map_err(|e| BenchError::Io {
            what: "spawning client thread".into(),
            source: e,
        })?
        .join()
        .unwrap_or_else(|_| Err(BenchError::Traffic("client thread panicked".into())));
    stop.store(true, Ordering::SeqCst);
    let served = server
        .join()
        .unwrap_or_else(|_| Err(BenchError::Traffic("server thread panicked".into())));
    let value = result?;
    served?;
    Ok(value)
}

fn serve(
    kind: ServerKind,
    stop: &AtomicBool,
    ready: mpsc::Sender<Result<(), BenchError>>,
) -> Result<(), BenchError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e| BenchError::Io { what, source: e }
    };
    match kind {
        ServerKind::UdpEcho => {
            let sock = UdpSocket::bind(SocketAddrV4::new(SERVER_IP, PORT_UDP_RR))
                .map_err(io("udp bind"))?;
            // Busy-polled, like the client (see `spin`).
            sock.set_nonblocking(true).map_err(io("udp nonblocking"))?;
            let _ = ready.send(Ok(()));
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                match sock.recv_from(&mut buf) {
                    Ok((n, peer)) => {
                        let _ = sock.send_to(&buf[..n], peer);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                    Err(e) => return Err(io("udp recv")(e)),
                }
            }
            Ok(())
        }
        ServerKind::TcpEcho | ServerKind::TcpSink | ServerKind::TcpCrr => {
            let port = match kind {
                ServerKind::TcpEcho => PORT_TCP_RR,
                ServerKind::TcpSink => PORT_TCP_STREAM,
                _ => PORT_TCP_CRR,
            };
            let listener =
                TcpListener::bind(SocketAddrV4::new(SERVER_IP, port)).map_err(io("tcp bind"))?;
            set_accept_timeout(&listener, SERVER_POLL)?;
            let _ = ready.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                let (mut conn, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(e) if is_timeout(&e) => continue,
                    Err(e) => return Err(io("tcp accept")(e)),
                };
                conn.set_read_timeout(Some(IO_TIMEOUT))
                    .map_err(io("tcp timeout"))?;
                conn.set_nodelay(true).map_err(io("tcp nodelay"))?;
                // A failed connection ends only that connection: the client reports
                // the failure of the run.
                let _ = match kind {
                    ServerKind::TcpEcho => echo_until_eof(&mut conn),
                    ServerKind::TcpSink => sink_until_eof(&mut conn),
                    _ => crr_once(&mut conn),
                };
            }
            Ok(())
        }
    }
}

fn echo_until_eof(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; RR_PAYLOAD];
    conn.set_nonblocking(true)?;
    loop {
        match spin(|| conn.read(&mut buf))? {
            0 => return Ok(()),
            // 64-byte replies never fill the send buffer, so the write does not block.
            n => conn.write_all(&buf[..n])?,
        }
    }
}

/// Busy-polls a non-blocking read until it returns data, an error, or [`IO_TIMEOUT`]
/// passes without data.
///
/// Request/response runs spin instead of sleeping in `recv`: on a virtual machine every
/// sleep-and-wake-up of a vCPU costs tens of microseconds of hypervisor scheduling
/// (measured here: a blocking 64-byte ping-pong over veth takes ~80 µs on an idle VM,
/// against ~45 µs when other load keeps the vCPUs awake), which would swamp the
/// per-packet cost of the datapaths being compared. sockperf and netperf offer the same
/// busy-poll mode for the same reason. Connection-rate and bulk runs still block.
fn spin(mut read: impl FnMut() -> std::io::Result<usize>) -> std::io::Result<usize> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        match read() {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no data before the deadline",
                    ));
                }
                std::hint::spin_loop();
            }
            other => return other,
        }
    }
}

fn sink_until_eof(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; STREAM_CHUNK];
    let mut total: u64 = 0;
    loop {
        match conn.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    // Tell the client how much arrived, so throughput counts delivered bytes.
    conn.write_all(&total.to_be_bytes())
}

fn crr_once(conn: &mut TcpStream) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    conn.read_exact(&mut b)?;
    conn.write_all(&b)?;
    // Wait for the client's close so the client, not the server, holds TIME_WAIT.
    let _ = conn.read(&mut b)?;
    Ok(())
}

/// Round-trip times of one request/response run.
///
/// The run's value is the *median* transaction, not the mean: on a shared machine some
/// transactions wait for a CPU another tenant holds, and those waits (tens to hundreds
/// of µs) say nothing about the datapath but dominate a mean.
struct RoundTrips {
    start: Instant,
    duration: Duration,
    ns: Vec<u32>,
}

impl RoundTrips {
    fn new(duration: Duration) -> Self {
        RoundTrips {
            start: Instant::now(),
            duration,
            ns: Vec::with_capacity(1 << 16),
        }
    }

    /// The start time of the next transaction, or `None` when the run is over.
    fn next_start(&self) -> Option<Instant> {
        let now = Instant::now();
        (now.duration_since(self.start) < self.duration).then_some(now)
    }

    fn done(&mut self, t0: Instant) {
        self.ns
            .push(t0.elapsed().as_nanos().min(u128::from(u32::MAX)) as u32);
    }

    fn median_us(&mut self) -> f64 {
        if self.ns.is_empty() {
            return f64::NAN;
        }
        let mid = self.ns.len() / 2;
        let (_, m, _) = self.ns.select_nth_unstable(mid);
        f64::from(*m) / 1e3
    }
}

/// Median request/response round-trip time in µs over `duration`, 64 bytes each way.
pub fn udp_rr(bed: &TestBed, duration: Duration) -> Result<Sample, BenchError> {
    with_server(bed, ServerKind::UdpEcho, move || {
        let io = |what: &'static str| {
            move |e| BenchError::Io {
                what: what.into(),
                source: e,
            }
        };
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(io("udp bind"))?;
        sock.connect(SocketAddrV4::new(SERVER_IP, PORT_UDP_RR))
            .map_err(io("udp connect"))?;
        sock.set_nonblocking(true).map_err(io("udp nonblocking"))?;
        let mut buf = [0u8; RR_PAYLOAD];
        let mut rtts = RoundTrips::new(duration);
        while let Some(t0) = rtts.next_start() {
            sock.send(&buf).map_err(io("udp send"))?;
            spin(|| sock.recv(&mut buf)).map_err(io("udp recv (reply lost or dropped)"))?;
            rtts.done(t0);
        }
        Ok(Sample {
            value: rtts.median_us(),
            cpu_s_per_gb: None,
            median_conn_us: None,
        })
    })
}

/// Median request/response round-trip time in µs over one TCP connection (TCP_NODELAY).
pub fn tcp_rr(bed: &TestBed, duration: Duration) -> Result<Sample, BenchError> {
    with_server(bed, ServerKind::TcpEcho, move || {
        let io = |what: &'static str| {
            move |e| BenchError::Io {
                what: what.into(),
                source: e,
            }
        };
        let mut s = connect(PORT_TCP_RR)?;
        let mut buf = [0u8; RR_PAYLOAD];
        let mut rtts = RoundTrips::new(duration);
        s.set_nonblocking(true).map_err(io("tcp nonblocking"))?;
        while let Some(t0) = rtts.next_start() {
            // 64-byte requests never fill the send buffer, so the write does not block.
            s.write_all(&buf).map_err(io("tcp send"))?;
            let mut got = 0;
            while got < RR_PAYLOAD {
                match spin(|| s.read(&mut buf[got..])).map_err(io("tcp recv"))? {
                    0 => return Err(io("tcp recv")(std::io::ErrorKind::UnexpectedEof.into())),
                    n => got += n,
                }
            }
            rtts.done(t0);
        }
        s.set_nonblocking(false).map_err(io("tcp blocking"))?;
        let _ = s.shutdown(Shutdown::Both);
        Ok(Sample {
            value: rtts.median_us(),
            cpu_s_per_gb: None,
            median_conn_us: None,
        })
    })
}

/// Connections per second: connect, one byte each way, close; one at a time.
pub fn tcp_crr(bed: &TestBed, duration: Duration) -> Result<Sample, BenchError> {
    with_server(bed, ServerKind::TcpCrr, move || {
        let io = |what: &'static str| {
            move |e| BenchError::Io {
                what: what.into(),
                source: e,
            }
        };
        let mut conns = RoundTrips::new(duration);
        let mut b = [1u8; 1];
        while let Some(t0) = conns.next_start() {
            let mut s = connect(PORT_TCP_CRR)?;
            s.write_all(&b).map_err(io("crr send"))?;
            s.read_exact(&mut b).map_err(io("crr recv"))?;
            drop(s);
            conns.done(t0);
        }
        Ok(Sample {
            value: conns.ns.len() as f64 / conns.start.elapsed().as_secs_f64(),
            cpu_s_per_gb: None,
            median_conn_us: Some(conns.median_us()),
        })
    })
}

/// Bulk TCP throughput in Gbit/s (delivered bytes), with CPU seconds per GB.
pub fn tcp_stream(bed: &TestBed, duration: Duration) -> Result<Sample, BenchError> {
    with_server(bed, ServerKind::TcpSink, move || {
        let io = |what: &'static str| {
            move |e| BenchError::Io {
                what: what.into(),
                source: e,
            }
        };
        let mut s = connect(PORT_TCP_STREAM)?;
        let buf = vec![0x5au8; STREAM_CHUNK];
        let cpu0 = busy_cpu_seconds()?;
        let start = Instant::now();
        while start.elapsed() < duration {
            s.write_all(&buf).map_err(io("stream send"))?;
        }
        s.shutdown(Shutdown::Write).map_err(io("stream shutdown"))?;
        let mut total = [0u8; 8];
        s.read_exact(&mut total).map_err(io("stream byte count"))?;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = busy_cpu_seconds()? - cpu0;
        let bytes = u64::from_be_bytes(total) as f64;
        Ok(Sample {
            value: bytes * 8.0 / elapsed / 1e9,
            cpu_s_per_gb: Some(cpu / (bytes / 1e9).max(1e-9)),
            median_conn_us: None,
        })
    })
}

fn connect(port: u16) -> Result<TcpStream, BenchError> {
    let addr = SocketAddr::V4(SocketAddrV4::new(SERVER_IP, port));
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| BenchError::Io {
        what: format!("tcp connect to {addr}"),
        source: e,
    })?;
    s.set_nodelay(true).map_err(|e| BenchError::Io {
        what: "tcp nodelay".into(),
        source: e,
    })?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| BenchError::Io {
            what: "tcp timeout".into(),
            source: e,
        })?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| BenchError::Io {
            what: "tcp timeout".into(),
            source: e,
        })?;
    Ok(s)
}

/// What the verification probes saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeResult {
    /// TCP from the client to a measured port connected and echoed.
    pub allowed_tcp: bool,
    /// UDP from the client to the measured port got its echo.
    pub allowed_udp: bool,
    /// TCP from the client to [`PORT_DENIED`] (which has a listener) connected.
    pub denied_port_tcp: bool,
    /// UDP from [`DENIED_CLIENT_IP`] to the measured port got its echo.
    pub denied_source_udp: bool,
}

/// Probes the allowed flows and the denied flows once.
pub fn probe(bed: &TestBed) -> Result<ProbeResult, BenchError> {
    let allowed_tcp = with_server(bed, ServerKind::TcpEcho, || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT_TCP_RR)),
            PROBE_TIMEOUT,
        )
        .and_then(|mut s| {
            s.set_read_timeout(Some(PROBE_TIMEOUT))?;
            s.write_all(b"x")?;
            let mut b = [0u8; 1];
            s.read_exact(&mut b)
        })
        .is_ok())
    })?;
    let udp_from = |src: std::net::Ipv4Addr| {
        move || -> Result<bool, BenchError> {
            let io = |e| BenchError::Io {
                what: "udp probe".into(),
                source: e,
            };
            let sock = UdpSocket::bind(SocketAddrV4::new(src, 0)).map_err(io)?;
            sock.set_read_timeout(Some(PROBE_TIMEOUT)).map_err(io)?;
            sock.send_to(b"probe", SocketAddrV4::new(SERVER_IP, PORT_UDP_RR))
                .map_err(io)?;
            let mut b = [0u8; 16];
            Ok(sock.recv_from(&mut b).is_ok())
        }
    };
    let allowed_udp = with_server(
        bed,
        ServerKind::UdpEcho,
        udp_from(crate::testbed::CLIENT_IP),
    )?;
    let denied_source_udp = with_server(bed, ServerKind::UdpEcho, udp_from(DENIED_CLIENT_IP))?;
    let denied_port_tcp = with_denied_port_listener(bed, || {
        Ok(TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(SERVER_IP, PORT_DENIED)),
            PROBE_TIMEOUT,
        )
        .is_ok())
    })?;
    Ok(ProbeResult {
        allowed_tcp,
        allowed_udp,
        denied_port_tcp,
        denied_source_udp,
    })
}

/// Runs `client` while a listener is open on [`PORT_DENIED`] in the server namespace,
/// so that "connected" means "the policy let the SYN through" rather than "refused".
fn with_denied_port_listener(
    bed: &TestBed,
    client: impl FnOnce() -> Result<bool, BenchError> + Send + 'static,
) -> Result<bool, BenchError> {
    let server_ns = bed.server.clone();
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let listener = std::thread::spawn(move || -> Result<(), BenchError> {
        enter_netns_and_pin(&server_ns, None)?;
        let l = TcpListener::bind(SocketAddrV4::new(SERVER_IP, PORT_DENIED)).map_err(|e| {
            BenchError::Io {
                what: "denied-port listener".into(),
                source: e,
            }
        })?;
        set_accept_timeout(&l, SERVER_POLL)?;
        let _ = tx.send(());
        while !stop2.load(Ordering::Relaxed) {
            let _ = l.accept();
        }
        Ok(())
    });
    let started = rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let client_ns = bed.client.clone();
    let result = if started {
        std::thread::spawn(move || {
            enter_netns_and_pin(&client_ns, None)?;
            client()
        })
        .join()
        .unwrap_or_else(|_| Err(BenchError::Traffic("probe thread panicked".into())))
    } else {
        Err(BenchError::Traffic(
            "denied-port listener did not start".into(),
        ))
    };
    stop.store(true, Ordering::SeqCst);
    listener
        .join()
        .unwrap_or_else(|_| Err(BenchError::Traffic("listener thread panicked".into())))?;
    result
}

/// SO_RCVTIMEO also bounds accept(2) on Linux; std has no setter for listeners.
fn set_accept_timeout(l: &TcpListener, t: Duration) -> Result<(), BenchError> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: valid fd, pointer to a properly sized timeval.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(BenchError::Io {
            what: "SO_RCVTIMEO on listener".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// Busy CPU time of the whole machine, in seconds, from the `cpu` line of /proc/stat:
/// user + nice + system + irq + softirq + steal (idle and iowait excluded). Softirq
/// matters here: veth forwarding and the policy run in softirq context.
fn busy_cpu_seconds() -> Result<f64, BenchError> {
    let stat = std::fs::read_to_string("/proc/stat").map_err(|e| BenchError::Io {
        what: "reading /proc/stat".into(),
        source: e,
    })?;
    let line = stat.lines().next().unwrap_or_default();
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if f.len() < 8 {
        return Err(BenchError::Traffic(format!(
            "unexpected /proc/stat line {line:?}"
        )));
    }
    let busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(busy as f64 / hz)
}
