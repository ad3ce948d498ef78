//! The lab's control plane: the same components and flags as [`crate::ControlPlane`]
//! (see [`crate::components`]), plus kube-controller-manager and kube-scheduler,
//! but *persistent*: every process runs detached inside the API server's own network
//! namespace, and what is needed to use and stop it later (PIDs with start times,
//! the address, the certificate directory, the API server's flags) is recorded in
//! `<dir>/control-plane.json`. `palisade lab up --kubernetes` starts it and returns;
//! `lab down` loads the record and stops the processes by PID.
//!
//! etcd listens on the namespace's loopback only; the API server on its address in
//! that namespace (`--advertise-address`, so the endpoint reconciler puts it in the
//! `kubernetes` Service's endpoints); the controllers serve nothing.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use palisade_lab::process::ProcessRecord;
use serde::{Deserialize, Serialize};

use crate::components::{
    apiserver_args, controller_manager_args, etcd_args, kubeconfig_json, scheduler_args, write,
    write_apiserver_cert, write_pki, write_secret, ApiAddress,
};
use crate::detached::spawn_detached;
use crate::pki::Ca;
use crate::topology::{NodeNet, CLUSTER_CIDR_V4, CLUSTER_CIDR_V6};
use crate::{kubectl, Binaries, Error};
use palisade_lab::netns::NetNs;

/// The API server's port on its namespace's address.
pub const API_PORT: u16 = 6443;
/// etcd's client and peer ports, on the API namespace's loopback.
const ETCD_PORTS: (u16, u16) = (2379, 2380);
/// The record's file name inside the control plane's directory.
const RECORD: &str = "control-plane.json";
/// The CA's subject.
const CA_CN: &str = "palisade-kube-lab-ca";
/// How long the API server gets to answer `/readyz` ok, and the controller manager
/// to create the `default` ServiceAccount. A cold start takes 5-15 s; the machine is
/// shared, so allow a wide margin.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between two readiness probes.
const POLL: Duration = Duration::from_millis(250);
/// How long a minted ServiceAccount token is valid (`kubectl create token --duration`).
const TOKEN_DURATION: &str = "24h";

/// A running persistent control plane, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersistentControlPlane {
    /// Certificates, kubeconfigs, etcd data and logs.
    pub dir: PathBuf,
    /// The API server's network namespace (`/run/netns/<name>`).
    pub netns: PathBuf,
    /// The API server's address inside it.
    pub address: IpAddr,
    /// The binaries directory.
    pub binaries: PathBuf,
    /// etcd.
    pub etcd: ProcessRecord,
    /// kube-apiserver.
    pub apiserver: ProcessRecord,
    /// kube-controller-manager and kube-scheduler.
    pub controllers: Vec<ProcessRecord>,
    /// The API server's flags, to start it again after it was killed.
    api_args: Vec<String>,
    /// How many times the API server was started (names its logs).
    api_starts: u32,
}

impl PersistentControlPlane {
    /// Creates `dir` (which must not exist), certificates for `address`, and starts
    /// etcd, kube-apiserver, kube-controller-manager and kube-scheduler inside the
    /// network namespace `netns`; returns once the API server is ready and the
    /// `default` ServiceAccount exists. On error, whatever was started is stopped.
    pub fn start(
        dir: &Path,
        netns: &Path,
        address: IpAddr,
        binaries: &Binaries,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(dir.join("pki")).map_err(|e| Error::io(dir, e))?;
        let pki = dir.join("pki");
        let ca = Ca::new(CA_CN)?;
        write_pki(&pki, &ca, &[address])?;
        write_secret(&pki.join("ca.key"), ca.key_pem())?;

        let (client, peer) = ETCD_PORTS;
        let mut etcd = Command::new(binaries.path("etcd"));
        etcd.args(etcd_args(&dir.join("etcd"), &pki, client, peer));
        let etcd = spawn_detached("etcd", etcd, &dir.join("etcd.log"), Some(netns))?;
        let api_args = apiserver_args(
            &pki,
            client,
            &ApiAddress {
                bind: address,
                port: API_PORT,
                advertise: address,
                reconcile_endpoints: true,
            },
        );
        let mut cp = Self {
            dir: dir.to_path_buf(),
            netns: netns.to_path_buf(),
            address,
            binaries: binaries.dir().to_path_buf(),
            apiserver: etcd.clone(),
            etcd,
            controllers: Vec::new(),
            api_args,
            api_starts: 0,
        };
        let started = (|| {
            cp.apiserver = cp.spawn_apiserver()?;
            // The admin's kubeconfig, used from inside the namespace.
            let admin = ca.client("palisade-kube-lab-admin", Some("system:masters"))?;
            cp.write_cert_kubeconfig("admin", "palisade-kube-lab-admin", &admin, &cp.server())?;
            cp.wait_ready()?;
            cp.start_controllers(&ca)?;
            cp.save()
        })();
        match started {
            Ok(()) => Ok(cp),
            Err(e) => {
                cp.stop();
                Err(e)
            }
        }
    }

    /// Loads the record that [`PersistentControlPlane::start`] wrote into `dir`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        let path = dir.join(RECORD);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::io(&path, std::io::Error::other(e)))
    }

    /// Writes the record (after a restart of the API server changed its PID).
    pub fn save(&self) -> Result<(), Error> {
        let path = self.dir.join(RECORD);
        let tmp = self.dir.join(format!(".{RECORD}.tmp"));
        let text = serde_json::to_string_pretty(self).expect("the record serializes");
        write(&tmp, &text)?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }

    /// The API server's URL inside the cluster network (`https://ADDRESS:6443`).
    pub fn server(&self) -> String {
        match self.address {
            IpAddr::V4(a) => format!("https://{a}:{API_PORT}"),
            IpAddr::V6(a) => format!("https://[{a}]:{API_PORT}"),
        }
    }

    /// The CA certificate that signed every certificate of this control plane.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("pki/ca.crt")
    }

    /// The admin kubeconfig (group `system:masters`), talking to [`Self::server`]:
    /// usable from inside the cluster network (e.g. with [`Self::kubectl`]).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("pki/admin.kubeconfig")
    }

    /// A kubeconfig named `stem` with a fresh client certificate for `user` in
    /// `group`, talking to `server`.
    pub fn client_cert_kubeconfig(
        &self,
        stem: &str,
        user: &str,
        group: Option<&str>,
        server: &str,
    ) -> Result<PathBuf, Error> {
        let ca = self.ca()?;
        let pair = ca.client(user, group)?;
        self.write_cert_kubeconfig(stem, user, &pair, server)
    }

    /// Creates ServiceAccount `namespace/name` (and the namespace) if missing, and
    /// writes a kubeconfig named `stem` with a token minted for it by the TokenRequest
    /// API: the identity `system:serviceaccount:NAMESPACE:NAME` a pod of it has.
    pub fn service_account_kubeconfig(
        &self,
        stem: &str,
        namespace: &str,
        name: &str,
        server: &str,
    ) -> Result<PathBuf, Error> {
        let objs = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": namespace}},
        ]});
        self.kubectl(&["apply", "-f", "-"], Some(&objs.to_string()))?;
        let token = self.kubectl(
            &[
                "create",
                "token",
                name,
                "-n",
                namespace,
                &format!("--duration={TOKEN_DURATION}"),
            ],
            None,
        )?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let path = self.dir.join("pki").join(format!("{stem}.kubeconfig"));
        let config = kubeconfig_json(
            server,
            &self.ca_cert_path(),
            &user,
            serde_json::json!({ "token": token.trim() }),
        );
        write_secret(&path, &config)?;
        Ok(path)
    }

    /// Runs kubectl as admin inside the API server's namespace; stdout on success.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
        kubectl::run(
            &self.bins()?,
            &self.admin_kubeconfig(),
            "palisade-kube-lab-admin",
            Some(&self.netns),
            args,
            stdin,
        )
    }

    /// Starts upstream kube-proxy for `node` inside its namespace, as
    /// `system:kube-proxy` (a client certificate; RBAC's bootstrap binding grants that
    /// user `system:node-proxier`), in iptables mode with the cluster's pod CIDRs.
    /// It changes only that namespace's iptables, and leaves the machine-wide
    /// conntrack limits alone (`--conntrack-*=0`).
    pub fn start_kube_proxy(&self, node: &NodeNet, log: &Path) -> Result<ProcessRecord, Error> {
        let kubeconfig = self.client_cert_kubeconfig(
            &format!("kube-proxy-{}", node.name),
            "system:kube-proxy",
            None,
            &self.server(),
        )?;
        let primary = node
            .ips
            .first()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut cmd = Command::new(self.bins()?.path("kube-proxy"));
        cmd.args([
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={}", node.name),
            "--proxy-mode=iptables".to_string(),
            format!("--cluster-cidr={CLUSTER_CIDR_V4},{CLUSTER_CIDR_V6}"),
            "--detect-local-mode=ClusterCIDR".to_string(),
            // The node's primary address (and so its primary family).
            format!("--bind-address={primary}"),
            format!("--healthz-bind-address={primary}:10256"),
            "--metrics-bind-address=127.0.0.1:10249".to_string(),
            "--conntrack-max-per-core=0".to_string(),
            "--conntrack-tcp-timeout-established=0".to_string(),
            "--conntrack-tcp-timeout-close-wait=0".to_string(),
            "--iptables-sync-period=30s".to_string(),
        ]);
        let netns = NetNs::open(&node.netns).path();
        spawn_detached(&format!("kube-proxy {}", node.name), cmd, log, Some(&netns))
    }

    /// Whether the API server process recorded here is alive.
    pub fn apiserver_running(&self) -> bool {
        self.apiserver.is_alive()
    }

    /// Starts the API server again with the same flags and data (after it died or
    /// was killed; stops it first if it runs), waits until ready and saves the record.
    pub fn restart_apiserver(&mut self) -> Result<(), Error> {
        self.apiserver.stop();
        self.apiserver = self.spawn_apiserver()?;
        self.save()?;
        self.wait_ready()
    }

    /// Restarts the API server advertising `address`, so the endpoint reconciler moves
    /// the `kubernetes` Service's endpoint there, as when a managed control plane
    /// replaces its instances (seeds/002: a policy must follow that). From then on it
    /// listens on every address of its namespace (`--bind-address=0.0.0.0`; the
    /// namespace is the lab's own), so components configured with [`Self::address`]
    /// keep reaching it, and its certificate also names `address`.
    ///
    /// `address` need not be on the namespace's interface yet: a caller that adds it
    /// only once the API names it makes sure no packet reaches the new endpoint
    /// before the cluster says it is one.
    pub fn readvertise_apiserver(&mut self, address: IpAddr) -> Result<(), Error> {
        let pki = self.dir.join("pki");
        // Secrets are written create-new (never over a file someone else made), so the
        // old pair goes first; the running server has read it already.
        for f in ["apiserver.crt", "apiserver.key"] {
            let p = pki.join(f);
            std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        write_apiserver_cert(&pki, &self.ca()?, &[self.address, address])?;
        for arg in &mut self.api_args {
            if arg.starts_with("--advertise-address=") {
                *arg = format!("--advertise-address={address}");
            } else if arg.starts_with("--bind-address=") {
                *arg = "--bind-address=0.0.0.0".to_string();
            }
        }
        self.restart_apiserver()
    }

    /// Stops the controllers, the API server, then etcd (each by PID, SIGTERM then
    /// SIGKILL). Idempotent; a PID now owned by another process is left alone.
    pub fn stop(&self) {
        for c in self.controllers.iter().rev() {
            c.stop();
        }
        self.apiserver.stop();
        self.etcd.stop();
    }

    fn bins(&self) -> Result<Binaries, Error> {
        Binaries::at(self.binaries.clone())
    }

    fn ca(&self) -> Result<Ca, Error> {
        let read = |f: &str| {
            let p = self.dir.join("pki").join(f);
            std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))
        };
        Ca::from_pem(CA_CN, &read("ca.crt")?, &read("ca.key")?)
    }

    fn spawn_apiserver(&mut self) -> Result<ProcessRecord, Error> {
        self.api_starts += 1;
        let mut cmd = Command::new(self.bins()?.path("kube-apiserver"));
        cmd.args(&self.api_args);
        let log = self.dir.join(format!("apiserver.{}.log", self.api_starts));
        spawn_detached("kube-apiserver", cmd, &log, Some(&self.netns))
    }

    fn start_controllers(&mut self, ca: &Ca) -> Result<(), Error> {
        let server = self.server();
        let kcm = ca.client("system:kube-controller-manager", None)?;
        let kcm = self.write_cert_kubeconfig(
            "kube-controller-manager",
            "system:kube-controller-manager",
            &kcm,
            &server,
        )?;
        let bins = self.bins()?;
        let mut cmd = Command::new(bins.path("kube-controller-manager"));
        cmd.args(controller_manager_args(&kcm, &self.dir.join("pki")));
        self.controllers.push(spawn_detached(
            "kube-controller-manager",
            cmd,
            &self.dir.join("controller-manager.log"),
            Some(&self.netns),
        )?);
        let sched = ca.client("system:kube-scheduler", None)?;
        let sched =
            self.write_cert_kubeconfig("kube-scheduler", "system:kube-scheduler", &sched, &server)?;
        let mut cmd = Command::new(bins.path("kube-scheduler"));
        cmd.args(scheduler_args(&sched));
        self.controllers.push(spawn_detached(
            "kube-scheduler",
            cmd,
            &self.dir.join("scheduler.log"),
            Some(&self.netns),
        )?);
        // Admission refuses every pod until the `default` ServiceAccount exists.
        self.poll(
            "the controller manager to create default/default ServiceAccount",
            || {
                kubectl::output(
                    &bins,
                    &self.admin_kubeconfig(),
                    Some(&self.netns),
                    &[
                        "get",
                        "serviceaccount",
                        "default",
                        "-n",
                        "default",
                        "-o",
                        "name",
                    ],
                    None,
                )
                .map(|o| o.status.success())
            },
        )
    }

    fn wait_ready(&self) -> Result<(), Error> {
        let bins = self.bins()?;
        self.poll("the API server's /readyz", || {
            kubectl::output(
                &bins,
                &self.admin_kubeconfig(),
                Some(&self.netns),
                &["get", "--raw", "/readyz"],
                None,
            )
            .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok")
        })
    }

    /// Polls `ok` until true, failing early (with its log) when a process died.
    fn poll(&self, what: &str, mut ok: impl FnMut() -> Result<bool, Error>) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let procs = [&self.etcd, &self.apiserver]
                .into_iter()
                .chain(&self.controllers);
            for p in procs {
                if !p.is_alive() {
                    let log = self.log_of(&p.role);
                    return Err(Error::Exited {
                        name: p.role.clone(),
                        status: "not running".to_string(),
                        tail: crate::process::log_tail(&log),
                        log,
                    });
                }
            }
            if ok()? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: format!(
                        "\napiserver log tail:\n{}",
                        crate::process::log_tail(&self.log_of("kube-apiserver"))
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn log_of(&self, role: &str) -> PathBuf {
        match role {
            "etcd" => self.dir.join("etcd.log"),
            "kube-apiserver" => self.dir.join(format!("apiserver.{}.log", self.api_starts)),
            "kube-controller-manager" => self.dir.join("controller-manager.log"),
            _ => self.dir.join("scheduler.log"),
        }
    }

    fn write_cert_kubeconfig(
        &self,
        stem: &str,
        user: &str,
        pair: &crate::KeyAndCert,
        server: &str,
    ) -> Result<PathBuf, Error> {
        let base = self.dir.join("pki").join(stem);
        let (cert, key) = (base.with_extension("crt"), base.with_extension("key"));
        write(&cert, &pair.cert_pem)?;
        write_secret(&key, &pair.key_pem)?;
        let path = base.with_extension("kubeconfig");
        let config = kubeconfig_json(
            server,
            &self.ca_cert_path(),
            user,
            serde_json::json!({
                "client-certificate": cert.display().to_string(),
                "client-key": key.display().to_string(),
            }),
        );
        write_secret(&path, &config)?;
        Ok(path)
    }
}
