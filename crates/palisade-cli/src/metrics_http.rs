//! `palisade metrics --listen ADDR`: the agent's Prometheus metrics over HTTP, for a
//! scraper that cannot reach the agent's unix socket. The agent itself opens no TCP
//! port; this small server runs beside it (the chart's `metrics` container) and asks
//! the agent for fresh metrics on every `GET /metrics`.
//!
//! One connection at a time (a Prometheus server scrapes a target sequentially), each
//! bounded in time and size, so a stuck or hostile client delays the next scrape by at
//! most [`IO_TIMEOUT`] and cannot grow memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;

/// How long a client has to send its request head, and to take the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of a request head read (request line and headers); more is refused.
const MAX_HEAD_BYTES: u64 = 8 * 1024;

/// Serves until the process is stopped; fails only if `addr` cannot be bound.
pub fn serve(addr: SocketAddr, socket: &Path) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    eprintln!(
        "palisade metrics: serving GET /metrics on {bound} from {}",
        socket.display()
    );
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, socket) {
                    eprintln!("palisade metrics: {e:#}");
                }
            }
            Err(e) => {
                // EMFILE and the like: say so and go on, rather than exit the container.
                eprintln!("palisade metrics: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

fn answer(stream: TcpStream, socket: &Path) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(MAX_HEAD_BYTES));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Read the headers up to the blank line (their content is not needed).
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match crate::inspect::call(socket, &palisade_agent::api::Metrics) {
            Ok(v) => ("200 OK", v.data),
            Err(e) => ("503 Service Unavailable", format!("{e:#}\n")),
        },
        ("GET", _) => ("404 Not Found", "only /metrics is served\n".to_owned()),
        _ => ("405 Method Not Allowed", "only GET\n".to_owned()),
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()?;
    Ok(())
}
