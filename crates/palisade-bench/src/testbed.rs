//! The test bed: three network namespaces (node, client, server) joined by two veth
//! pairs, routed through the node namespace, and the RAII guard that removes them.
//!
//! ```text
//!  client ns                 node ns (ip_forward=1)                 server ns
//!  c0 10.77.1.2/24  <--->  nc 10.77.1.1/24 | ns 10.77.2.1/24  <--->  s0 10.77.2.2/24
//!     10.77.1.3/24 (the denied source)
//! ```
//!
//! Nothing is created in, or routed to, the root namespace: the veth pairs are created
//! directly inside the node namespace (`ip -n NODE link add ... peer ... netns CLIENT`),
//! and the root namespace's iptables and sysctls are never touched. Deleting the node
//! namespace removes both veth pairs, the iptables rules and any TC/TCX attachment.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use crate::BenchError;

/// The client's address: the source of every measured flow.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 2);
/// A second client address no rule allows: the source of the denied-flow probe.
pub const DENIED_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 3);
/// The server's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 2);
/// The node's address on the client link (the client's gateway).
const NODE_CLIENT_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The node's address on the server link (the server's gateway).
const NODE_SERVER_SIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 2, 1);
/// Host-side (node namespace) interface of the client's veth pair.
pub const NODE_IF_CLIENT: &str = "nc";
/// Host-side (node namespace) interface of the server's veth pair: where the server
/// pod's ingress policy is enforced (iptables `-o ns`, Palisade `to_pod`).
pub const NODE_IF_SERVER: &str = "ns";

/// The three namespaces. Dropping it deletes them (and with them everything inside).
#[derive(Debug)]
pub struct TestBed {
    /// Node namespace name (holds the host-side veths, iptables and BPF attachments).
    pub node: String,
    /// Client namespace name.
    pub client: String,
    /// Server namespace name.
    pub server: String,
    created: Vec<String>,
}

impl TestBed {
    /// Creates the namespaces, links, addresses and routes. Names carry the process id
    /// and `tag` so that concurrent runs (and tests) never collide.
    pub fn create(tag: &str) -> Result<Self, BenchError> {
        let pid = std::process::id();
        let mut bed = TestBed {
            node: format!("pbench-{pid}-{tag}-node"),
            client: format!("pbench-{pid}-{tag}-cli"),
            server: format!("pbench-{pid}-{tag}-srv"),
            created: Vec::new(),
        };
        for ns in [bed.node.clone(), bed.client.clone(), bed.server.clone()] {
            run("ip", &["netns", "add", &ns])?;
            bed.created.push(ns);
        }
        let (node, cli, srv) = (bed.node.clone(), bed.client.clone(), bed.server.clone());
        let cidr = |ip: Ipv4Addr| format!("{ip}/24");
        let steps: Vec<Vec<String>> = vec![
            strs(&[
                "-n",
                &node,
                "link",
                "add",
                NODE_IF_CLIENT,
                "type",
                "veth",
                "peer",
                "name",
                "c0",
                "netns",
                &cli,
            ]),
            strs(&[
                "-n",
                &node,
                "link",
                "add",
                NODE_IF_SERVER,
                "type",
                "veth",
                "peer",
                "name",
                "s0",
                "netns",
                &srv,
            ]),
            strs(&[
                "-n",
                &node,
                "addr",
                "add",
                &cidr(NODE_CLIENT_SIDE_IP),
                "dev",
                NODE_IF_CLIENT,
            ]),
            strs(&[
                "-n",
                &node,
                "addr",
                "add",
                &cidr(NODE_SERVER_SIDE_IP),
                "dev",
                NODE_IF_SERVER,
            ]),
            strs(&["-n", &cli, "addr", "add", &cidr(CLIENT_IP), "dev", "c0"]),
            strs(&[
                "-n",
                &cli,
                "addr",
                "add",
                &cidr(DENIED_CLIENT_IP),
                "dev",
                "c0",
            ]),
            strs(&["-n", &srv, "addr", "add", &cidr(SERVER_IP), "dev", "s0"]),
            strs(&["-n", &node, "link", "set", "lo", "up"]),
            strs(&["-n", &cli, "link", "set", "lo", "up"]),
            strs(&["-n", &srv, "link", "set", "lo", "up"]),
            strs(&["-n", &node, "link", "set", NODE_IF_CLIENT, "up"]),
            strs(&["-n", &node, "link", "set", NODE_IF_SERVER, "up"]),
            strs(&["-n", &cli, "link", "set", "c0", "up"]),
            strs(&["-n", &srv, "link", "set", "s0", "up"]),
            strs(&[
                "-n",
                &cli,
                "route",
                "add",
                "default",
                "via",
                &NODE_CLIENT_SIDE_IP.to_string(),
            ]),
            strs(&[
                "-n",
                &srv,
                "route",
                "add",
                "default",
                "via",
                &NODE_SERVER_SIDE_IP.to_string(),
            ]),
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            run("ip", &args)?;
        }
        // Forwarding in the node namespace only (sysctls under net/ are per namespace).
        bed.exec(&node, "sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
        // The connection-rate client closes first, so its side collects TIME_WAIT
        // sockets; reuse them (timestamps make this safe) so that a run of tens of
        // thousands of connections never exhausts the client's ephemeral ports.
        bed.exec(&cli, "sysctl", &["-qw", "net.ipv4.tcp_tw_reuse=1"])?;
        bed.exec(
            &cli,
            "sysctl",
            &["-qw", "net.ipv4.ip_local_port_range=10000 65000"],
        )?;
        Ok(bed)
    }

    /// Runs `program args...` inside namespace `ns` (`ip netns exec`).
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<(), BenchError> {
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `program args...` inside `ns` with `input` on stdin.
    pub fn exec_with_input(
        &self,
        ns: &str,
        program: &str,
        args: &[&str],
        input: &str,
    ) -> Result<(), BenchError> {
        use std::io::Write;
        let mut full = vec!["netns", "exec", ns, program];
        full.extend_from_slice(args);
        let cmd = format!("ip {}", full.join(" "));
        let mut child = Command::new("ip")
            .args(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| BenchError::Spawn {
                cmd: cmd.clone(),
                source: e,
            })?;
        let write_result = child
            .stdin
            .take()
            .map(|mut s| s.write_all(input.as_bytes()));
        let out = child.wait_with_output().map_err(|e| BenchError::Spawn {
            cmd: cmd.clone(),
            source: e,
        })?;
        if let Some(Err(e)) = write_result {
            return Err(BenchError::Spawn { cmd, source: e });
        }
        if !out.status.success() {
            return Err(BenchError::Command {
                cmd,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        for ns in self.created.drain(..).rev() {
            // Best effort: a failure here must not hide the error that got us here.
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Moves the *calling thread* into namespace `ns` and pins it to `cpu`.
///
/// Only the calling thread changes namespace (setns(2) on a thread of a multithreaded
/// process affects that thread alone); sockets it creates afterwards belong to `ns`.
/// Call it first thing in a freshly spawned thread that exits when its work is done.
pub fn enter_netns_and_pin(ns: &str, cpu: Option<usize>) -> Result<(), BenchError> {
    let path = format!("/run/netns/{ns}");
    let f = File::open(&path).map_err(|e| BenchError::Netns {
        ns: ns.into(),
        source: e,
    })?;
    // SAFETY: plain syscall on a valid fd we own.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(BenchError::Netns {
            ns: ns.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    Ok(())
}

/// Pins the calling thread to one CPU (sched_setaffinity(0, ...)).
fn pin_to_cpu(cpu: usize) -> Result<(), BenchError> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it for cpu < CPU_SETSIZE.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(BenchError::Affinity {
            cpu,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The CPUs to pin client and server threads to: two different online CPUs when the
/// machine has two or more, otherwise no pinning.
pub fn cpu_pair() -> (Option<usize>, Option<usize>) {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if n >= 2 {
        (Some(0), Some(1))
    } else {
        (None, None)
    }
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<(), BenchError> {
    let cmd = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BenchError::Spawn {
            cmd: cmd.clone(),
            source: e,
        })?;
    if !out.status.success() {
        return Err(BenchError::Command {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
