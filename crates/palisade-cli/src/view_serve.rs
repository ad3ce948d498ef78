//! `palisade view --serve ADDR`: the page over HTTP on loopback, and one pair's
//! explain text on demand (`GET /explain?from=&to=&port=&protocol=`) for inputs too
//! big to embed every pair's text.
//!
//! Loopback only unless `--allow-remote`: the page shows every pod and policy of the
//! input, and nothing authenticates a visitor. One connection at a time, each bounded
//! in time and head size (as `palisade metrics --listen`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use anyhow::Context;
use palisade_policy::model::{Cluster, Protocol};

/// How long a client has to send its request head, and to take the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes of a request head read.
const MAX_HEAD_BYTES: u64 = 8 * 1024;

/// Refuses an address other hosts can reach, unless `allow_remote`.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), String> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(format!(
            "--serve {addr}: not a loopback address; the page shows every pod and policy of the input to whoever connects (use 127.0.0.1:PORT or [::1]:PORT, or pass --allow-remote)"
        ))
    }
}

/// Serves `html` at `/` until the process is stopped. Prints `serving http://ADDR/`
/// (the bound address: port 0 picks a free one) on stdout once listening.
pub fn serve(addr: SocketAddr, html: &str, cluster: &Cluster) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr().unwrap_or(addr);
    println!("serving http://{bound}/");
    std::io::stdout().flush()?;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                if let Err(e) = answer(stream, html, cluster) {
                    eprintln!("palisade view: {e:#}");
                }
            }
            Err(e) => {
                eprintln!("palisade view: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    Ok(())
}

/// `%XX` and `+` decoding of one query value.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str, key: &str) -> Option<String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| decode(v))
}

/// One pair's explain text, or a 400 message naming the bad parameter.
fn explain(q: &str, cluster: &Cluster) -> Result<String, String> {
    let need = |k: &str| query(q, k).ok_or_else(|| format!("missing query parameter {k}\n"));
    let (from, to) = (need("from")?, need("to")?);
    let port: u16 = need("port")?
        .parse()
        .map_err(|_| "port: not a number from 0 to 65535\n".to_string())?;
    let protocol: Protocol = need("protocol")?
        .parse()
        .map_err(|e| format!("protocol: {e}\n"))?;
    crate::view::explain_text(cluster, &from, &to, protocol, port).map_err(|e| format!("{e:#}\n"))
}

fn answer(stream: TcpStream, html: &str, cluster: &Cluster) -> anyhow::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new((&stream).take(MAX_HEAD_BYTES));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let text = "text/plain; charset=utf-8";
    let (status, kind, body) = match (method, path) {
        ("GET", "/") => ("200 OK", "text/html; charset=utf-8", html.to_string()),
        ("GET", "/explain") => match explain(q, cluster) {
            Ok(t) => ("200 OK", text, t),
            Err(e) => ("400 Bad Request", text, e),
        },
        ("GET", _) => (
            "404 Not Found",
            text,
            "only / and /explain are served\n".into(),
        ),
        _ => ("405 Method Not Allowed", text, "only GET\n".into()),
    };
    let mut out = &stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        assert!(check_address("127.0.0.1:8080".parse().unwrap(), false).is_ok());
        assert!(check_address("[::1]:8080".parse().unwrap(), false).is_ok());
        let e = check_address("0.0.0.0:8080".parse().unwrap(), false).unwrap_err();
        assert!(e.contains("not a loopback address"), "{e}");
        assert!(check_address("0.0.0.0:8080".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(query("from=a%2Fb&to=c+d", "from").as_deref(), Some("a/b"));
        assert_eq!(query("from=a%2Fb&to=c+d", "to").as_deref(), Some("c d"));
        assert_eq!(query("from=x", "to"), None);
        assert_eq!(decode("100%"), "100%");
    }
}
