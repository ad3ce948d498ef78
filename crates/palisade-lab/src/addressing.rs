//! Pod addressing: which IPAM each pod gets and which gateway each subnet uses.
//!
//! - A pod whose manifest has `status.podIP(s)` keeps exactly those addresses (static
//!   IPAM), so the lab's packets carry the addresses the policy core resolves from the
//!   manifests. Its prefix is the lab subnet if the address is inside it, otherwise
//!   the /24 (IPv4) or /64 (IPv6) around it.
//! - Any other pod gets addresses from host-local IPAM in the lab subnets, one per
//!   family, with its store under the lab's state directory. Static addresses inside
//!   the lab subnet are pre-reserved in that store (host-local keeps one file per
//!   allocated address, named by the address), so host-local never hands them out.
//!
//! With ptp every subnet needs a gateway address, which lives (as a /32 or /128) on
//! each host-side veth of that subnet. The gateway is the lowest host address of the
//! subnet that no pod uses, chosen once and remembered in the lab state so later pods
//! agree with earlier ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The lab's default IPv4 pod subnet (the kind/kubeadm default range's first /24).
pub const DEFAULT_SUBNET_V4: &str = "10.244.0.0/24";
/// The lab's default IPv6 pod subnet (a ULA /64).
pub const DEFAULT_SUBNET_V6: &str = "fd00:10:244::/64";

/// Addressing errors; none is retryable (they are conflicts in the pod set).
#[derive(Debug, thiserror::Error)]
pub enum AddressingError {
    /// A pod's static address equals a gateway chosen earlier.
    #[error("pod address {ip} is already the gateway of {subnet}")]
    GatewayClash {
        /// The address.
        ip: IpAddr,
        /// Its subnet.
        subnet: IpNet,
    },
    /// Every host address of a subnet is taken.
    #[error("no free gateway address in {0}")]
    Exhausted(IpNet),
    /// Reserving a static address in the host-local store failed.
    #[error("reserving {ip} in {dir}")]
    Reserve {
        /// The address.
        ip: IpAddr,
        /// The store.
        dir: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The lab's address plan: subnets and gateways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressPlan {
    /// Subnet for host-local IPv4 addresses.
    pub subnet_v4: Ipv4Net,
    /// Subnet for host-local IPv6 addresses; `None` makes dynamic pods IPv4-only.
    pub subnet_v6: Option<Ipv6Net>,
    /// Gateway chosen for each subnet in use.
    pub gateways: BTreeMap<IpNet, IpAddr>,
}

impl Default for AddressPlan {
    fn default() -> Self {
        AddressPlan {
            subnet_v4: DEFAULT_SUBNET_V4.parse().expect("valid constant"),
            subnet_v6: Some(DEFAULT_SUBNET_V6.parse().expect("valid constant")),
            gateways: BTreeMap::new(),
        }
    }
}

impl AddressPlan {
    /// The subnet a static address is configured with.
    pub fn subnet_for(&self, ip: IpAddr) -> IpNet {
        match ip {
            IpAddr::V4(v4) if self.subnet_v4.contains(&v4) => self.subnet_v4.into(),
            IpAddr::V6(v6) if self.subnet_v6.is_some_and(|s| s.contains(&v6)) => {
                self.subnet_v6.expect("checked").into()
            }
            IpAddr::V4(v4) => Ipv4Net::new(v4, 24).expect("24 is valid").trunc().into(),
            IpAddr::V6(v6) => Ipv6Net::new(v6, 64).expect("64 is valid").trunc().into(),
        }
    }

    /// The gateway of `subnet`, choosing it now (avoiding `taken`) if it has none.
    pub fn gateway(
        &mut self,
        subnet: IpNet,
        taken: &BTreeSet<IpAddr>,
    ) -> Result<IpAddr, AddressingError> {
        if let Some(gw) = self.gateways.get(&subnet) {
            return Ok(*gw);
        }
        let gw = subnet
            .hosts()
            .take(4096)
            .find(|a| !taken.contains(a) && *a != subnet.network())
            .ok_or(AddressingError::Exhausted(subnet))?;
        self.gateways.insert(subnet, gw);
        Ok(gw)
    }

    /// Fails if `ip` is the gateway of its subnet.
    pub fn check_not_gateway(&self, ip: IpAddr) -> Result<(), AddressingError> {
        let subnet = self.subnet_for(ip);
        match self.gateways.get(&subnet) {
            Some(gw) if *gw == ip => Err(AddressingError::GatewayClash { ip, subnet }),
            _ => Ok(()),
        }
    }

    /// `ipam` for a pod with fixed addresses.
    pub fn static_ipam(
        &mut self,
        ips: &[IpAddr],
        taken: &BTreeSet<IpAddr>,
    ) -> Result<Value, AddressingError> {
        let mut addresses = Vec::new();
        let mut routes = Vec::new();
        for ip in ips {
            self.check_not_gateway(*ip)?;
            let subnet = self.subnet_for(*ip);
            let gw = self.gateway(subnet, taken)?;
            addresses.push(json!({
                "address": format!("{ip}/{}", subnet.prefix_len()),
                "gateway": gw.to_string(),
            }));
            routes.push(default_route(*ip));
        }
        routes.dedup();
        Ok(json!({"type": "static", "addresses": addresses, "routes": routes}))
    }

    /// `ipam` for a pod that gets addresses from host-local, stored in `data_dir`.
    pub fn host_local_ipam(
        &mut self,
        data_dir: &Path,
        taken: &BTreeSet<IpAddr>,
    ) -> Result<Value, AddressingError> {
        let mut ranges = Vec::new();
        let mut routes = Vec::new();
        let v4: IpNet = self.subnet_v4.into();
        let gw4 = self.gateway(v4, taken)?;
        ranges.push(json!([{"subnet": v4.to_string(), "gateway": gw4.to_string()}]));
        routes.push(json!({"dst": "0.0.0.0/0"}));
        if let Some(v6) = self.subnet_v6 {
            let v6: IpNet = v6.into();
            let gw6 = self.gateway(v6, taken)?;
            ranges.push(json!([{"subnet": v6.to_string(), "gateway": gw6.to_string()}]));
            routes.push(json!({"dst": "::/0"}));
        }
        Ok(json!({
            "type": "host-local",
            "ranges": ranges,
            "routes": routes,
            "dataDir": data_dir,
        }))
    }

    /// Marks the static addresses and gateways that fall in the lab subnets as used in
    /// host-local's store for network `network`, so dynamic pods never get them.
    /// host-local's disk store is one file per address under `<dataDir>/<network>/`.
    pub fn reserve(
        &self,
        data_dir: &Path,
        network: &str,
        ips: &BTreeSet<IpAddr>,
    ) -> Result<(), AddressingError> {
        let dir = data_dir.join(network);
        for ip in ips.iter().chain(self.gateways.values()) {
            let inside = match ip {
                IpAddr::V4(v4) => self.subnet_v4.contains(v4),
                IpAddr::V6(v6) => self.subnet_v6.is_some_and(|s| s.contains(v6)),
            };
            if !inside {
                continue;
            }
            let err = |source| AddressingError::Reserve {
                ip: *ip,
                dir: dir.display().to_string(),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(err)?;
            let file = dir.join(ip.to_string());
            if !file.exists() {
                std::fs::write(&file, "palisade-lab-reserved\r\nnone").map_err(err)?;
            }
        }
        Ok(())
    }
}

fn default_route(ip: IpAddr) -> Value {
    match ip {
        IpAddr::V4(_) => json!({"dst": "0.0.0.0/0"}),
        IpAddr::V6(_) => json!({"dst": "::/0"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn gateway_skips_addresses_pods_use() {
        let mut plan = AddressPlan::default();
        let taken: BTreeSet<IpAddr> = [ip("10.244.0.1"), ip("10.244.0.2")].into();
        let ipam = plan.static_ipam(&[ip("10.244.0.1")], &taken).unwrap();
        assert_eq!(ipam["addresses"][0]["address"], "10.244.0.1/24");
        assert_eq!(ipam["addresses"][0]["gateway"], "10.244.0.3");
    }

    #[test]
    fn address_outside_lab_subnet_gets_its_own_24_and_gateway() {
        let mut plan = AddressPlan::default();
        let ipam = plan
            .static_ipam(&[ip("192.0.2.7"), ip("2001:db8::7")], &BTreeSet::new())
            .unwrap();
        assert_eq!(ipam["addresses"][0]["address"], "192.0.2.7/24");
        assert_eq!(ipam["addresses"][0]["gateway"], "192.0.2.1");
        assert_eq!(ipam["addresses"][1]["address"], "2001:db8::7/64");
        assert_eq!(ipam["addresses"][1]["gateway"], "2001:db8::1");
        assert_eq!(ipam["routes"], json!([{"dst":"0.0.0.0/0"},{"dst":"::/0"}]));
    }

    #[test]
    fn later_static_pod_on_a_gateway_is_rejected() {
        let mut plan = AddressPlan::default();
        plan.host_local_ipam(Path::new("/tmp/x"), &BTreeSet::new())
            .unwrap();
        let err = plan
            .static_ipam(&[ip("10.244.0.1")], &BTreeSet::new())
            .unwrap_err();
        assert!(matches!(err, AddressingError::GatewayClash { .. }));
    }

    #[test]
    fn reserve_writes_one_file_per_address_inside_the_subnet() {
        let dir = std::env::temp_dir().join(format!("pl-reserve-{}", std::process::id()));
        let mut plan = AddressPlan::default();
        plan.gateway(plan.subnet_v4.into(), &BTreeSet::new())
            .unwrap();
        plan.reserve(&dir, "lab", &[ip("10.244.0.9"), ip("192.0.2.1")].into())
            .unwrap();
        assert!(dir.join("lab/10.244.0.9").exists());
        assert!(dir.join("lab/10.244.0.1").exists(), "gateway reserved too");
        assert!(!dir.join("lab/192.0.2.1").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
