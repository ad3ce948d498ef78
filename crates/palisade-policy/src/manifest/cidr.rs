//! CIDR parsing for `ipBlock` and `networks`.
//!
//! Decision on non-canonical CIDRs (`10.0.0.1/24`): **accept, truncate to the network
//! (`10.0.0.0/24`) and warn**. This is what API servers do by default: before 1.33 they
//! accepted such values silently, and since 1.33 (KEP-4858) they accept them with a
//! warning unless the `StrictIPCIDRValidation` gate is on. Rejecting would make us refuse
//! policies a real cluster enforces. A value without a prefix length (`10.0.0.1`), with
//! IPv4 leading zeros (`010.0.0.1/8`) or otherwise unparsable is rejected.

use ipnet::IpNet;

use super::error::Problems;

/// Parses `s` as a CIDR at `field`. Records an error and returns `None` if it is not
/// one; records a warning if it had host bits set.
pub(crate) fn parse(s: &str, field: &str, p: &mut Problems) -> Option<IpNet> {
    let net: IpNet = match s.parse() {
        Ok(n) => n,
        Err(_) => {
            p.error(
                field,
                format!("invalid CIDR {s:?}: must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)"),
            );
            return None;
        }
    };
    let trunc = net.trunc();
    if trunc != net {
        p.warn(
            field,
            format!("non-standard CIDR value {s:?} will be treated as {trunc}"),
        );
    }
    Some(trunc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_truncated_with_a_warning_or_rejected() {
        let cases: &[(&str, &str, Option<&str>, bool)] = &[
            (
                "a canonical v4 block parses",
                "10.0.0.0/8",
                Some("10.0.0.0/8"),
                false,
            ),
            (
                "host bits are cleared with a warning",
                "10.0.0.1/24",
                Some("10.0.0.0/24"),
                true,
            ),
            (
                "a canonical v6 block parses",
                "fd00:10:244::/64",
                Some("fd00:10:244::/64"),
                false,
            ),
            (
                "v6 host bits are cleared with a warning",
                "fd00::1/64",
                Some("fd00::/64"),
                true,
            ),
            ("a bare address is rejected", "10.0.0.1", None, false),
            ("a prefix too long is rejected", "10.0.0.0/33", None, false),
            ("garbage is rejected", "ten/8", None, false),
        ];
        for (rule, s, want, warns) in cases {
            let mut p = Problems::default();
            let got = parse(s, "f", &mut p).map(|n| n.to_string());
            assert_eq!(got.as_deref(), *want, "{rule}");
            assert_eq!(want.is_none(), !p.errors.is_empty(), "{rule}");
            assert_eq!(*warns, !p.warnings.is_empty(), "{rule}");
        }
    }
}
