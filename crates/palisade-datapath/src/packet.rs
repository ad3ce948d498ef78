//! A small frame builder for `BPF_PROG_TEST_RUN` (tests, differential test,
//! benchmark). Checksums are left zero: the TC programs do not verify them.

use std::net::IpAddr;

/// Transport part of a test packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L4 {
    /// TCP with a flags byte (FIN=1 SYN=2 RST=4 PSH=8 ACK=16).
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flags.
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// SCTP (common header only).
    Sctp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6): type, code, identifier (echo), and for
    /// errors the inner IP packet (see [`Packet::ip_bytes`]).
    Icmp {
        /// Type.
        ty: u8,
        /// Code.
        code: u8,
        /// Echo identifier.
        id: u16,
        /// Inner packet of an error.
        inner: Vec<u8>,
    },
    /// Any other IP protocol, 8 bytes of payload.
    Other(u8),
}

/// Fragmentation of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frag {
    /// Identification (IPv4 uses the low 16 bits).
    pub id: u32,
    /// Offset in 8-byte units.
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
}

/// A test packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Source.
    pub src: IpAddr,
    /// Destination (same family as src).
    pub dst: IpAddr,
    /// Transport.
    pub l4: L4,
    /// Fragment header / flags.
    pub frag: Option<Frag>,
    /// IPv6 extension headers before the fragment header and L4 (next-header values 0, 43, 60).
    pub v6_ext: Vec<u8>,
    /// IPv4 options, in 4-byte words (0..=10).
    pub v4_option_words: u8,
}

impl Packet {
    /// A packet without fragments, options or extension headers.
    pub fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Self {
            src,
            dst,
            l4,
            frag: None,
            v6_ext: Vec::new(),
            v4_option_words: 0,
        }
    }

    /// TCP shorthand.
    pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Self {
        Self::new(
            src.parse().expect("src"),
            dst.parse().expect("dst"),
            L4::Tcp {
                sport,
                dport,
                flags,
            },
        )
    }

    /// UDP shorthand.
    pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Self {
        Self::new(
            src.parse().expect("src"),
            dst.parse().expect("dst"),
            L4::Udp { sport, dport },
        )
    }

    fn proto(&self) -> u8 {
        match &self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
            L4::Icmp { .. } => {
                if self.src.is_ipv4() {
                    1
                } else {
                    58
                }
            }
            L4::Other(p) => *p,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        match &self.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut b = vec![0u8; 20];
                b[0..2].copy_from_slice(&sport.to_be_bytes());
                b[2..4].copy_from_slice(&dport.to_be_bytes());
                b[12] = 5 << 4;
                b[13] = *flags;
                b
            }
            L4::Udp { sport, dport } => {
                let mut b = vec![0u8; 8];
                b[0..2].copy_from_slice(&sport.to_be_bytes());
                b[2..4].copy_from_slice(&dport.to_be_bytes());
                b[4..6].copy_from_slice(&8u16.to_be_bytes());
                b
            }
            L4::Sctp { sport, dport } => {
                let mut b = vec![0u8; 12];
                b[0..2].copy_from_slice(&sport.to_be_bytes());
                b[2..4].copy_from_slice(&dport.to_be_bytes());
                b
            }
            L4::Icmp {
                ty,
                code,
                id,
                inner,
            } => {
                let mut b = vec![*ty, *code, 0, 0];
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[0, 1]);
                b.extend_from_slice(inner);
                b
            }
            L4::Other(_) => vec![0u8; 8],
        }
    }

    /// The IP packet (no Ethernet header).
    pub fn ip_bytes(&self) -> Vec<u8> {
        let payload = match self.frag {
            // A later fragment carries no transport header: just payload bytes.
            Some(f) if f.offset > 0 => vec![0xabu8; 16],
            _ => self.l4_bytes(),
        };
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let ihl = 20 + 4 * usize::from(self.v4_option_words);
                let mut b = vec![0u8; ihl];
                b[0] = 0x40 | (ihl / 4) as u8;
                b[2..4].copy_from_slice(&((ihl + payload.len()) as u16).to_be_bytes());
                if let Some(f) = self.frag {
                    b[4..6].copy_from_slice(&(f.id as u16).to_be_bytes());
                    let fo = f.offset & 0x1fff | if f.more { 0x2000 } else { 0 };
                    b[6..8].copy_from_slice(&fo.to_be_bytes());
                }
                b[8] = 64;
                b[9] = self.proto();
                b[12..16].copy_from_slice(&s.octets());
                b[16..20].copy_from_slice(&d.octets());
                for o in &mut b[20..] {
                    *o = 1; // NOP options
                }
                b.extend_from_slice(&payload);
                b
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut ext = Vec::new();
                let mut chain: Vec<u8> = self.v6_ext.clone();
                if self.frag.is_some() {
                    chain.push(44);
                }
                for (i, &h) in chain.iter().enumerate() {
                    let next = chain.get(i + 1).copied().unwrap_or_else(|| self.proto());
                    if h == 44 {
                        let f = self.frag.expect("frag");
                        let fo = (f.offset << 3) | u16::from(f.more);
                        ext.extend_from_slice(&[next, 0]);
                        ext.extend_from_slice(&fo.to_be_bytes());
                        ext.extend_from_slice(&f.id.to_be_bytes());
                    } else {
                        // 8-byte option header: next, len 0, PadN.
                        ext.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
                    }
                }
                let first = chain.first().copied().unwrap_or_else(|| self.proto());
                let mut b = vec![0u8; 40];
                b[0] = 0x60;
                b[4..6].copy_from_slice(&((ext.len() + payload.len()) as u16).to_be_bytes());
                b[6] = first;
                b[7] = 64;
                b[8..24].copy_from_slice(&s.octets());
                b[24..40].copy_from_slice(&d.octets());
                b.extend_from_slice(&ext);
                b.extend_from_slice(&payload);
                b
            }
            _ => panic!("mixed address families"),
        }
    }

    /// The Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let ethertype: u16 = if self.src.is_ipv4() { 0x0800 } else { 0x86dd };
        let mut f = vec![0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&self.ip_bytes());
        f
    }
}

/// An ARP request frame.
pub fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0u8; 20]);
    f
}
