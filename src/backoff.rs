//! How long a failed job waits before its next attempt.

use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` (1-based) failed → wait
/// `min(base × 2^(n-1), max)`, then ± `jitter` of that at random so that jobs that failed
/// together do not retry together.
///
/// ```
/// use std::time::Duration;
/// use skiplock::Backoff;
///
/// let backoff = Backoff {
///     base: Duration::from_millis(500),
///     max: Duration::from_secs(60),
///     jitter: 0.0,
/// };
/// assert_eq!(backoff.delay(1), Duration::from_millis(500));
/// assert_eq!(backoff.delay(3), Duration::from_secs(2));
/// assert_eq!(backoff.delay(30), Duration::from_secs(60));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The wait after the first failed attempt.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Random spread as a fraction of the wait, from 0.0 (none) to 1.0.
    pub jitter: f64,
}

impl Backoff {
    /// The default: 2 s after the first failure, doubling up to 24 h, ±20 % jitter. With
    /// [`DEFAULT_MAX_ATTEMPTS`](crate::DEFAULT_MAX_ATTEMPTS) a job keeps retrying for about
    /// nine and a half days.
    pub const DEFAULT: Self = Self {
        base: Duration::from_secs(2),
        max: Duration::from_secs(24 * 60 * 60),
        jitter: 0.2,
    };

    /// The wait after attempt `attempt` (1-based) failed.
    pub fn delay(&self, attempt: i32) -> Duration {
        let exponent = attempt.saturating_sub(1).clamp(0, 62) as u32;
        let wait = self
            .base
            .checked_mul(1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX))
            .map_or(self.max, |wait| wait.min(self.max));
        // NaN or out-of-range jitter means none; the result saturates instead of panicking.
        let jitter = if self.jitter.is_finite() {
            self.jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if jitter == 0.0 {
            return wait;
        }
        let factor = 1.0 + jitter * (fastrand::f64() * 2.0 - 1.0);
        Duration::try_from_secs_f64(wait.as_secs_f64() * factor).unwrap_or(wait)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_then_caps() {
        let backoff = Backoff {
            jitter: 0.0,
            ..Backoff::DEFAULT
        };
        assert_eq!(backoff.delay(1), Duration::from_secs(2));
        assert_eq!(backoff.delay(2), Duration::from_secs(4));
        assert_eq!(backoff.delay(16), Duration::from_secs(65_536));
        assert_eq!(backoff.delay(17), Duration::from_secs(86_400));
        assert_eq!(backoff.delay(i32::MAX), Duration::from_secs(86_400));
        assert_eq!(backoff.delay(0), Duration::from_secs(2));
        assert_eq!(backoff.delay(-5), Duration::from_secs(2));
    }

    #[test]
    fn odd_settings_saturate_instead_of_panicking() {
        let nan = Backoff {
            jitter: f64::NAN,
            ..Backoff::DEFAULT
        };
        assert_eq!(nan.delay(1), Duration::from_secs(2));
        let huge = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter: 0.5,
        };
        // Jitter of 0.5 scales by 0.5 to 1.5; past Duration::MAX it saturates instead.
        for _ in 0..1_000 {
            assert!(huge.delay(40) >= Duration::MAX / 4);
        }
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for attempt in 1..=20 {
            let plain = Backoff {
                jitter: 0.0,
                ..Backoff::DEFAULT
            }
            .delay(attempt);
            let jittered = Backoff::DEFAULT.delay(attempt);
            assert!(jittered >= plain.mul_f64(0.8) && jittered <= plain.mul_f64(1.2));
        }
    }
}
