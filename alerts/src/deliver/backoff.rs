//! Retry delays for failed deliveries: capped exponential backoff with jitter.

use std::time::Duration;

use rand::Rng;

/// The delay before the next attempt after `failed_attempts` earlier failures, without jitter:
/// `initial * 2^(failed_attempts - 1)`, capped at `max`.
pub fn base_delay(initial: Duration, max: Duration, failed_attempts: u32) -> Duration {
    let exponent = failed_attempts.saturating_sub(1).min(31);
    initial.saturating_mul(1 << exponent).min(max)
}

/// [`base_delay`] with "equal jitter": a random delay in `[base / 2, base]`. Receivers that
/// come back after an outage are not hit by every worker's retries in the same instant, and
/// the delay still grows with each failure.
pub fn delay(initial: Duration, max: Duration, failed_attempts: u32) -> Duration {
    let base = base_delay(initial, max, failed_attempts);
    let half = base / 2;
    let spread = u64::try_from((base - half).as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INITIAL: Duration = Duration::from_millis(1000);
    const MAX: Duration = Duration::from_secs(600);

    #[test]
    fn doubles_from_the_initial_delay() {
        assert_eq!(base_delay(INITIAL, MAX, 1), Duration::from_secs(1));
        assert_eq!(base_delay(INITIAL, MAX, 2), Duration::from_secs(2));
        assert_eq!(base_delay(INITIAL, MAX, 3), Duration::from_secs(4));
        assert_eq!(base_delay(INITIAL, MAX, 10), Duration::from_secs(512));
    }

    #[test]
    fn is_capped_and_never_overflows() {
        assert_eq!(base_delay(INITIAL, MAX, 11), MAX);
        assert_eq!(base_delay(INITIAL, MAX, 64), MAX);
        assert_eq!(base_delay(INITIAL, MAX, u32::MAX), MAX);
        assert_eq!(base_delay(Duration::MAX, MAX, 5), MAX);
    }

    #[test]
    fn is_monotone() {
        let mut previous = Duration::ZERO;
        for attempts in 0..100 {
            let d = base_delay(INITIAL, MAX, attempts);
            assert!(d >= previous, "attempt {attempts}: {d:?} < {previous:?}");
            previous = d;
        }
    }

    #[test]
    fn jitter_stays_between_half_and_the_full_delay() {
        for attempts in 1..20 {
            let base = base_delay(INITIAL, MAX, attempts);
            for _ in 0..50 {
                let d = delay(INITIAL, MAX, attempts);
                assert!(
                    d >= base / 2 && d <= base,
                    "{d:?} outside [{:?}, {base:?}]",
                    base / 2
                );
            }
        }
        assert_eq!(delay(Duration::ZERO, MAX, 3), Duration::ZERO);
    }
}
