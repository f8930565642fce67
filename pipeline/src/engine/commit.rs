//! Committing input offsets: only up to what the engine's results make durable, counting and
//! retrying the commits the group refuses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Engine, EngineError, Stats};

impl Engine {
    /// Commits the offsets whose results are durable, without waiting for the coordinator
    /// (see [`vigil_ingest::KafkaSource::commit`]); commits refused since the last call are counted, and the
    /// offsets are committed again.
    pub(super) fn commit_offsets(&mut self) -> Result<(), EngineError> {
        self.commit_offsets_waiting(None)
    }

    /// Counts the commits refused since the last call and marks the offsets to commit again.
    pub(super) fn note_commit_failures(&mut self) {
        for e in self.source.take_commit_failures() {
            // During a rebalance the group refuses commits (stale generation, unknown member),
            // and during an outage nobody answers: the offsets are committed again at the next
            // chance, and a restore starts from the checkpoint's offsets anyway. Nothing is lost
            // by waiting.
            Stats::add(&self.stats.commit_failures, 1);
            self.dirty = true;
            tracing::warn!(error = %e, "offset commit refused; committing again at the next chance");
        }
    }

    /// Commits the offsets of the assigned partitions that no open window still holds, waiting
    /// up to `wait` for the coordinator's answer when given.
    pub(super) fn commit_offsets_waiting(&mut self, wait: Option<Duration>) -> Result<(), EngineError> {
        self.note_commit_failures();
        let pos: Vec<(Arc<str>, i32, i64)> =
            self.core.windower().commit_positions().into_iter().filter(|(t, p, _)| self.assigned.iter().any(|(at, ap)| at == t && ap == p)).collect();
        self.last_commit = Instant::now();
        let res = match wait {
            None => self.source.commit(&pos),
            Some(t) => self.source.commit_within(&pos, t),
        };
        match res {
            Ok(()) => {
                Stats::add(&self.stats.commits, 1);
                self.dirty = false;
            }
            Err(e) => {
                Stats::add(&self.stats.commit_failures, 1);
                tracing::warn!(error = %e, "offset commit refused; committing again at the next chance");
            }
        }
        Ok(())
    }

    /// Takes a checkpoint (when they are on) and commits the input offsets whose results are
    /// durable.
    pub async fn commit(&mut self) -> Result<(), EngineError> {
        if self.store.is_some() {
            self.checkpoint(None).await?;
        }
        self.commit_offsets_waiting(Some(Duration::from_secs(10)))
    }

    /// The offsets the group has committed (for tests and diagnostics).
    pub fn committed(&self) -> Result<Vec<(String, i32, i64)>, EngineError> {
        Ok(self.source.committed(Duration::from_secs(5))?)
    }
}
