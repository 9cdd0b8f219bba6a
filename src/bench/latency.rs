//! Latency samples in bounded memory: HDR histograms (1 us to 60 s, 3
//! significant digits), however long the run.
//!
//! Every reply gives two samples: from when its message was due (the pacer's
//! schedule, with `--rate`) and from when it was written. The two are the
//! same in a closed loop; in a paced run the first is corrected for
//! coordinated omission (a stalled server delays the messages it kept the
//! bench from sending, and that wait is part of what a user sees), the second
//! is not.
//!
//! A histogram of that range is over a hundred KiB, too much to give each of
//! 10 000 connections its own. So the run shares one pair, behind a lock, and
//! each connection hands its samples over in batches ([`Batch`]): one lock per
//! [`BATCH`] replies, and a few hundred bytes per connection.

use std::sync::{Arc, Mutex, PoisonError};

use hdrhistogram::Histogram;

/// Lowest latency told apart, in nanoseconds (1 us); shorter ones count as
/// the lowest.
const LOWEST_NS: u64 = 1_000;
/// Highest latency recorded, in nanoseconds (60 s); longer ones count as it.
const HIGHEST_NS: u64 = 60_000_000_000;
/// Significant digits kept at every magnitude: 0.1 % resolution.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Samples a connection keeps before it takes the lock: at 100 000 replies/s
/// over all connections, a few thousand locks a second.
pub(super) const BATCH: usize = 32;

/// The run's two histograms, in nanoseconds.
pub(super) struct Histograms {
    /// From each message's due time (its write time in a closed loop).
    pub(super) from_due: Histogram<u64>,
    /// From each message's write.
    pub(super) from_write: Histogram<u64>,
}

impl Histograms {
    fn new() -> Histograms {
        let empty = || {
            Histogram::new_with_bounds(LOWEST_NS, HIGHEST_NS, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid")
        };
        Histograms {
            from_due: empty(),
            from_write: empty(),
        }
    }
}

/// Where every connection's samples end up.
pub(super) struct Recorder {
    histograms: Mutex<Histograms>,
}

impl Recorder {
    pub(super) fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            histograms: Mutex::new(Histograms::new()),
        })
    }

    /// The histograms, once every batch is in.
    pub(super) fn into_histograms(self: Arc<Recorder>) -> Histograms {
        match Arc::try_unwrap(self) {
            Ok(recorder) => {
                (recorder.histograms.into_inner()).unwrap_or_else(PoisonError::into_inner)
            }
            // A worker still holds a batch (it cannot, once all are joined):
            // take a copy of what is in.
            Err(shared) => {
                let histograms = shared.lock();
                Histograms {
                    from_due: histograms.from_due.clone(),
                    from_write: histograms.from_write.clone(),
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histograms> {
        // Recording cannot panic halfway (values saturate), so a poisoned
        // lock's histograms are whole.
        self.histograms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's samples not yet handed to the [`Recorder`]; dropping it
/// hands them over.
pub(super) struct Batch {
    samples: Vec<(u64, u64)>,
    recorder: Arc<Recorder>,
}

impl Batch {
    pub(super) fn new(recorder: Arc<Recorder>) -> Batch {
        Batch {
            samples: Vec::new(),
            recorder,
        }
    }

    /// Records one reply: nanoseconds since its message was due, and since
    /// it was written.
    pub(super) fn record(&mut self, from_due_ns: u64, from_write_ns: u64) {
        if self.samples.capacity() == 0 {
            self.samples.reserve_exact(BATCH);
        }
        self.samples.push((from_due_ns, from_write_ns));
        if self.samples.len() == BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.samples.is_empty() {
            return;
        }
        let mut histograms = self.recorder.lock();
        for &(from_due, from_write) in &self.samples {
            histograms.from_due.saturating_record(from_due);
            histograms.from_write.saturating_record(from_write);
        }
        drop(histograms);
        self.samples.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A histogram's percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Highest.
    pub max_us: f64,
}

impl Percentiles {
    /// Of a histogram in nanoseconds; all 0 when it is empty. Each figure is
    /// the top of its bucket, within 0.1 % (above 1 us) of the true sample.
    pub(super) fn of(histogram: &Histogram<u64>) -> Percentiles {
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Percentiles {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p90_us: us(histogram.value_at_quantile(0.90)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_reach_the_histograms_and_percentiles_are_nearest_rank() {
        let recorder = Recorder::new();
        let mut first = Batch::new(recorder.clone());
        let mut second = Batch::new(recorder.clone());
        // 1..=1000 us from the due time, a tenth of that from the write,
        // spread over two connections (so some batches are partial).
        for us in 1..=1000u64 {
            let batch = if us % 3 == 0 { &mut second } else { &mut first };
            batch.record(us * 1000, us * 100);
        }
        drop((first, second));
        let histograms = recorder.into_histograms();
        assert_eq!(histograms.from_due.len(), 1000);
        let due = Percentiles::of(&histograms.from_due);
        let within = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.5;
        assert!(within(due.p50_us, 500.0), "{due:?}");
        assert!(within(due.p90_us, 900.0), "{due:?}");
        assert!(within(due.p99_us, 990.0), "{due:?}");
        assert!(within(due.p999_us, 999.0), "{due:?}");
        assert!(within(due.max_us, 1000.0), "{due:?}");
        let write = Percentiles::of(&histograms.from_write);
        assert!(within(write.p99_us, 99.0), "{write:?}");
    }

    #[test]
    fn the_range_saturates_instead_of_failing_and_memory_stays_fixed() {
        let recorder = Recorder::new();
        let mut batch = Batch::new(recorder.clone());
        batch.record(0, 0);
        batch.record(u64::MAX, u64::MAX);
        drop(batch);
        let histograms = recorder.into_histograms();
        let due = Percentiles::of(&histograms.from_due);
        assert!(due.max_us >= 60e6 && due.max_us < 61e6, "{due:?}");
        assert_eq!(
            Percentiles::of(&Histogram::new(3).expect("valid")).max_us,
            0.0
        );
        // What "bounded memory" means here: the counts of one histogram.
        let bytes = histograms.from_due.distinct_values() * size_of::<u64>();
        assert!(bytes < 200 << 10, "{bytes} bytes");
    }
}
