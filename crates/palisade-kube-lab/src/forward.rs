//! A loopback TCP forwarder into a network namespace: the lab's API server listens
//! only inside its own namespace, and the CLI, tests and the lab kubelets in the root
//! namespace reach it through `127.0.0.1:PORT`. The listening socket is created in
//! the root namespace (by the caller); the upstream sockets are opened by a thread
//! that has joined the API server's namespace (a socket stays in the namespace it was
//! created in), so the root namespace gets no address, route or rule: only a
//! loopback listener. TLS passes through untouched (the API server's certificate
//! names 127.0.0.1).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use crate::Error;

/// How long connecting upstream may take before the client's connection is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts connections on `listener` forever; each one is joined to a new
/// connection to `upstream` opened inside the network namespace at `netns`.
/// Returns only on an error setting up or accepting.
pub fn serve(listener: TcpListener, netns: &Path, upstream: SocketAddr) -> Result<(), Error> {
    let ns = File::open(netns).map_err(|e| Error::io(netns, e))?;
    let where_ = netns.to_path_buf();
    let acceptor = std::thread::spawn(move || -> Result<(), Error> {
        // SAFETY: setns(2) on an fd we own; it changes only this thread's namespace
        // (and that of threads it spawns from now on).
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::io(&where_, std::io::Error::last_os_error()));
        }
        loop {
            let (client, _) = listener
                .accept()
                .map_err(|e| Error::io("forwarder accept", e))?;
            match TcpStream::connect_timeout(&upstream, CONNECT_TIMEOUT) {
                Ok(up) => splice(client, up),
                // The API server is down (restarting): the client sees a reset, as
                // it would connecting to the address directly.
                Err(e) => eprintln!("forwarder: connecting to {upstream}: {e}"),
            }
        }
    });
    acceptor
        .join()
        .unwrap_or_else(|_| Err(Error::io("forwarder", std::io::Error::other("panicked"))))
}

/// Copies both ways on two threads; each direction's end is passed on as a
/// half-close, so HTTP/2 and watch streams end as they would directly.
fn splice(a: TcpStream, b: TcpStream) {
    let (Ok(a2), Ok(b2)) = (a.try_clone(), b.try_clone()) else {
        return;
    };
    std::thread::spawn(move || pump(a, b2));
    std::thread::spawn(move || pump(b, a2));
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
