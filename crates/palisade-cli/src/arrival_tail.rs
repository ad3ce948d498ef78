//! Reading a pod server's arrival lines as they are appended, for the benchmarks that
//! poll receivers every few milliseconds.
//!
//! A receiver of 1 ms senders logs a thousand lines a second; re-reading the whole
//! file at every poll ([`palisade_lab::sender::arrivals`]) costs time that grows with
//! the run and competes for the CPUs with the agents being measured. A tail reads each
//! byte once.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use palisade_lab::sender::Arrival;

/// One log file, read from where the last read stopped.
#[derive(Debug)]
pub struct ArrivalTail {
    path: PathBuf,
    offset: u64,
    /// The end of the file after its last newline: a line still being written.
    partial: String,
}

impl ArrivalTail {
    /// A tail of `path` from its start (the file may not exist yet).
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            offset: 0,
            partial: String::new(),
        }
    }

    /// The arrival lines appended since the last call (other lines are skipped: a
    /// server also logs its start). A file that cannot be read yet yields none.
    pub fn read_new(&mut self) -> Vec<Arrival> {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_end(&mut buf).is_err() {
            return Vec::new();
        }
        self.offset += buf.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        let complete = match self.partial.rfind('\n') {
            Some(i) => {
                let rest = self.partial.split_off(i + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => return Vec::new(),
        };
        complete.lines().filter_map(Arrival::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(seq: u64, ms: u128) -> String {
        format!(
            "arrival proto=UDP port=7000 from=10.244.1.3 identity=ns/a seq={seq} unix_ms={ms}\n"
        )
    }

    #[test]
    fn each_line_is_returned_once_and_a_half_written_line_waits_for_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod.log");
        let mut tail = ArrivalTail::new(path.clone());
        assert!(tail.read_new().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        write!(f, "server ready\n{}", line(0, 10)).unwrap();
        let whole = line(1, 11);
        let (head, rest) = whole.split_at(20);
        f.write_all(head.as_bytes()).unwrap();
        let got: Vec<u64> = tail.read_new().iter().map(|a| a.seq).collect();
        assert_eq!(got, vec![0]);
        assert!(tail.read_new().is_empty(), "nothing new");
        f.write_all(rest.as_bytes()).unwrap();
        f.write_all(line(2, 12).as_bytes()).unwrap();
        let got: Vec<(u64, u128)> = tail.read_new().iter().map(|a| (a.seq, a.unix_ms)).collect();
        assert_eq!(got, vec![(1, 11), (2, 12)]);
    }
}
