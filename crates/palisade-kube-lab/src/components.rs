//! The command lines and certificates of the control plane's components, shared by
//! the test-lifetime [`crate::ControlPlane`] (loopback, child processes) and the
//! lab's [`crate::persistent::PersistentControlPlane`] (its own network namespace,
//! detached processes), so both run the very same configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::pki::{service_account_key, Ca, KeyAndCert};
use crate::Error;

/// The Service CIDR: the API server allocates ClusterIPs from it. The first address
/// is the `kubernetes` Service, so the serving certificate names it.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The ClusterIP of the `kubernetes` Service (first address of [`SERVICE_CIDR`]).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The issuer (and audience) of service-account tokens, as on a kubeadm cluster.
const SA_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Writes the CA, etcd's and the API server's serving certificates (the latter valid
/// for `api_ips`, loopback, the `kubernetes` Service IP and its DNS names), the API
/// server's etcd client certificate and the service-account key pair into `pki`.
pub(crate) fn write_pki(pki: &Path, ca: &Ca, api_ips: &[IpAddr]) -> Result<(), Error> {
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    write(&pki.join("ca.crt"), ca.cert_pem())?;
    write_pair(
        pki,
        "etcd",
        &ca.serving("etcd", &[loopback], &["localhost"])?,
    )?;
    write_pair(
        pki,
        "apiserver-etcd-client",
        &ca.client("kube-apiserver-etcd-client", None)?,
    )?;
    write_apiserver_cert(pki, ca, api_ips)?;
    let (sa_key, sa_pub) = service_account_key()?;
    write_secret(&pki.join("sa.key"), &sa_key)?;
    write(&pki.join("sa.pub"), &sa_pub)
}

fn pki_file(pki: &Path, f: &str) -> String {
    pki.join(f).display().to_string()
}

/// etcd serving clients on `https://127.0.0.1:client_port` (TLS, client certificates
/// required), its data in `data_dir`.
pub(crate) fn etcd_args(
    data_dir: &Path,
    pki: &Path,
    client_port: u16,
    peer_port: u16,
) -> Vec<String> {
    let p = |f: &str| pki_file(pki, f);
    vec![
        "--name=palisade-kube-lab".to_string(),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls=https://127.0.0.1:{client_port}"),
        format!("--advertise-client-urls=https://127.0.0.1:{client_port}"),
        // One member: the peer URL is required but carries no traffic.
        format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
        format!("--initial-cluster=palisade-kube-lab=http://127.0.0.1:{peer_port}"),
        format!("--cert-file={}", p("etcd.crt")),
        format!("--key-file={}", p("etcd.key")),
        format!("--trusted-ca-file={}", p("ca.crt")),
        "--client-cert-auth=true".to_string(),
        // Throwaway data: durability buys nothing and fsync on a shared disk costs
        // seconds per start.
        "--unsafe-no-fsync=true".to_string(),
    ]
}

/// Where the API server listens and what it advertises.
pub(crate) struct ApiAddress {
    /// `--bind-address`.
    pub bind: IpAddr,
    /// `--secure-port`.
    pub port: u16,
    /// `--advertise-address`: the address in the `kubernetes` Service's endpoints.
    pub advertise: IpAddr,
    /// Whether the endpoint reconciler keeps those endpoints (it refuses loopback).
    pub reconcile_endpoints: bool,
}

/// kube-apiserver with TLS, `--authorization-mode=Node,RBAC`, NodeRestriction on top
/// of the default admission plugins, and service-account token signing.
pub(crate) fn apiserver_args(pki: &Path, etcd_client_port: u16, at: &ApiAddress) -> Vec<String> {
    let p = |f: &str| pki_file(pki, f);
    vec![
        format!("--etcd-servers=https://127.0.0.1:{etcd_client_port}"),
        format!("--etcd-cafile={}", p("ca.crt")),
        format!("--etcd-certfile={}", p("apiserver-etcd-client.crt")),
        format!("--etcd-keyfile={}", p("apiserver-etcd-client.key")),
        format!("--bind-address={}", at.bind),
        format!("--secure-port={}", at.port),
        format!("--advertise-address={}", at.advertise),
        // The Endpoints of the `kubernetes` Service may not hold a loopback address,
        // so on loopback the reconciler would only log errors.
        format!(
            "--endpoint-reconciler-type={}",
            if at.reconcile_endpoints {
                "lease"
            } else {
                "none"
            }
        ),
        format!("--tls-cert-file={}", p("apiserver.crt")),
        format!("--tls-private-key-file={}", p("apiserver.key")),
        format!("--client-ca-file={}", p("ca.crt")),
        format!("--service-account-issuer={SA_ISSUER}"),
        format!("--service-account-key-file={}", p("sa.pub")),
        format!("--service-account-signing-key-file={}", p("sa.key")),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--authorization-mode=Node,RBAC".to_string(),
        // The default plugins (NamespaceLifecycle, ServiceAccount, ...) stay on;
        // NodeRestriction is what a real cluster adds for node identities.
        "--enable-admission-plugins=NodeRestriction".to_string(),
        "--profiling=false".to_string(),
    ]
}

/// kube-controller-manager as `system:kube-controller-manager` (the kubeconfig),
/// with per-controller ServiceAccount credentials, serving nothing.
pub(crate) fn controller_manager_args(kubeconfig: &Path, pki: &Path) -> Vec<String> {
    let p = |f: &str| pki_file(pki, f);
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--secure-port=0".to_string(),
        "--leader-elect=false".to_string(),
        "--use-service-account-credentials=true".to_string(),
        format!("--service-account-private-key-file={}", p("sa.key")),
        format!("--root-ca-file={}", p("ca.crt")),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--profiling=false".to_string(),
    ]
}

/// kube-scheduler as `system:kube-scheduler` (the kubeconfig), serving nothing.
pub(crate) fn scheduler_args(kubeconfig: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", kubeconfig.display()),
        "--secure-port=0".to_string(),
        "--leader-elect=false".to_string(),
        "--profiling=false".to_string(),
    ]
}

/// A kubeconfig (JSON is valid kubeconfig YAML, and serde_json escapes every field)
/// for `user` with `users[].user` = `credentials`, talking to `server`.
pub(crate) fn kubeconfig_json(
    server: &str,
    ca: &Path,
    user: &str,
    credentials: serde_json::Value,
) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "palisade-kube-lab", "cluster": {
            "server": server,
            "certificate-authority": ca.display().to_string(),
        }}],
        "users": [{ "name": user, "user": credentials }],
        "contexts": [{ "name": "default", "context": {
            "cluster": "palisade-kube-lab", "user": user,
        }}],
        "current-context": "default",
    })
    .to_string()
}

pub(crate) fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| Error::io(path, e))
}

/// Writes a file only its owner can read (keys, tokens).
pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

pub(crate) fn write_pair(dir: &Path, stem: &str, pair: &KeyAndCert) -> Result<(), Error> {
    write(&dir.join(format!("{stem}.crt")), &pair.cert_pem)?;
    write_secret(&dir.join(format!("{stem}.key")), &pair.key_pem)
}

/// Writes the API server's serving certificate, valid for `api_ips`, loopback, the
/// `kubernetes` Service IP and its DNS names (again when the API server moves).
pub(crate) fn write_apiserver_cert(pki: &Path, ca: &Ca, api_ips: &[IpAddr]) -> Result<(), Error> {
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V4(KUBERNETES_SERVICE_IP),
    ];
    for ip in api_ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    write_pair(
        pki,
        "apiserver",
        &ca.serving(
            "kube-apiserver",
            &ips,
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?,
    )
}
