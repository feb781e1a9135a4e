//! The batching policy as plain logic: which queued jobs form the next batch, and when it is
//! time to send it. No channels or threads here, so every rule has a unit test.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Triton-style dynamic batching settings for one model version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows one engine call gets (a single larger request still runs, alone).
    pub max_batch_rows: usize,
    /// How long the oldest queued job may wait for others to join it.
    pub max_delay: Duration,
    /// Batch sizes worth sending at once, without waiting for `max_delay`.
    pub preferred_rows: Vec<usize>,
}

/// What the planner needs to know about a queued job.
pub trait Batchable {
    /// Rows along the batch dimension.
    fn rows(&self) -> usize;
    /// Jobs merge only when their non-batch dimensions agree; this is those dimensions.
    fn shape_key(&self) -> &[Vec<usize>];
    /// The caller has gone (timed out, disconnected): the job needs no compute.
    fn abandoned(&self) -> bool;
    fn enqueued(&self) -> Instant;
}

pub struct BatchPlanner<J> {
    policy: BatchPolicy,
    pending: VecDeque<J>,
}

impl<J: Batchable> BatchPlanner<J> {
    pub fn new(policy: BatchPolicy) -> Self {
        BatchPlanner {
            policy,
            pending: VecDeque::new(),
        }
    }

    pub fn push(&mut self, job: J) {
        self.pending.push_back(job);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Rows queued in total (all shapes).
    pub fn rows(&self) -> usize {
        self.pending.iter().map(Batchable::rows).sum()
    }

    pub fn has_full_batch(&self) -> bool {
        self.rows() >= self.policy.max_batch_rows
    }

    /// When the oldest job has waited `max_delay`.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.pending
            .front()
            .map(|j| j.enqueued() + self.policy.max_delay)
    }

    /// Removes and returns jobs whose callers have gone.
    pub fn drain_abandoned(&mut self) -> Vec<J> {
        let (gone, kept): (Vec<J>, Vec<J>) = self.pending.drain(..).partition(Batchable::abandoned);
        self.pending = kept.into();
        gone
    }

    /// Removes and returns jobs that have waited longer than `limit` by `now`.
    pub fn drain_waited_longer(&mut self, now: Instant, limit: Duration) -> Vec<J> {
        let (stale, kept): (Vec<J>, Vec<J>) = self
            .pending
            .drain(..)
            .partition(|j| now.saturating_duration_since(j.enqueued()) > limit);
        self.pending = kept.into();
        stale
    }

    /// The next batch, if it is time to send one: the oldest job plus the following jobs of
    /// the same shape that fit in `max_batch_rows`, in arrival order. It is time when the
    /// batch is full, reached a preferred size, the oldest job waited `max_delay`, or `force`.
    pub fn take(&mut self, now: Instant, force: bool) -> Option<Vec<J>> {
        let first = self.pending.front()?;
        let key = first.shape_key().to_vec();
        let max = self.policy.max_batch_rows;
        let mut rows = 0usize;
        let mut chosen = Vec::new();
        let mut full = false;
        for (i, job) in self.pending.iter().enumerate() {
            if job.shape_key() != key.as_slice() {
                continue;
            }
            if !chosen.is_empty() && rows + job.rows() > max {
                full = true;
                break;
            }
            rows += job.rows();
            chosen.push(i);
            if rows >= max {
                full = true;
                break;
            }
        }
        let waited = now >= first.enqueued() + self.policy.max_delay;
        let preferred = self.policy.preferred_rows.contains(&rows);
        if !(force || full || waited || preferred) {
            return None;
        }
        let mut batch = Vec::with_capacity(chosen.len());
        for (taken, i) in chosen.into_iter().enumerate() {
            batch.push(
                self.pending
                    .remove(i - taken)
                    .expect("chosen indices are in the queue. This is a bug."),
            );
        }
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct FakeJob {
        id: usize,
        rows: usize,
        key: Vec<Vec<usize>>,
        gone: bool,
        at: Instant,
    }

    impl Batchable for FakeJob {
        fn rows(&self) -> usize {
            self.rows
        }
        fn shape_key(&self) -> &[Vec<usize>] {
            &self.key
        }
        fn abandoned(&self) -> bool {
            self.gone
        }
        fn enqueued(&self) -> Instant {
            self.at
        }
    }

    fn job(id: usize, rows: usize, at: Instant) -> FakeJob {
        FakeJob {
            id,
            rows,
            key: vec![vec![30]],
            gone: false,
            at,
        }
    }

    fn policy(max: usize, delay_ms: u64, preferred: &[usize]) -> BatchPolicy {
        BatchPolicy {
            max_batch_rows: max,
            max_delay: Duration::from_millis(delay_ms),
            preferred_rows: preferred.to_vec(),
        }
    }

    fn ids(batch: &[FakeJob]) -> Vec<usize> {
        batch.iter().map(|j| j.id).collect()
    }

    #[test]
    fn waits_until_full_or_delay() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(8, 5, &[]));
        p.push(job(1, 3, t0));
        p.push(job(2, 3, t0));
        assert!(
            p.take(t0, false).is_none(),
            "6 of 8 rows, delay not reached"
        );
        assert_eq!(p.flush_deadline(), Some(t0 + Duration::from_millis(5)));
        let batch = p.take(t0 + Duration::from_millis(5), false).unwrap();
        assert_eq!(ids(&batch), vec![1, 2]);
        assert!(p.is_empty());
    }

    #[test]
    fn full_batch_goes_at_once_and_the_rest_waits() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(8, 1000, &[]));
        for (id, rows) in [(1, 4), (2, 3), (3, 2), (4, 1)] {
            p.push(job(id, rows, t0));
        }
        // 4 + 3 = 7; the next job (2 rows) does not fit, so the batch is full.
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![1, 2]);
        assert_eq!(p.rows(), 3);
        assert!(p.take(t0, false).is_none());
    }

    #[test]
    fn zero_delay_sends_whatever_is_queued() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(64, 0, &[]));
        p.push(job(1, 1, t0));
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![1]);
    }

    #[test]
    fn preferred_size_goes_without_waiting() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(16, 1000, &[4]));
        p.push(job(1, 2, t0));
        assert!(p.take(t0, false).is_none());
        p.push(job(2, 2, t0));
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![1, 2]);
    }

    #[test]
    fn oversized_request_runs_alone() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(8, 1000, &[]));
        p.push(job(1, 20, t0));
        p.push(job(2, 1, t0));
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![1]);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn only_jobs_of_the_same_shape_merge() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(8, 0, &[]));
        p.push(job(1, 1, t0));
        p.push(FakeJob {
            key: vec![vec![31]],
            ..job(2, 1, t0)
        });
        p.push(job(3, 1, t0));
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![1, 3]);
        assert_eq!(ids(&p.take(t0, false).unwrap()), vec![2]);
    }

    #[test]
    fn abandoned_jobs_are_drained_and_force_flushes() {
        let t0 = Instant::now();
        let mut p = BatchPlanner::new(policy(8, 1000, &[]));
        p.push(FakeJob {
            gone: true,
            ..job(1, 1, t0)
        });
        p.push(job(2, 1, t0));
        assert_eq!(ids(&p.drain_abandoned()), vec![1]);
        assert!(p.take(t0, false).is_none());
        assert_eq!(ids(&p.take(t0, true).unwrap()), vec![2]);
        assert!(p.take(t0, true).is_none());
    }
}
