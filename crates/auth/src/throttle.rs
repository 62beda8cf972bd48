//! Throttling of failed sign-ins and failed client authentications (decisions §22).
//!
//! Only failures count. Each key (a user or client id with the client's address, and the address
//! alone) has a GCRA budget of `n` failures per minute: a failure moves the key's "theoretical
//! arrival time" one interval (60 s / n) into the future, and an attempt is refused while that
//! time lies more than `n - 1` intervals ahead — so `n` failures in a burst, then one more every
//! interval. The check happens before any argon2 work, and it reserves a failure up front: an
//! attempt is counted as failed until it calls [`Attempt::succeeded`], so many concurrent guesses
//! cannot all slip past the check before the first of them fails. A correct password or secret
//! gives its reservation back, so successes never count.
//!
//! Credentials that cannot be guessed (a signed client assertion) take
//! [`FailureThrottle::begin_unreserved`] instead: the check alone up front, and a failure counted
//! when the attempt is found wrong (a cancelled request counts nothing). A reservation there would only refuse a busy backend
//! client's concurrent grants once more of them were in flight than its failure budget.
//!
//! Keys whose budget is whole again are pruned (at most once a second, and whenever the map has
//! doubled since the last prune), so the maps hold only keys with failures in the last minute.
//!
//! The counters live in the process: behind a load balancer each process counts its own.
//!
//! ```
//! use std::sync::Arc;
//! use fhirgate_auth::throttle::FailureThrottle;
//!
//! let throttle = Arc::new(FailureThrottle::new(2, 60));
//! let addr = Some("192.0.2.1".parse().unwrap());
//! for _ in 0..2 {
//!     drop(throttle.begin("amy", addr).unwrap()); // dropped unredeemed: a failure
//! }
//! assert!(throttle.begin("amy", addr).is_err()); // amy's budget is spent for now
//! throttle.begin("bob", addr).unwrap().succeeded(); // a success gives its reservation back
//! ```

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window the limits are per.
const WINDOW: Duration = Duration::from_secs(60);
/// Fewest keys before a size-triggered prune.
const PRUNE_MIN: usize = 1024;

/// One keyed GCRA limiter of failures.
struct Keyed<K> {
    /// Time between failures once the burst is spent.
    interval: Duration,
    /// How far ahead the theoretical arrival time may be while attempts are still allowed.
    tolerance: Duration,
    state: Mutex<KeyedState<K>>,
}

struct KeyedState<K> {
    tat: HashMap<K, Instant>,
    next_prune: Option<Instant>,
    prune_at_len: usize,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(per_minute: u32) -> Self {
        let n = per_minute.max(1);
        let interval = WINDOW / n;
        Keyed {
            interval,
            tolerance: interval * (n - 1),
            state: Mutex::new(KeyedState {
                tat: HashMap::new(),
                next_prune: None,
                prune_at_len: PRUNE_MIN,
            }),
        }
    }

    /// How long `key` must wait, if it is throttled at `now`.
    fn wait(&self, st: &KeyedState<K>, key: &K, now: Instant) -> Option<Duration> {
        let tat = *st.tat.get(key)?;
        let allowed_from = tat.checked_sub(self.tolerance).unwrap_or(tat);
        (allowed_from > now).then(|| allowed_from - now)
    }

    fn charge(&self, st: &mut KeyedState<K>, key: &K, now: Instant) {
        let tat = st.tat.get(key).copied().unwrap_or(now).max(now);
        st.tat.insert(key.clone(), tat + self.interval);
        self.prune(st, now);
    }

    fn refund(&self, st: &mut KeyedState<K>, key: &K, now: Instant) {
        if let Some(tat) = st.tat.get_mut(key) {
            match tat.checked_sub(self.interval) {
                Some(t) if t > now => *tat = t,
                _ => {
                    st.tat.remove(key);
                }
            }
        }
    }

    /// Drop keys whose budget is whole again: they behave exactly like absent keys.
    fn prune(&self, st: &mut KeyedState<K>, now: Instant) {
        let due = st.next_prune.is_none_or(|t| now >= t) || st.tat.len() >= st.prune_at_len;
        if !due {
            return;
        }
        st.tat.retain(|_, tat| *tat > now);
        st.next_prune = Some(now + Duration::from_secs(1));
        st.prune_at_len = (st.tat.len() * 2).max(PRUNE_MIN);
    }
}

/// The per-address key: an IPv4 address, or the /64 prefix of an IPv6 one (one subscriber
/// usually holds a whole /64, so counting single IPv6 addresses would count nothing).
fn address_key(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V4(_) => a,
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Failure limits per (name, address) and per address. Names compare case-insensitively.
pub struct FailureThrottle {
    per_name: Keyed<(String, Option<IpAddr>)>,
    per_address: Keyed<IpAddr>,
    /// What it throttles (`sign-in`, `client-auth`): the `kind` label of
    /// `fhirgate_throttled_total`.
    kind: &'static str,
}

/// A refused attempt: retry after this long (at least one second, for `Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled(pub Duration);

impl Throttled {
    /// Whole seconds for a `Retry-After` header, at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        self.0.as_secs_f64().ceil().max(1.0) as u64
    }
}

/// An attempt that passed the check. It counts as a failure unless [`Attempt::succeeded`] is
/// called (dropping it — an error, a cancelled request — keeps the failure counted).
#[must_use = "an attempt counts as failed unless `succeeded` is called"]
pub struct Attempt {
    throttle: Arc<FailureThrottle>,
    name: (String, Option<IpAddr>),
    address: Option<IpAddr>,
    /// The failure was charged up front ([`FailureThrottle::begin`]); otherwise only
    /// [`Attempt::failed`] charges it.
    reserved: bool,
}

impl Attempt {
    /// The credentials were right: give the reserved failure back.
    pub fn succeeded(self) {
        if self.reserved {
            self.throttle
                .refund_at(&self.name, self.address, Instant::now());
        }
    }

    /// The credentials were wrong: count the failure (a reserved attempt already counts it).
    /// An unreserved attempt dropped without either — its request was cancelled — counts
    /// nothing: the check never answered.
    pub fn failed(self) {
        if !self.reserved {
            self.throttle
                .charge_at(&self.name, self.address, Instant::now());
        }
    }
}

impl FailureThrottle {
    pub fn new(failures_per_name_per_minute: u32, failures_per_address_per_minute: u32) -> Self {
        FailureThrottle {
            per_name: Keyed::new(failures_per_name_per_minute),
            per_address: Keyed::new(failures_per_address_per_minute),
            kind: "other",
        }
    }

    /// The same throttle, counted in metrics as `kind`.
    pub fn named(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }

    fn keys(name: &str, address: Option<IpAddr>) -> ((String, Option<IpAddr>), Option<IpAddr>) {
        let address = address.map(address_key);
        ((name.to_lowercase(), address), address)
    }

    /// Check `name` from `address` and, when not throttled, reserve one failure for the attempt.
    pub fn begin(
        self: &Arc<Self>,
        name: &str,
        address: Option<IpAddr>,
    ) -> Result<Attempt, Throttled> {
        self.attempt(name, address, true)
    }

    /// Check `name` from `address` without reserving anything: the attempt counts as a failure
    /// only through [`Attempt::failed`]. For credentials that cannot be guessed (signatures),
    /// where concurrent attempts need not be held back.
    pub fn begin_unreserved(
        self: &Arc<Self>,
        name: &str,
        address: Option<IpAddr>,
    ) -> Result<Attempt, Throttled> {
        self.attempt(name, address, false)
    }

    fn attempt(
        self: &Arc<Self>,
        name: &str,
        address: Option<IpAddr>,
        reserve: bool,
    ) -> Result<Attempt, Throttled> {
        let (name, address) = Self::keys(name, address);
        let now = Instant::now();
        let checked = if reserve {
            self.begin_at(&name, address, now)
        } else {
            self.wait_at(&name, address, now).map_or(Ok(()), Err)
        };
        if let Err(t) = checked {
            metrics::counter!("fhirgate_throttled_total", "kind" => self.kind).increment(1);
            return Err(t);
        }
        Ok(Attempt {
            throttle: self.clone(),
            name,
            address,
            reserved: reserve,
        })
    }

    /// Whether `name` from `address` is throttled now, without counting anything.
    pub fn throttled(&self, name: &str, address: Option<IpAddr>) -> Option<Throttled> {
        let (name, address) = Self::keys(name, address);
        self.wait_at(&name, address, Instant::now())
    }

    fn wait_at(
        &self,
        name: &(String, Option<IpAddr>),
        address: Option<IpAddr>,
        now: Instant,
    ) -> Option<Throttled> {
        let by_address = address.and_then(|a| {
            let st = self.per_address.state.lock().ok()?;
            self.per_address.wait(&st, &a, now)
        });
        let by_name = match self.per_name.state.lock() {
            Ok(st) => self.per_name.wait(&st, name, now),
            // a poisoned lock fails closed
            Err(_) => Some(WINDOW),
        };
        by_address.max(by_name).map(Throttled)
    }

    fn begin_at(
        &self,
        name: &(String, Option<IpAddr>),
        address: Option<IpAddr>,
        now: Instant,
    ) -> Result<(), Throttled> {
        // both locks for the check and the charge, so that two concurrent attempts cannot both
        // take the last failure of the budget (always in this order: no deadlock)
        let Ok(mut names) = self.per_name.state.lock() else {
            return Err(Throttled(WINDOW));
        };
        let Ok(mut addresses) = self.per_address.state.lock() else {
            return Err(Throttled(WINDOW));
        };
        let by_name = self.per_name.wait(&names, name, now);
        let by_address = address.and_then(|a| self.per_address.wait(&addresses, &a, now));
        if let Some(wait) = by_name.max(by_address) {
            return Err(Throttled(wait));
        }
        self.per_name.charge(&mut names, name, now);
        if let Some(a) = address {
            self.per_address.charge(&mut addresses, &a, now);
        }
        Ok(())
    }

    fn charge_at(&self, name: &(String, Option<IpAddr>), address: Option<IpAddr>, now: Instant) {
        if let Ok(mut names) = self.per_name.state.lock() {
            self.per_name.charge(&mut names, name, now);
        }
        if let Some(a) = address
            && let Ok(mut addresses) = self.per_address.state.lock()
        {
            self.per_address.charge(&mut addresses, &a, now);
        }
    }

    fn refund_at(&self, name: &(String, Option<IpAddr>), address: Option<IpAddr>, now: Instant) {
        if let Ok(mut names) = self.per_name.state.lock() {
            self.per_name.refund(&mut names, name, now);
        }
        if let Some(a) = address
            && let Ok(mut addresses) = self.per_address.state.lock()
        {
            self.per_address.refund(&mut addresses, &a, now);
        }
    }

    /// Keys held (names, addresses): for tests of pruning.
    pub fn len(&self) -> (usize, usize) {
        let n = self.per_name.state.lock().map(|s| s.tat.len()).unwrap_or(0);
        let a = self
            .per_address
            .state
            .lock()
            .map(|s| s.tat.len())
            .unwrap_or(0);
        (n, a)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    /// A failed attempt at `now`.
    fn fail(t: &FailureThrottle, name: &str, a: Option<IpAddr>, now: Instant) -> bool {
        let (n, a) = FailureThrottle::keys(name, a);
        t.begin_at(&n, a, now).is_ok()
    }

    /// A successful attempt at `now`.
    fn succeed(t: &FailureThrottle, name: &str, a: Option<IpAddr>, now: Instant) -> bool {
        let (n, a) = FailureThrottle::keys(name, a);
        let ok = t.begin_at(&n, a, now).is_ok();
        if ok {
            t.refund_at(&n, a, now);
        }
        ok
    }

    #[test]
    fn unreserved_attempts_count_only_when_they_fail() {
        let t = Arc::new(FailureThrottle::new(2, 100));
        let a = ip("192.0.2.9");
        // many concurrent attempts in flight: none is refused, none counts yet
        let inflight: Vec<_> = (0..10)
            .map(|_| t.begin_unreserved("backend", a).unwrap())
            .collect();
        assert!(t.throttled("backend", a).is_none());
        for attempt in inflight {
            attempt.succeeded();
        }
        assert!(t.throttled("backend", a).is_none());
        assert!(t.is_empty());
        // cancelled attempts (dropped unanswered) count nothing
        for _ in 0..5 {
            drop(t.begin_unreserved("backend", a).unwrap());
        }
        assert!(t.throttled("backend", a).is_none());
        // two failures spend the budget of 2
        t.begin_unreserved("backend", a).unwrap().failed();
        assert!(t.throttled("backend", a).is_none());
        t.begin_unreserved("backend", a).unwrap().failed();
        assert!(t.throttled("backend", a).is_some());
        assert!(t.begin_unreserved("backend", a).is_err());
        assert!(t.begin("backend", a).is_err());
    }

    #[test]
    fn failures_per_name_and_address() {
        let t = FailureThrottle::new(2, 3);
        let now = Instant::now();
        let a = ip("127.0.0.1");
        assert!(fail(&t, "amy", a, now));
        assert!(fail(&t, "AMY", a, now));
        assert!(!fail(&t, "amy", a, now), "third failure for amy");
        assert!(fail(&t, "amy", ip("127.0.0.2"), now), "another address");
        assert!(fail(&t, "bob", a, now), "the address's third failure");
        assert!(!fail(&t, "carl", a, now), "the address is spent");
        // one interval later (30 s for 2/min) amy may try once more
        let later = now + Duration::from_secs(30);
        assert!(fail(&t, "amy", ip("127.0.0.9"), later));
        let w = t
            .wait_at(&FailureThrottle::keys("amy", a).0, a, now)
            .unwrap();
        assert!(w.0 <= Duration::from_secs(30) && w.retry_after_secs() >= 1);
    }

    #[test]
    fn successes_never_count() {
        let t = FailureThrottle::new(10, 60);
        let now = Instant::now();
        let a = ip("10.0.0.1");
        for i in 0..100 {
            assert!(succeed(&t, "amy", a, now), "success {i} refused");
        }
        // a success between failures does not spend the budget either
        for _ in 0..9 {
            assert!(fail(&t, "amy", a, now));
        }
        assert!(succeed(&t, "amy", a, now));
        assert!(fail(&t, "amy", a, now), "the tenth failure");
        assert!(
            !succeed(&t, "amy", a, now),
            "throttled: even the right password waits"
        );
    }

    #[test]
    fn a_reserved_attempt_counts_until_it_succeeds() {
        let t = Arc::new(FailureThrottle::new(2, 60));
        let a = ip("10.0.0.1");
        let first = t.begin("amy", a).unwrap();
        let second = t.begin("amy", a).unwrap();
        assert!(
            t.begin("amy", a).is_err(),
            "two attempts in flight use the budget"
        );
        first.succeeded();
        second.succeeded();
        assert!(t.throttled("amy", a).is_none());
        assert!(t.is_empty(), "refunded keys are dropped");
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let t = FailureThrottle::new(100, 2);
        let now = Instant::now();
        assert!(fail(&t, "a", ip("2001:db8::1"), now));
        assert!(fail(&t, "b", ip("2001:db8::2"), now));
        assert!(!fail(&t, "c", ip("2001:db8::ffff:1"), now));
        assert!(fail(&t, "c", ip("2001:db8:0:1::1"), now), "another /64");
    }

    #[test]
    fn keyed_limiters_are_pruned() {
        let t = FailureThrottle::new(10, 60);
        let start = Instant::now();
        for i in 0..5000u32 {
            let a = IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
            fail(&t, &format!("user-{i}"), Some(a), start);
        }
        assert_eq!(t.len(), (5000, 5000));
        // a minute on, every key's budget is whole again; the next failure prunes them
        let later = start + WINDOW + Duration::from_secs(1);
        fail(&t, "someone", ip("10.9.9.9"), later);
        assert_eq!(t.len(), (1, 1));
        // and within the window the maps hold only the keys that failed recently: a failure
        // every 40 ms from fresh addresses, each key's budget whole again 6 s later
        for i in 0..3000u32 {
            let now = later + Duration::from_millis(u64::from(i) * 40);
            let a = IpAddr::from([10, 2, (i >> 8) as u8, i as u8]);
            fail(&t, &format!("u{i}"), Some(a), now);
        }
        let (names, addresses) = t.len();
        assert!(
            names < 300 && addresses < 300,
            "{names}, {addresses} keys held"
        );
    }
}
