//! Checkpoints of a training run: written atomically, the last K kept, found again by
//! `--resume`.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding
//! - `model.bin`: the weights as a burn record (full precision; it also carries parameter
//!   identities, to which the optimizer state is keyed),
//! - `optimizer.bin`: the GMT record (AdamW moments, GMT step and RNG seed),
//! - `trainer.json`: [`TrainerState`] (step, data-stream position, counters),
//! - `config.toml`: the settings of the run.
//!
//! It is written under a temporary name (`.partial-step-NNNNNNNN`), every file synced, then
//! renamed; a crash or a full disk leaves at most a `.partial-*` directory, which is never
//! mistaken for a checkpoint and is removed by the next write.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use gmt_data::{Encoded, FitReport, StreamState};
use serde::{Deserialize, Serialize};

use crate::settings::TrainSettings;

const MODEL_FILE: &str = "model.bin";
const OPTIMIZER_FILE: &str = "optimizer.bin";
const TRAINER_FILE: &str = "trainer.json";
const SETTINGS_FILE: &str = "config.toml";
const PREFIX: &str = "step-";
const PARTIAL_PREFIX: &str = ".partial-";

/// Everything about the training loop that a resumed run needs besides model and optimizer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps completed.
    pub step: u64,
    /// Total steps of the run (fixes the schedule).
    pub total_steps: u64,
    /// Tokens that carried loss so far.
    pub tokens_seen: u64,
    /// Training seconds so far (excluding evaluation).
    pub elapsed_secs: f64,
    /// The training stream's position.
    pub stream: StreamState,
    /// Examples the batcher had read but not yet used (packing, length grouping).
    pub pending: Vec<Encoded>,
    /// Truncated/dropped counts.
    pub fit: FitReport,
}

/// A checkpoint directory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Whether `path` is a complete checkpoint directory.
    pub fn is_checkpoint(path: &Path) -> bool {
        [MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE, SETTINGS_FILE]
            .iter()
            .all(|f| path.join(f).is_file())
    }

    /// Opens a checkpoint directory.
    pub fn open(path: &Path) -> Result<Self> {
        if !Self::is_checkpoint(path) {
            bail!(
                "{} is not a gmt checkpoint (it needs {MODEL_FILE}, {OPTIMIZER_FILE}, {TRAINER_FILE} and {SETTINGS_FILE})",
                path.display()
            );
        }
        Ok(Self {
            dir: path.to_path_buf(),
        })
    }

    /// The newest complete checkpoint of a run's output directory.
    pub fn latest(output_dir: &Path) -> Result<Option<Self>> {
        Ok(list(&output_dir.join("checkpoints"))?
            .into_iter()
            .next_back()
            .map(|(_, dir)| Self { dir }))
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The weights record.
    pub fn model_file(&self) -> PathBuf {
        self.dir.join(MODEL_FILE)
    }

    /// The optimizer record's bytes.
    pub fn optimizer_bytes(&self) -> Result<Vec<u8>> {
        let path = self.dir.join(OPTIMIZER_FILE);
        fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    /// The run's settings.
    pub fn settings(&self) -> Result<TrainSettings> {
        TrainSettings::from_file(&self.dir.join(SETTINGS_FILE))
    }

    /// The training loop's state.
    pub fn trainer_state(&self) -> Result<TrainerState> {
        let path = self.dir.join(TRAINER_FILE);
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
    }
}

/// The complete checkpoints under `dir`, oldest first.
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if Checkpoint::is_checkpoint(&entry.path()) {
            found.push((step, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a checkpoint of step `state.step` under `output_dir/checkpoints` and deletes all
/// but the newest `keep`. Returns its directory.
pub fn write_checkpoint(
    output_dir: &Path,
    model: &[u8],
    optimizer: &[u8],
    state: &TrainerState,
    settings: &TrainSettings,
    keep: usize,
) -> Result<PathBuf> {
    let root = output_dir.join("checkpoints");
    fs::create_dir_all(&root)
        .with_context(|| format!("cannot create checkpoint directory {}", root.display()))?;
    remove_partials(&root)?;
    let name = format!("{PREFIX}{:08}", state.step);
    let partial = root.join(format!("{PARTIAL_PREFIX}{name}"));
    let result = write_files(
        &partial,
        &[
            (MODEL_FILE, model),
            (OPTIMIZER_FILE, optimizer),
            (
                TRAINER_FILE,
                serde_json::to_string(state)
                    .expect("trainer state serializes")
                    .as_bytes(),
            ),
            (SETTINGS_FILE, settings.to_toml().as_bytes()),
        ],
    );
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&partial);
        return Err(e.context(format!(
            "checkpoint of step {} was not written (earlier checkpoints are intact)",
            state.step
        )));
    }
    let done = root.join(&name);
    if done.exists() {
        fs::remove_dir_all(&done).with_context(|| format!("cannot replace {}", done.display()))?;
    }
    fs::rename(&partial, &done)
        .with_context(|| format!("cannot rename {} to {}", partial.display(), done.display()))?;
    sync_dir(&root);
    let all = list(&root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        fs::remove_dir_all(old)
            .with_context(|| format!("cannot delete old checkpoint {}", old.display()))?;
    }
    Ok(done)
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        let mut file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    sync_dir(dir);
    Ok(())
}

fn remove_partials(root: &Path) -> Result<()> {
    for entry in fs::read_dir(root).with_context(|| format!("cannot list {}", root.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", root.display()))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            fs::remove_dir_all(entry.path()).with_context(|| {
                format!(
                    "cannot remove partial checkpoint {}",
                    entry.path().display()
                )
            })?;
        }
    }
    Ok(())
}

/// Makes a rename durable where the platform allows (best effort: not every filesystem lets
/// a directory be opened for syncing).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    /// `trainer.json` holds seconds as f64. serde_json parses floats exactly only with its
    /// `float_roundtrip` feature (the workspace turns it on); without it about one value in
    /// nine came back a bit off, and resuming changed the checkpoint it resumed from.
    #[test]
    fn seconds_read_back_to_the_same_bits() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let secs = (x >> 11) as f64 / (1u64 << 53) as f64 * 1e4;
            let text = serde_json::to_string(&secs).unwrap();
            let back: f64 = serde_json::from_str(&text).unwrap();
            assert_eq!(back.to_bits(), secs.to_bits(), "{text}");
        }
    }
}
