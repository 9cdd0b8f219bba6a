//! The supervisor's backoff: how long it waits before restarting a
//! connection, with jitter so that clients cut off together do not come
//! back together.

use std::time::Duration;

use rand::Rng;

use super::SupervisorConfig;

/// Jitter applied to backoff delays: ±20 % on an exponential one, +0 to
/// 20 % on a fixed one (which stays the least wait `--backoff` promises), so
/// that clients a restart cut off together do not all come back in the same
/// millisecond.
const JITTER: f64 = 0.2;

/// The delay before each restart, with jitter: fixed, or doubling up to a maximum.
#[derive(Debug, Clone)]
pub(super) struct Backoff {
    base: Duration,
    max: Option<Duration>,
    current: Duration,
}

impl Backoff {
    /// The backoff `config` asks for.
    pub(super) fn from_config(config: &SupervisorConfig) -> Backoff {
        match config.backoff_max {
            Some(max) => Backoff::exponential(config.backoff, max),
            None => Backoff::fixed(config.backoff),
        }
    }

    /// `base`, lengthened by up to 20 % (jitter).
    pub(super) fn fixed(base: Duration) -> Backoff {
        Backoff {
            base,
            max: None,
            current: base,
        }
    }

    /// `base`, then doubling up to `max`, each delay jittered by ±20 % (but
    /// never past `max`).
    pub(super) fn exponential(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: Some(max.max(base)),
            current: base,
        }
    }

    /// The delay before the next restart.
    pub(super) fn next_delay(&mut self) -> Duration {
        let Some(max) = self.max else {
            return self
                .base
                .mul_f64(rand::rng().random_range(1.0..=1.0 + JITTER));
        };
        let delay = self.current;
        self.current = (self.current * 2).min(max);
        // Jitter spreads reconnects out, but never past the cap.
        delay
            .mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER))
            .min(max)
    }

    /// Back to `base` (a connection got a reply).
    pub(super) fn reset(&mut self) {
        self.current = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let base = Duration::from_millis(100);
        let mut backoff = Backoff::exponential(base, Duration::from_millis(400));
        let within = |d: Duration, nominal: u64| {
            let ms = d.as_secs_f64() * 1000.0;
            ms >= nominal as f64 * 0.8 - 0.001 && ms <= nominal as f64 * 1.2 + 0.001
        };
        for nominal in [100, 200, 400, 400] {
            let delay = backoff.next_delay();
            assert!(within(delay, nominal), "{delay:?} vs {nominal} ms");
            assert!(
                delay <= Duration::from_millis(400),
                "{delay:?} past the cap"
            );
        }
        backoff.reset();
        assert!(within(backoff.next_delay(), 100));
        let mut fixed = Backoff::fixed(base);
        let delays: Vec<Duration> = (0..100).map(|_| fixed.next_delay()).collect();
        assert!(
            delays.iter().all(|d| *d >= base && *d <= base.mul_f64(1.2)),
            "{delays:?}"
        );
        // Spread out: a hundred clients do not all wait the same.
        let spread = *delays.iter().max().unwrap() - *delays.iter().min().unwrap();
        assert!(spread >= Duration::from_millis(5), "{delays:?}");
    }
}
