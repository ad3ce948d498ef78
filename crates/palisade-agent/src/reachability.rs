//! One reachability probe of the API server, shared by every watch of the agent.
//!
//! A watch that fails waits before it retries (kube-runtime's backoff: 0.8 s doubling
//! to 30 s). After an outage of the only API server that wait is the enforcement gap:
//! the API server is back and has new objects (an EndpointSlice naming its own new
//! address), but a watch that backed off to 30 s learns them up to 30 s later. client-go
//! has the same gap. Retrying every watch fast instead would cost the API server one
//! request per watch per retry during the outage, from every node.
//!
//! So while any watch is waiting, one prober per agent asks `GET /readyz` every
//! [`PROBE_EVERY`] (a single cheap request, allowed to every identity by the
//! `system:public-info-viewer` role). When the probe sees the API server come back
//! after it saw it away (a *recovery*), every waiting watch retries at once (after a
//! jitter below [`RECOVERY_JITTER`], so thousands of agents do not relist in the same
//! millisecond). A watch failing while the API server answers (403, a CRD not served,
//! a relist refused) sees no recovery and keeps its backoff: the probe never makes a
//! failing watch retry faster than its backoff unless the API server was away.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

/// Time between two probes while a watch waits.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long one probe may take before it counts as "away".
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Upper bound of the random delay between a recovery and a watch's retry.
pub const RECOVERY_JITTER: Duration = Duration::from_millis(250);

/// What ended a watch's wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Its backoff ran out.
    Backoff,
    /// The probe saw the API server come back: retry now and start the backoff over.
    Recovered,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// Recoveries seen so far.
    recoveries: u64,
    /// Whether the last probe was answered. Starts true: the watches started fine, and
    /// a failure the probe did not see as "away" must not count as a recovery.
    reachable: bool,
}

/// See the module doc. Cheap to clone; every clone is the same probe.
#[derive(Clone)]
pub struct Reachability {
    state: watch::Sender<State>,
    waiting: Arc<AtomicUsize>,
    someone_waits: Arc<Notify>,
}

impl Default for Reachability {
    fn default() -> Self {
        Reachability {
            state: watch::Sender::new(State {
                recoveries: 0,
                reachable: true,
            }),
            waiting: Arc::default(),
            someone_waits: Arc::default(),
        }
    }
}

/// Decrements the waiting count however the wait ends (also when its task is aborted).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reachability {
    /// Recoveries seen so far (a metric, and what tests check).
    pub fn recoveries(&self) -> u64 {
        self.state.borrow().recoveries
    }

    /// Waits after a failed watch: until `backoff` has passed, or until the probe sees
    /// the API server come back from away, whichever is first.
    pub async fn wait(&self, backoff: Duration) -> Woken {
        let mut rx = self.state.subscribe();
        let before = rx.borrow_and_update().recoveries;
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiting);
        self.someone_waits.notify_one();
        let recovered = async { rx.wait_for(|s| s.recoveries > before).await.is_ok() };
        tokio::select! {
            _ = tokio::time::sleep(backoff) => Woken::Backoff,
            ok = recovered => {
                if !ok {
                    // The probe is gone (the source is being dropped): plain backoff.
                    tokio::time::sleep(backoff).await;
                    return Woken::Backoff;
                }
                tokio::time::sleep(jitter(RECOVERY_JITTER)).await;
                Woken::Recovered
            }
        }
    }

    /// Runs the prober: idle while no watch waits, `probe()` every [`PROBE_EVERY`]
    /// while one does. Each probe is bounded by [`PROBE_TIMEOUT`]. Runs until aborted.
    pub async fn run<F, Fut>(self, probe: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        loop {
            while self.waiting.load(Ordering::SeqCst) == 0 {
                // notify_one stores a permit, so a wait that began between the load
                // and this await is not missed.
                self.someone_waits.notified().await;
            }
            let ok = tokio::time::timeout(PROBE_TIMEOUT, probe())
                .await
                .unwrap_or(false);
            self.state.send_modify(|s| {
                if ok && !s.reachable {
                    s.recoveries += 1;
                    tracing::info!(
                        recoveries = s.recoveries,
                        "the API server answers again; every failed watch retries now"
                    );
                }
                s.reachable = ok;
            });
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// A uniformly random duration below `max` (no rand dependency for one number: the
/// standard library's randomly seeded hasher).
fn jitter(max: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let nanos = max.as_nanos().max(1) as u64;
    Duration::from_nanos(r % nanos)
}

/// The probe the agent uses: `GET /readyz` answered 2xx within the client's own
/// connection handling (the caller bounds it with [`PROBE_TIMEOUT`]).
pub async fn api_server_ready(client: &kube::Client) -> bool {
    let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    client.request_text(req).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A probe the test switches between answered and not, counting its calls.
    #[derive(Clone, Default)]
    struct Switch {
        up: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    impl Switch {
        fn probe(&self) -> impl Fn() -> std::future::Ready<bool> {
            let s = self.clone();
            move || {
                s.calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(s.up.load(Ordering::SeqCst))
            }
        }
    }

    /// Lets spawned tasks run up to the next timer (time is paused).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_when_the_api_server_comes_back_not_when_its_backoff_runs_out() {
        let reach = Reachability::default();
        let switch = Switch::default();
        let prober = tokio::spawn(reach.clone().run(switch.probe()));
        let start = tokio::time::Instant::now();
        let waiter = tokio::spawn({
            let reach = reach.clone();
            async move { (reach.wait(Duration::from_secs(30)).await, start.elapsed()) }
        });
        settle().await;
        // Away for 5 s of probes, then back.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            switch.calls.load(Ordering::SeqCst) >= 2,
            "the prober probes while a watch waits"
        );
        assert_eq!(reach.recoveries(), 0);
        switch.up.store(true, Ordering::SeqCst);
        let (woken, after) = waiter.await.unwrap();
        assert_eq!(woken, Woken::Recovered);
        assert_eq!(reach.recoveries(), 1);
        assert!(
            after < Duration::from_secs(5) + PROBE_EVERY + RECOVERY_JITTER + PROBE_EVERY,
            "woken {after:?} after the start, not at its 30 s backoff"
        );
        prober.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_watch_failing_while_the_api_server_answers_keeps_its_backoff() {
        let reach = Reachability::default();
        let switch = Switch::default();
        switch.up.store(true, Ordering::SeqCst);
        let prober = tokio::spawn(reach.clone().run(switch.probe()));
        let start = tokio::time::Instant::now();
        let woken = reach.wait(Duration::from_secs(10)).await;
        assert_eq!(woken, Woken::Backoff);
        assert!(start.elapsed() >= Duration::from_secs(10));
        assert_eq!(reach.recoveries(), 0, "never away, so never a recovery");
        prober.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn the_prober_is_idle_while_no_watch_waits() {
        let reach = Reachability::default();
        let switch = Switch::default();
        let prober = tokio::spawn(reach.clone().run(switch.probe()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(switch.calls.load(Ordering::SeqCst), 0);
        // One wait: probes during it, none after it.
        reach.wait(Duration::from_secs(2)).await;
        settle().await;
        let during = switch.calls.load(Ordering::SeqCst);
        assert!(during >= 2, "probed {during} times during a 2 s wait");
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(
            switch.calls.load(Ordering::SeqCst) <= during + 1,
            "at most the probe in flight when the wait ended"
        );
        prober.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn every_waiting_watch_wakes_on_one_recovery() {
        let reach = Reachability::default();
        let switch = Switch::default();
        let prober = tokio::spawn(reach.clone().run(switch.probe()));
        let waiters: Vec<_> = [5u64, 15, 30]
            .into_iter()
            .map(|s| {
                let reach = reach.clone();
                tokio::spawn(async move { reach.wait(Duration::from_secs(s * 60)).await })
            })
            .collect();
        settle().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        switch.up.store(true, Ordering::SeqCst);
        for w in waiters {
            assert_eq!(w.await.unwrap(), Woken::Recovered);
        }
        assert_eq!(reach.recoveries(), 1);
        prober.abort();
    }
}
