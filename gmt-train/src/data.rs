//! The training batches of a run: gmt-data's stream and batcher over as many epochs as asked,
//! with a position that checkpoints save and a resumed run continues from exactly.

use gmt_data::{BatchConfig, Batches, DataStream, Encoded, FitReport, StreamState};
use gmt_models::TokenBatch;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// Where a [`TrainingBatches`] stands: saved in a checkpoint's `trainer.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataPosition {
    /// The example stream's position (file, record, shuffle buffer, epoch).
    pub stream: StreamState,
    /// Examples the batcher had read but not yet used (packing, length grouping).
    pub pending: Vec<Encoded>,
    /// Truncated and dropped counts so far.
    pub fit: FitReport,
}

/// Micro-batches for training: the stream restarts for each further epoch, up to `epochs`
/// passes (`None`: as many as the steps need).
pub struct TrainingBatches<'e> {
    batches: Batches<DataStream<'e>>,
    epochs: Option<u64>,
}

impl<'e> TrainingBatches<'e> {
    /// Batches of `stream` (fresh, or resumed with the `position` a checkpoint saved).
    pub fn new(
        stream: DataStream<'e>,
        batching: BatchConfig,
        epochs: Option<u64>,
        position: Option<DataPosition>,
    ) -> Result<Self, TrainError> {
        let batches = match position {
            Some(p) => Batches::resume(stream, batching, p.pending, p.fit)?,
            None => Batches::new(stream, batching)?,
        };
        Ok(Self { batches, epochs })
    }

    /// The next micro-batch; at the end of the data, the first of the next epoch when more
    /// are due; `None` when every epoch is done.
    pub fn next_batch(&mut self) -> Result<Option<TokenBatch>, TrainError> {
        for _ in 0..2 {
            if let Some(batch) = self.batches.next() {
                return Ok(Some(batch?));
            }
            let stream = self.batches.examples_mut();
            if self.epochs.is_some_and(|e| stream.epoch() + 1 >= e) {
                return Ok(None);
            }
            stream.next_epoch()?;
        }
        Err(TrainError::NoExamples {
            files: self.batches.examples().source().files().to_vec(),
        })
    }

    /// The next `n` micro-batches: fewer at the end of the data, none when it is done.
    pub fn next_step(&mut self, n: usize) -> Result<Vec<TokenBatch>, TrainError> {
        let mut step = Vec::with_capacity(n);
        while step.len() < n {
            match self.next_batch()? {
                Some(batch) => step.push(batch),
                None => break,
            }
        }
        Ok(step)
    }

    /// Where the batches stand, for a checkpoint.
    pub fn position(&self) -> DataPosition {
        DataPosition {
            stream: self.batches.examples().state(),
            pending: self.batches.pending().cloned().collect(),
            fit: self.batches.report(),
        }
    }

    /// The stream (its report: records read, skipped, held out; the detected format).
    pub fn stream(&self) -> &DataStream<'e> {
        self.batches.examples()
    }

    /// Truncated and dropped examples so far.
    pub fn fit_report(&self) -> FitReport {
        self.batches.report()
    }
}
