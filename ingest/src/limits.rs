//! Per-device rate limit, so one faulty or misbehaving device cannot take the write capacity
//! every other device shares. Each device has a bucket of `burst_readings` that refills at
//! `readings_per_second`; a submission takes one token per reading (at least one, so empty
//! calls count too). The burst is sized for a legitimate catch-up (a 1-minute CGM that was
//! offline for two weeks); the rate is far above any device's normal average.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use uuid::Uuid;

use crate::config::RateLimitSettings;

pub struct DeviceLimits {
    limiter: Option<DefaultKeyedRateLimiter<Uuid>>,
    clock: DefaultClock,
    settings: RateLimitSettings,
}

/// Why a submission was refused, and when the device may try again (`None`: never as it
/// is, because it is larger than the burst).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub retry_after: Option<Duration>,
    pub message: String,
}

impl DeviceLimits {
    pub fn new(settings: &RateLimitSettings) -> Self {
        let quota = NonZeroU32::new(settings.readings_per_second).and_then(|rate| {
            Some(Quota::per_second(rate).allow_burst(NonZeroU32::new(settings.burst_readings)?))
        });
        Self {
            limiter: quota.map(RateLimiter::keyed),
            clock: DefaultClock::default(),
            settings: settings.clone(),
        }
    }

    /// Takes `readings` tokens from `device`'s bucket, or says how long to wait.
    pub fn check(&self, device: Uuid, readings: usize) -> Result<(), OverLimit> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let cells = u32::try_from(readings.max(1))
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MAX);
        let s = &self.settings;
        match limiter.check_key_n(&device, cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(OverLimit {
                    retry_after: Some(wait),
                    message: format!(
                        "device {device} is over its limit of {} readings/s (bursts up to {}); \
                         retry after {} ms",
                        s.readings_per_second,
                        s.burst_readings,
                        wait.as_millis().max(1)
                    ),
                })
            }
            Err(_) => Err(OverLimit {
                retry_after: None,
                message: format!(
                    "{readings} readings at once exceed device {device}'s burst limit of {}; \
                     send them in smaller batches",
                    s.burst_readings
                ),
            }),
        }
    }

    /// Forgets devices whose buckets are full again, so the map holds active devices only.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: u32, burst: u32) -> DeviceLimits {
        DeviceLimits::new(&RateLimitSettings {
            readings_per_second: rate,
            burst_readings: burst,
        })
    }

    #[test]
    fn a_device_may_burst_then_is_told_when_to_retry() {
        let l = limits(10, 100);
        let d = Uuid::new_v4();
        assert_eq!(l.check(d, 100), Ok(()));
        let over = l.check(d, 10).expect_err("bucket empty");
        let wait = over.retry_after.expect("a wait");
        assert!(wait > Duration::from_millis(500), "{over:?}");
        assert!(wait <= Duration::from_millis(1001), "{over:?}");
        assert!(over.message.contains("retry after"), "{}", over.message);
    }

    #[test]
    fn one_device_over_its_limit_does_not_limit_another() {
        let l = limits(1, 5);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(l.check(a, 5), Ok(()));
        assert!(l.check(a, 1).is_err());
        assert_eq!(l.check(b, 5), Ok(()));
    }

    #[test]
    fn more_readings_than_the_burst_can_never_pass_and_say_so() {
        let l = limits(10, 100);
        let over = l.check(Uuid::new_v4(), 101).expect_err("too many at once");
        assert_eq!(over.retry_after, None);
        assert!(over.message.contains("smaller batches"), "{}", over.message);
    }

    #[test]
    fn empty_submissions_count_as_one() {
        let l = limits(1, 2);
        let d = Uuid::new_v4();
        assert_eq!(l.check(d, 0), Ok(()));
        assert_eq!(l.check(d, 0), Ok(()));
        assert!(l.check(d, 0).is_err());
    }

    #[test]
    fn zero_disables_the_limit() {
        let l = limits(0, 0);
        let d = Uuid::new_v4();
        for _ in 0..1000 {
            assert_eq!(l.check(d, 5000), Ok(()));
        }
    }
}
