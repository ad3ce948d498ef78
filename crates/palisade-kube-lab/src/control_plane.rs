//! etcd + kube-apiserver as child processes on 127.0.0.1, with TLS between every
//! pair, RBAC, admission and service-account tokens: the smallest real control plane
//! that Palisade's components can authenticate to as themselves.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::components::{
    apiserver_args, controller_manager_args, etcd_args, kubeconfig_json, scheduler_args, write,
    write_pki, write_secret, ApiAddress,
};
use crate::pki::{Ca, KeyAndCert};
use crate::process::Supervised;
use crate::{Binaries, Error};

/// How long etcd + kube-apiserver get to report `/readyz` ok, in seconds. A cold
/// start takes 5-15 s here; the machine is shared, so allow a wide margin.
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// How many times a start is tried when a picked port was taken meanwhile.
const START_ATTEMPTS: u32 = 3;

/// Pause between two readiness probes, in milliseconds.
const POLL: Duration = Duration::from_millis(250);

/// How long a minted ServiceAccount token is valid (`kubectl create token --duration`).
const TOKEN_DURATION: &str = "24h";

/// A kubeconfig file for one identity.
#[derive(Debug, Clone)]
pub struct Kubeconfig {
    path: PathBuf,
    user: String,
}

impl Kubeconfig {
    /// The file (inside the control plane's directory; valid while it runs).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The Kubernetes user name it authenticates as.
    pub fn user(&self) -> &str {
        &self.user
    }
}

/// A running control plane. Dropping it stops the controllers (if started), the API
/// server, then etcd (by PID), then removes its directory.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: controllers stop before the API server, the API
    // server before its etcd, and the directory goes last.
    controllers: Vec<Supervised>,
    apiserver: Supervised,
    /// The API server's arguments, to start it again after [`ControlPlane::stop_apiserver`].
    api_args: Vec<String>,
    /// How many times the API server was started (names its logs).
    api_starts: usize,
    etcd: Supervised,
    binaries: Binaries,
    ca: Ca,
    server: String,
    admin: Kubeconfig,
    identities: AtomicUsize,
    dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver from [`Binaries::locate`] and waits until
    /// `/readyz` is ok.
    pub fn start() -> Result<Self, Error> {
        Self::start_with(Binaries::locate()?)
    }

    /// Starts with the given binaries. Ports are picked free just before use, so
    /// another process can take one first: when etcd or kube-apiserver exits saying
    /// its address is in use, the whole start is retried on fresh ports (at most
    /// three times, `START_ATTEMPTS`).
    pub fn start_with(binaries: Binaries) -> Result<Self, Error> {
        let mut attempt = 1;
        loop {
            match Self::start_once(binaries.clone()) {
                Err(Error::Exited { tail, .. })
                    if attempt < START_ATTEMPTS && tail.contains("address already in use") =>
                {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(binaries: Binaries) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("palisade-kube-lab-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        let root = dir.path().to_path_buf();
        let pki = root.join("pki");
        std::fs::create_dir(&pki).map_err(|e| Error::io(&pki, e))?;

        let ca = Ca::new("palisade-kube-lab-ca")?;
        write_pki(&pki, &ca, &[])?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let secure = free_port()?;
        let mut etcd_cmd = Command::new(binaries.path("etcd"));
        etcd_cmd.args(etcd_args(&root.join("etcd"), &pki, etcd_client, etcd_peer));
        let etcd = Supervised::spawn("etcd", etcd_cmd, &root.join("etcd.log"))?;

        let loopback = Ipv4Addr::LOCALHOST.into();
        let api_args = apiserver_args(
            &pki,
            etcd_client,
            &ApiAddress {
                bind: loopback,
                port: secure,
                advertise: loopback,
                reconcile_endpoints: false,
            },
        );
        let mut api_cmd = Command::new(binaries.path("kube-apiserver"));
        api_cmd.args(&api_args);
        let apiserver = Supervised::spawn("kube-apiserver", api_cmd, &root.join("apiserver.log"))?;

        let server = format!("https://127.0.0.1:{secure}");
        let admin_cert = ca.client("palisade-kube-lab-admin", Some("system:masters"))?;
        let mut cp = Self {
            controllers: Vec::new(),
            apiserver,
            api_args,
            api_starts: 1,
            etcd,
            admin: Kubeconfig {
                path: PathBuf::new(),
                user: String::new(),
            },
            binaries,
            ca,
            server,
            identities: AtomicUsize::new(0),
            dir,
        };
        cp.admin = cp.write_cert_kubeconfig("palisade-kube-lab-admin", &admin_cert)?;
        cp.wait_ready()?;
        Ok(cp)
    }

    /// Stops the API server (by PID, SIGTERM then SIGKILL) and leaves etcd running:
    /// what Palisade's components see when the API server goes away. Idempotent.
    pub fn stop_apiserver(&mut self) {
        self.apiserver.stop();
    }

    /// Starts the API server again, on the same address and with the same data (after
    /// [`ControlPlane::stop_apiserver`]; stops it first if it is running), and waits
    /// until `/readyz` is ok.
    pub fn start_apiserver(&mut self) -> Result<(), Error> {
        self.apiserver.stop();
        self.api_starts += 1;
        let log = self
            .dir
            .path()
            .join(format!("apiserver.{}.log", self.api_starts));
        let mut cmd = Command::new(self.binaries.path("kube-apiserver"));
        cmd.args(&self.api_args);
        self.apiserver = Supervised::spawn("kube-apiserver", cmd, &log)?;
        self.wait_ready()
    }

    /// Polls `kubectl get --raw /readyz` as admin until it says `ok`, failing early
    /// (with its log) if either process exits.
    fn wait_ready(&mut self) -> Result<(), Error> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.etcd.check_running()?;
            self.apiserver.check_running()?;
            let out = self.kubectl_output(&self.admin, &["get", "--raw", "/readyz"], None)?;
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} /readyz", self.server),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: format!(
                        "; last answer: {}{}\napiserver log tail:\n{}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim(),
                        self.apiserver.log_tail()
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Starts kube-controller-manager and kube-scheduler, each with its own client
    /// certificate (`system:kube-controller-manager`, `system:kube-scheduler`: the
    /// users RBAC's bootstrap roles are bound to), and waits until the controller
    /// manager has created the `default` ServiceAccount, without which admission
    /// refuses every pod. Neither serves HTTPS (`--secure-port=0`), so neither
    /// listens anywhere. Controllers use per-controller ServiceAccount credentials.
    pub fn start_controllers(&mut self) -> Result<(), Error> {
        if !self.controllers.is_empty() {
            return Ok(());
        }
        let root = self.dir.path().to_path_buf();

        let kcm = self.client_cert_kubeconfig("system:kube-controller-manager", None)?;
        let mut cmd = Command::new(self.binaries.path("kube-controller-manager"));
        cmd.args(controller_manager_args(&kcm.path, &root.join("pki")));
        self.controllers.push(Supervised::spawn(
            "kube-controller-manager",
            cmd,
            &root.join("controller-manager.log"),
        )?);

        let sched = self.client_cert_kubeconfig("system:kube-scheduler", None)?;
        let mut cmd = Command::new(self.binaries.path("kube-scheduler"));
        cmd.args(scheduler_args(&sched.path));
        self.controllers.push(Supervised::spawn(
            "kube-scheduler",
            cmd,
            &root.join("scheduler.log"),
        )?);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for c in &mut self.controllers {
                c.check_running()?;
            }
            let out = self.kubectl_output(
                &self.admin,
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
            )?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the controller manager to create default/default ServiceAccount"
                        .to_string(),
                    seconds: START_TIMEOUT.as_secs(),
                    detail: format!(
                        "\ncontroller-manager log tail:\n{}",
                        self.controllers[0].log_tail()
                    ),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Process ids of the controllers started by [`ControlPlane::start_controllers`]
    /// (controller manager, scheduler), empty before.
    pub fn controller_pids(&self) -> Vec<u32> {
        self.controllers.iter().map(Supervised::pid).collect()
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The CA certificate that signed the API server's serving certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("pki/ca.crt")
    }

    /// The directory this control plane owns (certificates, etcd data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binaries it runs (kubectl among them).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Process ids of (etcd, kube-apiserver).
    pub fn pids(&self) -> (u32, u32) {
        (self.etcd.pid(), self.apiserver.pid())
    }

    /// The admin kubeconfig (group `system:masters`): for test set-up only, never
    /// for a Palisade component.
    pub fn admin(&self) -> &Kubeconfig {
        &self.admin
    }

    /// A kubeconfig with a client certificate for `user` in `group`.
    pub fn client_cert_kubeconfig(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<Kubeconfig, Error> {
        let pair = self.ca.client(user, group)?;
        self.write_cert_kubeconfig(user, &pair)
    }

    /// Creates ServiceAccount `namespace/name` (if missing) and returns a kubeconfig
    /// with a token minted for it by the TokenRequest API, i.e. the identity
    /// `system:serviceaccount:NAMESPACE:NAME` that a pod of it would have.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Kubeconfig, Error> {
        let sa = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": { "name": name, "namespace": namespace },
        });
        self.kubectl(&self.admin, &["apply", "-f", "-"], Some(&sa.to_string()))?;
        let token = self.kubectl(
            &self.admin,
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
        self.write_kubeconfig(&user, serde_json::json!({ "token": token.trim() }))
    }

    /// A kubeconfig presenting bearer `token`, expected to authenticate as `user`
    /// (for a token obtained elsewhere, or a bogus one to test refusal).
    pub fn token_kubeconfig(&self, user: &str, token: &str) -> Result<Kubeconfig, Error> {
        self.write_kubeconfig(user, serde_json::json!({ "token": token }))
    }

    /// Runs kubectl with `kubeconfig` (and `stdin`, if any); its stdout on success.
    pub fn kubectl(
        &self,
        kubeconfig: &Kubeconfig,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, Error> {
        let out = self.kubectl_output(kubeconfig, args, stdin)?;
        if !out.status.success() {
            return Err(Error::Command {
                command: format!("kubectl {} (as {})", args.join(" "), kubeconfig.user),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs kubectl with `kubeconfig`, whatever its exit status (`auth can-i`
    /// answers "no" with status 1).
    pub fn kubectl_output(
        &self,
        kubeconfig: &Kubeconfig,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, Error> {
        crate::kubectl::output(&self.binaries, &kubeconfig.path, None, args, stdin)
    }

    fn write_cert_kubeconfig(&self, user: &str, pair: &KeyAndCert) -> Result<Kubeconfig, Error> {
        let base = self.identity_file(user);
        let (cert, key) = (base.with_extension("crt"), base.with_extension("key"));
        write(&cert, &pair.cert_pem)?;
        write_secret(&key, &pair.key_pem)?;
        self.write_kubeconfig(
            user,
            serde_json::json!({
                "client-certificate": cert.display().to_string(),
                "client-key": key.display().to_string(),
            }),
        )
    }

    /// Writes a kubeconfig for `user` with the given `users[].user` credentials.
    /// JSON is valid kubeconfig (YAML), and serde_json escapes every field.
    fn write_kubeconfig(
        &self,
        user: &str,
        credentials: serde_json::Value,
    ) -> Result<Kubeconfig, Error> {
        let path = self.identity_file(user).with_extension("kubeconfig");
        let config = kubeconfig_json(&self.server, &self.ca_cert_path(), user, credentials);
        write_secret(&path, &config)?;
        Ok(Kubeconfig {
            path,
            user: user.to_string(),
        })
    }

    /// A fresh file stem for `user` (user names hold `:`; numbered to stay unique).
    fn identity_file(&self, user: &str) -> PathBuf {
        let n = self.identities.fetch_add(1, Ordering::Relaxed);
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        self.dir.path().join("pki").join(format!("{n:03}-{safe}"))
    }
}

/// A TCP port free on 127.0.0.1 right now. Another process may take it before the
/// component binds it; the component then exits and [`ControlPlane::start`] fails
/// with its log, rather than talking to a stranger.
fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|e| Error::io("127.0.0.1:0", e))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("127.0.0.1:0", e))
}
