//! Outlier detection: Envoy's consecutive-error detectors
//! (`source/common/upstream/outlier_detection_impl.cc`), driven by the
//! outcomes the proxy reports and by the caller's clock.
//!
//! - Every 5xx adds to a host's consecutive 5xx count; 502, 503 and 504 also
//!   add to its consecutive gateway error count; any other answer resets
//!   both. A local failure (connect error, reset, timeout) counts as a 503,
//!   unless `splitExternalLocalOriginErrors` counts it apart.
//! - Reaching a threshold ejects the host, unless that would put more than
//!   `maxEjectionPercent` of the hosts out: `(ejected + 1) / hosts` must not
//!   exceed it (Envoy since 1.31; before, one host could always be ejected,
//!   which Envoy keeps behind `always_eject_one_host`, off by default and not
//!   set by Istio). So with the default 10% fewer than 10 hosts are never
//!   ejected. Either way the count that triggered starts again.
//! - An ejected host stays out for `baseEjectionTime × backoff`, capped at
//!   `max(300s, baseEjectionTime)`. The backoff grows by one at each
//!   ejection and shrinks by one for every `interval` the host stays in.
//! - Envoy un-ejects on a timer firing every `interval` from the cluster's
//!   creation; here the same ticks are computed from the caller's `now`, so a
//!   host returns at the first tick at or after its ejection ends.

use std::time::{Duration, Instant};

use super::policy::OutlierSettings;

/// How one request to an endpoint ended, as outlier detection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered below 500 (same as `Status(200)`).
    Success,
    /// The endpoint answered with this status; 5xx count as errors, 502,
    /// 503 and 504 also as gateway errors.
    Status(u16),
    /// No answer for a local reason: the connection failed or was reset, or
    /// the request timed out. Counted as a 503 (so also as a gateway error),
    /// or apart with `splitExternalLocalOriginErrors`.
    LocalFailure,
}

/// The outlier state of one host.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostOutlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// While ejected: the interval tick at which the host returns.
    returns_at: Option<Instant>,
    /// Ejections in a row, decayed while the host stays in.
    backoff: u32,
    /// The tick at which the host last returned.
    returned_at: Option<Instant>,
}

impl HostOutlier {
    pub(crate) fn is_ejected(&self) -> bool {
        self.returns_at.is_some()
    }

    /// While ejected: when the host returns.
    pub(crate) fn returns_at(&self) -> Option<Instant> {
        self.returns_at
    }
}

/// The cluster-wide side: settings, the interval clock and counters.
#[derive(Debug)]
pub(crate) struct Detector {
    settings: OutlierSettings,
    /// The cluster's creation, from which interval ticks are counted.
    epoch: Instant,
    /// The earliest tick at which an ejected host returns.
    next_return: Option<Instant>,
    ejections: u64,
    overflows: u64,
}

impl Detector {
    pub(crate) fn new(settings: OutlierSettings, epoch: Instant) -> Self {
        Self {
            settings,
            epoch,
            next_return: None,
            ejections: 0,
            overflows: 0,
        }
    }

    /// Ejections so far.
    pub(crate) fn ejections(&self) -> u64 {
        self.ejections
    }

    /// Detections that did not eject because of `maxEjectionPercent`.
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Counts one outcome for `hosts[i]`. Returns whether any host changed
    /// between in and out (so the balancer must recompute its set).
    pub(crate) fn report(
        &mut self,
        hosts: &mut [HostOutlier],
        i: usize,
        outcome: Outcome,
        now: Instant,
    ) -> bool {
        let mut changed = self.sweep(hosts, now);
        let s = &self.settings;
        let Some(host) = hosts.get_mut(i) else {
            return changed;
        };
        // Envoy ignores what an ejected host does (requests still in flight,
        // or panic mode); its counts restart when it returns.
        if host.is_ejected() {
            return changed;
        }
        let mut detected = false;
        match outcome {
            Outcome::LocalFailure if s.split_local_origin => {
                host.consecutive_local += 1;
                if host.consecutive_local >= s.consecutive_local_origin {
                    host.consecutive_local = 0;
                    detected = true;
                }
            }
            outcome => {
                let status = match outcome {
                    Outcome::Status(code) => code,
                    Outcome::LocalFailure => 503,
                    Outcome::Success => 200,
                };
                if s.split_local_origin {
                    // An answer means the connection worked.
                    host.consecutive_local = 0;
                }
                if (500..600).contains(&status) {
                    if matches!(status, 502..=504) {
                        host.consecutive_gateway += 1;
                        if s.consecutive_gateway
                            .is_some_and(|n| host.consecutive_gateway >= n)
                        {
                            host.consecutive_gateway = 0;
                            detected = true;
                        }
                    } else {
                        host.consecutive_gateway = 0;
                    }
                    host.consecutive_5xx += 1;
                    if s.consecutive_5xx.is_some_and(|n| host.consecutive_5xx >= n) {
                        host.consecutive_5xx = 0;
                        detected = true;
                    }
                } else {
                    host.consecutive_5xx = 0;
                    host.consecutive_gateway = 0;
                }
            }
        }
        if detected {
            changed |= self.eject(hosts, i, now);
        }
        changed
    }

    /// Ejects `hosts[i]` if `maxEjectionPercent` allows.
    fn eject(&mut self, hosts: &mut [HostOutlier], i: usize, now: Instant) -> bool {
        let total = hosts.len() as u64;
        let ejected = hosts.iter().filter(|h| h.is_ejected()).count() as u64;
        if (ejected + 1) * 100 > u64::from(self.settings.max_ejection_percent) * total {
            self.overflows += 1;
            tracing::debug!(
                ejected,
                total,
                max_percent = self.settings.max_ejection_percent,
                "outlier not ejected: maxEjectionPercent reached"
            );
            return false;
        }
        let s = &self.settings;
        let Some(host) = hosts.get_mut(i) else {
            return false;
        };
        let mut backoff = self.decayed_backoff(host, now);
        let base = s.base_ejection_time;
        if base.saturating_mul(backoff) < s.max_ejection_time.saturating_add(base) {
            backoff += 1;
        }
        host.backoff = backoff;
        let out_for = base.saturating_mul(backoff).min(s.max_ejection_time);
        // Instant + a parsed duration does not overflow on 64-bit clocks;
        // if it ever did, the host would return at the next tick.
        let ends = now.checked_add(out_for).unwrap_or(now);
        let returns_at = self.tick_at_or_after(ends);
        host.returns_at = Some(returns_at);
        host.returned_at = None;
        self.ejections += 1;
        self.next_return = Some(self.next_return.map_or(returns_at, |t| t.min(returns_at)));
        true
    }

    /// Returns the hosts whose ejection has ended by the last tick at or
    /// before `now`. Returns whether any did.
    pub(crate) fn sweep(&mut self, hosts: &mut [HostOutlier], now: Instant) -> bool {
        match self.next_return {
            Some(t) if t <= now => {}
            _ => return false,
        }
        let mut changed = false;
        let mut next: Option<Instant> = None;
        for host in hosts.iter_mut() {
            let Some(returns_at) = host.returns_at else {
                continue;
            };
            if returns_at <= now {
                host.returns_at = None;
                host.returned_at = Some(returns_at);
                // Envoy restarts the counts, so a few errors right after
                // the return do not eject again.
                host.consecutive_5xx = 0;
                host.consecutive_gateway = 0;
                host.consecutive_local = 0;
                changed = true;
            } else {
                next = Some(next.map_or(returns_at, |t| t.min(returns_at)));
            }
        }
        self.next_return = next;
        changed
    }

    /// Recomputes the next return after hosts were added or removed.
    pub(crate) fn rearm(&mut self, hosts: &[HostOutlier]) {
        self.next_return = hosts.iter().filter_map(|h| h.returns_at).min();
    }

    /// The host's backoff after Envoy's per-tick decay: one less for every
    /// tick at least an interval after its return.
    fn decayed_backoff(&self, host: &HostOutlier, now: Instant) -> u32 {
        let Some(returned) = host.returned_at else {
            return host.backoff;
        };
        let last_tick = self.tick_at_or_before(now);
        let interval = self.settings.interval.as_nanos().max(1);
        let decay = last_tick.saturating_duration_since(returned).as_nanos() / interval;
        host.backoff
            .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX))
    }

    fn tick_at_or_after(&self, t: Instant) -> Instant {
        let interval = self.settings.interval.as_nanos().max(1);
        let since = t.saturating_duration_since(self.epoch).as_nanos();
        self.tick(since.div_ceil(interval) * interval, t)
    }

    fn tick_at_or_before(&self, t: Instant) -> Instant {
        let interval = self.settings.interval.as_nanos().max(1);
        let since = t.saturating_duration_since(self.epoch).as_nanos();
        self.tick(since / interval * interval, t)
    }

    fn tick(&self, nanos_since_epoch: u128, fallback: Instant) -> Instant {
        let nanos = u64::try_from(nanos_since_epoch).unwrap_or(u64::MAX);
        self.epoch
            .checked_add(Duration::from_nanos(nanos))
            .unwrap_or(fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector(interval: Duration) -> (Detector, Instant) {
        let epoch = Instant::now();
        let settings = OutlierSettings {
            interval,
            max_ejection_percent: 100,
            ..OutlierSettings::default()
        };
        (Detector::new(settings, epoch), epoch)
    }

    #[test]
    fn ticks_are_counted_from_the_epoch() {
        let (d, epoch) = detector(Duration::from_secs(10));
        let s = Duration::from_secs;
        assert_eq!(d.tick_at_or_after(epoch + s(31)), epoch + s(40));
        assert_eq!(d.tick_at_or_after(epoch + s(40)), epoch + s(40));
        assert_eq!(d.tick_at_or_before(epoch + s(39)), epoch + s(30));
        assert_eq!(d.tick_at_or_before(epoch), epoch);
    }

    #[test]
    fn a_host_returns_at_the_first_tick_after_its_time() {
        let (mut d, epoch) = detector(Duration::from_secs(10));
        let s = Duration::from_secs;
        let mut hosts = vec![HostOutlier::default(), HostOutlier::default()];
        let t = epoch + s(3);
        for _ in 0..5 {
            d.report(&mut hosts, 0, Outcome::Status(500), t);
        }
        assert!(hosts[0].is_ejected());
        // 30s after 3s is 33s; the sweep after that runs at 40s.
        assert!(!d.sweep(&mut hosts, epoch + s(39)));
        assert!(hosts[0].is_ejected());
        assert!(d.sweep(&mut hosts, epoch + s(40)));
        assert!(!hosts[0].is_ejected());
    }

    #[test]
    fn backoff_decays_one_step_per_interval_in_service() {
        let (mut d, epoch) = detector(Duration::from_secs(10));
        let s = Duration::from_secs;
        let mut hosts = vec![HostOutlier::default(), HostOutlier::default()];
        let eject = |d: &mut Detector, hosts: &mut Vec<HostOutlier>, t| {
            for _ in 0..5 {
                d.report(hosts, 0, Outcome::Status(500), t);
            }
        };
        eject(&mut d, &mut hosts, epoch);
        assert_eq!(hosts[0].backoff, 1);
        d.sweep(&mut hosts, epoch + s(30));
        eject(&mut d, &mut hosts, epoch + s(30));
        assert_eq!(hosts[0].backoff, 2);
        assert_eq!(hosts[0].returns_at, Some(epoch + s(90)));
        d.sweep(&mut hosts, epoch + s(90));
        // In for 25s: two ticks (100s, 110s) at least an interval after
        // the return, so the backoff drops from 2 to 0 and grows to 1.
        eject(&mut d, &mut hosts, epoch + s(115));
        assert_eq!(hosts[0].backoff, 1);
        assert_eq!(hosts[0].returns_at, Some(epoch + s(150)));
    }

    #[test]
    fn ejection_time_is_capped() {
        let (mut d, epoch) = detector(Duration::from_secs(1));
        let mut hosts = vec![HostOutlier::default(), HostOutlier::default()];
        let mut t = epoch;
        for _ in 0..20 {
            for _ in 0..5 {
                d.report(&mut hosts, 0, Outcome::Status(500), t);
            }
            let back = hosts[0].returns_at.expect("ejected");
            assert!(back - t <= Duration::from_secs(300));
            t = back;
            d.sweep(&mut hosts, t);
        }
        assert_eq!(d.ejections(), 20);
    }
}
