//! A loopback TCP forwarder that counts what the upstream sends.
//!
//! Counting at the TCP level (TLS records, HTTP chunk framing and all) measures what
//! the API server really puts on the wire for one agent; kube-rs exposes no byte
//! counter of its own, and counting decoded objects would under-report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A running forwarder; dropping it stops accepting (open connections end with it).
pub struct CountingProxy {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingProxy {
    /// Listens on 127.0.0.1 (a port the kernel picks) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicU64::new(0));
        let counter = down.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        forward(client, server, counter).await;
                    }
                });
            }
        });
        Ok(CountingProxy { addr, down, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Bytes the upstream has sent through this forwarder so far.
    pub fn bytes_down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

async fn forward(client: TcpStream, server: TcpStream, down: Arc<AtomicU64>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                down.fetch_add(n as u64, Ordering::Relaxed);
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = cw.shutdown().await;
    up.abort();
}
