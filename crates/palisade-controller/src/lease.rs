//! Leader election through a `coordination.k8s.io/v1` Lease, the way client-go's
//! `leaderelection` does it:
//!
//! 1. no Lease: create it holding it (a concurrent create loses with `409 Conflict`);
//! 2. held by us: renew (`renewTime` = now) every [`LeaseConfig::renew_every`];
//! 3. held by another: take it over only once its record (holder, renewTime) has not
//!    changed for the lease duration *as measured by our own clock* since we first saw
//!    that record (clocks of different machines are never compared);
//! 4. every write is a replace carrying the resourceVersion read, so of two replicas
//!    racing for the same Lease exactly one wins (`409` for the other);
//! 5. a leader that could not renew for the lease duration stops leading (another
//!    replica may hold the Lease by then).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

/// How leader election is set up.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the controller's own).
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name; unique among replicas).
    pub identity: String,
    /// How long a Lease not renewed stays held.
    pub duration: Duration,
    /// How often the holder renews (and the others look).
    pub renew_every: Duration,
}

/// The default Lease name.
pub const LEASE_NAME: &str = "palisade-controller";
/// Default lease duration (client-go's default too).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(15);
/// Default renew period: three renewals fit in one lease duration.
pub const DEFAULT_RENEW: Duration = Duration::from_secs(5);

/// Whether this replica leads, updated by the election task.
pub type Leadership = watch::Receiver<bool>;

/// Starts the election on the current tokio runtime.
pub fn start(client: Client, config: LeaseConfig) -> Leadership {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(elect(
        Api::namespaced(client, &config.namespace),
        config,
        tx,
    ));
    rx
}

async fn elect(api: Api<Lease>, config: LeaseConfig, tx: watch::Sender<bool>) {
    let mut observed: Option<(Record, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    loop {
        match try_lead(&api, &config, &mut observed).await {
            Ok(true) => last_renew = Some(Instant::now()),
            Ok(false) => last_renew = None,
            Err(e) => {
                tracing::warn!(lease = %config.name, error = %format!("{e:#}"), "leader election: could not read or write the Lease");
            }
        }
        let leading = last_renew.is_some_and(|t| t.elapsed() < config.duration);
        tx.send_if_modified(|l| {
            if *l != leading {
                tracing::info!(identity = %config.identity, leading, "leadership changed");
                *l = leading;
                true
            } else {
                false
            }
        });
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(config.renew_every).await;
    }
}

/// What identifies one holding of the Lease.
type Record = (Option<String>, Option<String>);

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// One round; `Ok(true)` when we hold the Lease after it.
async fn try_lead(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<(Record, Instant)>,
) -> Result<bool, kube::Error> {
    let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let duration_secs = config.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let record: Record = (
        spec.holder_identity.clone(),
        spec.renew_time.as_ref().map(|t| t.0.to_string()),
    );
    if observed.as_ref().is_none_or(|(r, _)| *r != record) {
        *observed = Some((record, Instant::now()));
    }
    let mine = spec.holder_identity.as_deref() == Some(config.identity.as_str());
    let held_for = spec
        .lease_duration_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64))
        .unwrap_or(config.duration);
    let expired = spec.holder_identity.as_deref().is_none_or(str::is_empty)
        || observed
            .as_ref()
            .is_some_and(|(_, seen)| seen.elapsed() >= held_for);
    if !mine && !expired {
        return Ok(false);
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: if mine {
            spec.acquire_time
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if mine { transitions } else { transitions + 1 }),
        ..spec
    });
    // The resourceVersion read above is in `lease.metadata`: a replace by someone else
    // meanwhile makes this one fail with 409.
    match api
        .replace(&config.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if conflict(&e) => Ok(false),
        Err(e) => Err(e),
    }
}
