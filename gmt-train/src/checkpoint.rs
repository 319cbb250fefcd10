//! Checkpoint directories: written atomically, the newest K kept, found again to resume.
//!
//! A checkpoint is a directory `<root>/step-NNNNNNNN/` holding
//! - `model.bin`: the weights as a burn record (full precision; it also carries parameter
//!   identities, to which the optimizer state is keyed),
//! - `optimizer.bin`: the GMT record (AdamW moments, GMT step and RNG seed),
//! - `trainer.json`: the run's counters ([`TrainProgress`](crate::TrainProgress)) and, under
//!   `data`, the caller's data position,
//! - any further files the caller adds (the CLI adds its `config.toml`).
//!
//! It is written under a temporary name (`.partial-step-NNNNNNNN`), every file synced, then
//! renamed; a crash or a full disk leaves at most a `.partial-*` directory, which is never
//! mistaken for a checkpoint and is removed by the next write.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::{TrainError, TrainProgress};

/// The model's weights record in a checkpoint.
pub const MODEL_FILE: &str = "model.bin";
/// The optimizer's record in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
/// The counters and data position in a checkpoint.
pub const TRAINER_FILE: &str = "trainer.json";
const PREFIX: &str = "step-";
const PARTIAL_PREFIX: &str = ".partial-";

/// A complete checkpoint directory.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Whether `path` is a complete checkpoint directory.
    pub fn is_checkpoint(path: &Path) -> bool {
        [MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE]
            .iter()
            .all(|f| path.join(f).is_file())
    }

    /// Opens a checkpoint directory.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        if !Self::is_checkpoint(path) {
            return Err(TrainError::Checkpoint {
                dir: path.to_path_buf(),
                reason: format!(
                    "not a gmt checkpoint (it needs {MODEL_FILE}, {OPTIMIZER_FILE} and {TRAINER_FILE})"
                ),
            });
        }
        Ok(Self {
            dir: path.to_path_buf(),
        })
    }

    /// The newest complete checkpoint under `root` (a run's `checkpoints/` directory).
    pub fn latest(root: &Path) -> Result<Option<Self>, TrainError> {
        Ok(list(root)?
            .into_iter()
            .next_back()
            .map(|(_, dir)| Self { dir }))
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of one of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The bytes of one of its files.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, TrainError> {
        let path = self.file(name);
        fs::read(&path).map_err(|e| TrainError::io("cannot read", path, e))
    }

    /// The run's counters when it was saved.
    pub fn progress(&self) -> Result<TrainProgress, TrainError> {
        self.trainer_json()
    }

    /// The data position saved beside the counters (whatever type the caller saved).
    pub fn data_position<D: DeserializeOwned>(&self) -> Result<D, TrainError> {
        let mut file: serde_json::Value = self.trainer_json()?;
        // Checkpoints of gmt before gmt-train kept the position beside the counters.
        let data = match file.get_mut("data") {
            Some(data) => data.take(),
            None => file,
        };
        serde_json::from_value(data).map_err(|e| self.corrupt(e))
    }

    fn trainer_json<T: DeserializeOwned>(&self) -> Result<T, TrainError> {
        let bytes = self.read(TRAINER_FILE)?;
        serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e))
    }

    fn corrupt(&self, e: serde_json::Error) -> TrainError {
        TrainError::Checkpoint {
            dir: self.dir.clone(),
            reason: format!("{TRAINER_FILE} is corrupt: {e}"),
        }
    }
}

/// The complete checkpoints under `root`, oldest first.
fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    let Ok(entries) = fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("cannot list", root, e))?;
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

/// Writes `files` as the checkpoint of `step` under `root` and deletes all but the newest
/// `keep` checkpoints. Returns its directory.
pub fn write_checkpoint(
    root: &Path,
    step: u64,
    files: &[(&str, &[u8])],
    keep: usize,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
    remove_partials(root)?;
    let name = format!("{PREFIX}{step:08}");
    let partial = root.join(format!("{PARTIAL_PREFIX}{name}"));
    if let Err(e) = write_files(&partial, files) {
        let _ = fs::remove_dir_all(&partial);
        return Err(TrainError::Checkpoint {
            dir: root.join(&name),
            reason: format!("not written (earlier checkpoints are intact): {e}"),
        });
    }
    let done = root.join(&name);
    if done.exists() {
        fs::remove_dir_all(&done).map_err(|e| TrainError::io("cannot replace", &done, e))?;
    }
    fs::rename(&partial, &done)
        .map_err(|e| TrainError::io("cannot rename into place", &done, e))?;
    sync_dir(root);
    let all = list(root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        fs::remove_dir_all(old)
            .map_err(|e| TrainError::io("cannot delete old checkpoint", old, e))?;
    }
    Ok(done)
}

fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        let mut file =
            File::create(&path).map_err(|e| TrainError::io("cannot create", &path, e))?;
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| TrainError::io("cannot write", &path, e))?;
    }
    sync_dir(dir);
    Ok(())
}

fn remove_partials(root: &Path) -> Result<(), TrainError> {
    let entries = fs::read_dir(root).map_err(|e| TrainError::io("cannot list", root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("cannot list", root, e))?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(PARTIAL_PREFIX)
        {
            fs::remove_dir_all(entry.path())
                .map_err(|e| TrainError::io("cannot remove partial checkpoint", entry.path(), e))?;
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
