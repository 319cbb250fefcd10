//! Checkpoint directories: written atomically, the newest K kept, found again to resume.
//!
//! A checkpoint is a directory `<root>/step-NNNNNNNN/` holding
//! - `model.bin`: the weights as a burn record (full precision; it also carries parameter
//!   identities, to which the optimizer state is keyed),
//! - `optimizer.bin`: the GMT record (AdamW moments, GMT step and RNG seed),
//! - `trainer.json`: the run's counters ([`TrainProgress`](crate::TrainProgress)) and, under
//!   `data`, the caller's data position,
//! - any further files the caller adds (the CLI adds its `config.toml`),
//! - `manifest.json`, written last: the size and SHA-256 of every other file. Opening a
//!   checkpoint checks them all before anything is read, so a damaged or edited file is an
//!   error naming it, never weights loaded silently wrong (`sha256sum` checks them too).
//!
//! It is written under a temporary name (`.partial-step-NNNNNNNN`), every file synced, then
//! renamed; a crash or a full disk leaves at most a `.partial-*` directory, which is never
//! mistaken for a checkpoint and is removed by the next write. Old checkpoints are pruned by
//! renaming them to `.pruned-step-NNNNNNNN` first, so an interrupted deletion never leaves a
//! half-deleted directory under a checkpoint's name.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::record::Record;
use burn::tensor::backend::Backend;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::record_file::read_record;
use crate::{TrainError, TrainProgress};

/// The model's weights record in a checkpoint.
pub const MODEL_FILE: &str = "model.bin";
/// The optimizer's record in a checkpoint.
pub const OPTIMIZER_FILE: &str = "optimizer.bin";
/// The counters and data position in a checkpoint.
pub const TRAINER_FILE: &str = "trainer.json";
/// The sizes and checksums of a checkpoint's other files, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The files every checkpoint holds.
const REQUIRED_FILES: [&str; 4] = [MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE, MANIFEST_FILE];
const PREFIX: &str = "step-";
const PARTIAL_PREFIX: &str = ".partial-";
const PRUNED_PREFIX: &str = ".pruned-";

/// A complete checkpoint directory whose files match its manifest.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    dir: PathBuf,
}

impl Checkpoint {
    /// Whether `path` looks like a complete checkpoint directory (its files are not
    /// checked; [`open`](Self::open) does that).
    pub fn is_checkpoint(path: &Path) -> bool {
        missing_files(path).is_empty()
    }

    /// Opens a checkpoint directory, checking every file against the manifest.
    pub fn open(path: &Path) -> Result<Self, TrainError> {
        let missing = missing_files(path);
        if !missing.is_empty() {
            return Err(TrainError::Checkpoint {
                dir: path.to_path_buf(),
                reason: format!(
                    "not a complete gmt checkpoint: {} missing (a checkpoint holds {})",
                    missing.join(", "),
                    REQUIRED_FILES.join(", ")
                ),
            });
        }
        let checkpoint = Self {
            dir: path.to_path_buf(),
        };
        checkpoint.verify()?;
        Ok(checkpoint)
    }

    /// The newest checkpoint under `root` (a run's `checkpoints/` directory), checked
    /// against its manifest. A damaged or incomplete one (gmt never renames a checkpoint
    /// into place before it is whole) is an error, not a silent step back to an older one:
    /// the message names the file and the checkpoints left.
    pub fn latest(root: &Path) -> Result<Option<Self>, TrainError> {
        let all = list(root)?;
        let Some((_, newest)) = all.last() else {
            return Ok(None);
        };
        Self::open(newest).map(Some).map_err(|e| match e {
            TrainError::Checkpoint { dir, reason } if all.len() > 1 => {
                let older: Vec<String> = all[..all.len() - 1]
                    .iter()
                    .map(|(_, d)| d.display().to_string())
                    .collect();
                TrainError::Checkpoint {
                    dir,
                    reason: format!(
                        "{reason}; to resume from an older checkpoint ({}), move this one away",
                        older.join(", ")
                    ),
                }
            }
            other => other,
        })
    }

    /// Checks every file named in the manifest: present, of its size, of its SHA-256.
    fn verify(&self) -> Result<(), TrainError> {
        let damaged = |reason: String| TrainError::Checkpoint {
            dir: self.dir.clone(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(&self.read(MANIFEST_FILE)?)
            .map_err(|e| damaged(format!("{MANIFEST_FILE} is damaged: {e}")))?;
        for required in [MODEL_FILE, OPTIMIZER_FILE, TRAINER_FILE] {
            if !manifest.files.iter().any(|f| f.name == required) {
                return Err(damaged(format!("{MANIFEST_FILE} does not list {required}")));
            }
        }
        for entry in &manifest.files {
            if entry.name.contains(['/', '\\']) || entry.name.starts_with('.') {
                return Err(damaged(format!(
                    "{MANIFEST_FILE} names `{}`, not a file of the checkpoint",
                    entry.name
                )));
            }
            let path = self.file(&entry.name);
            let size = fs::metadata(&path)
                .map_err(|e| damaged(format!("{} is missing: {e}", entry.name)))?
                .len();
            if size != entry.bytes {
                return Err(damaged(format!(
                    "{} is damaged: {size} bytes, {} when it was written",
                    entry.name, entry.bytes
                )));
            }
            let digest = sha256_file(&path)?;
            if digest != entry.sha256 {
                return Err(damaged(format!(
                    "{} is damaged or was edited: its SHA-256 differs from the one written with it",
                    entry.name
                )));
            }
        }
        Ok(())
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

    /// A burn record (weights, optimizer state) from one of its files, in the format of
    /// burn's `BinBytesRecorder` with full precision, read from the file as it is decoded.
    /// Its bytes match the manifest; burn still panics on some input (a record of another
    /// model or burn version), so a panic is turned into an error too.
    pub fn record<B: Backend, R: Record<B>>(
        &self,
        file: &str,
        device: &B::Device,
    ) -> Result<R, TrainError> {
        let path = self.file(file);
        let reader = File::open(&path).map_err(|e| TrainError::io("cannot read", &path, e))?;
        let loaded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_record::<B, R>(BufReader::new(reader), device)
        }));
        let reason = match loaded {
            Ok(Ok(record)) => return Ok(record),
            Ok(Err(e)) => e,
            Err(_) => "burn's decoder failed on it (see the message above)".into(),
        };
        Err(TrainError::Checkpoint {
            dir: self.dir.clone(),
            reason: format!("{file} is not a record of this model: {reason}"),
        })
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

/// `manifest.json`: every other file of a checkpoint, with its size and checksum.
#[derive(Serialize, Deserialize)]
struct Manifest {
    files: Vec<ManifestEntry>,
}

#[derive(Serialize, Deserialize)]
struct ManifestEntry {
    name: String,
    bytes: u64,
    sha256: String,
}

/// The [`REQUIRED_FILES`] that `dir` lacks.
fn missing_files(dir: &Path) -> Vec<&'static str> {
    REQUIRED_FILES
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect()
}

fn sha256_file(path: &Path) -> Result<String, TrainError> {
    let mut file = File::open(path).map_err(|e| TrainError::io("cannot read", path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| TrainError::io("cannot read", path, e))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// The name of step `step`'s checkpoint directory under its root (`step-NNNNNNNN`).
pub fn dir_name(step: u64) -> String {
    format!("{PREFIX}{step:08}")
}

/// The checkpoint directories (`step-N`) under `root`, oldest first.
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
        if entry.path().is_dir() {
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
    let files = files
        .iter()
        .map(|&(name, bytes)| (name, FileContent::Bytes(bytes)))
        .collect();
    write_checkpoint_streamed(root, step, files, keep)
}

/// One file of a checkpoint: its bytes, or what writes them straight to the file.
pub(crate) enum FileContent<'a> {
    Bytes(&'a [u8]),
    Written(WriteFile<'a>),
}

/// Writes a file's content as it is produced (a record serialized on the way).
pub(crate) type WriteFile<'a> = Box<dyn FnOnce(&mut dyn Write) -> io::Result<()> + 'a>;

/// [`write_checkpoint`] with files that may be written as they are produced.
pub(crate) fn write_checkpoint_streamed(
    root: &Path,
    step: u64,
    files: Vec<(&str, FileContent<'_>)>,
    keep: usize,
) -> Result<PathBuf, TrainError> {
    fs::create_dir_all(root).map_err(|e| TrainError::io("cannot create", root, e))?;
    remove_leftovers(root)?;
    let name = dir_name(step);
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
        prune(root, &done)?;
    }
    fs::rename(&partial, &done)
        .map_err(|e| TrainError::io("cannot rename into place", &done, e))?;
    sync_dir(root);
    let all = list(root)?;
    for (_, old) in all.iter().take(all.len().saturating_sub(keep)) {
        prune(root, old)?;
    }
    Ok(done)
}

/// Writes `files` into `dir`, each synced, then the manifest of them.
fn write_files(dir: &Path, files: Vec<(&str, FileContent<'_>)>) -> Result<(), TrainError> {
    fs::create_dir_all(dir).map_err(|e| TrainError::io("cannot create", dir, e))?;
    let write = |name: &str, content: FileContent<'_>| {
        let path = dir.join(name);
        let file = File::create(&path).map_err(|e| TrainError::io("cannot create", &path, e))?;
        let mut out = HashedWriter {
            inner: BufWriter::new(file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let written = match content {
            FileContent::Bytes(bytes) => out.write_all(bytes),
            FileContent::Written(write) => write(&mut out),
        };
        written
            .and_then(|()| out.inner.into_inner().map_err(|e| e.into_error()))
            .and_then(|file| file.sync_all())
            .map_err(|e| TrainError::io("cannot write", &path, e))?;
        Ok::<_, TrainError>(ManifestEntry {
            name: name.to_string(),
            bytes: out.bytes,
            sha256: format!("{:x}", out.hasher.finalize()),
        })
    };
    let mut manifest = Manifest { files: Vec::new() };
    for (name, content) in files {
        manifest.files.push(write(name, content)?);
    }
    let json = serde_json::to_vec_pretty(&manifest).expect("a manifest serializes");
    write(MANIFEST_FILE, FileContent::Bytes(&json))?;
    sync_dir(dir);
    Ok(())
}

/// A file being written, hashed and counted on the way for the manifest.
struct HashedWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashedWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Deletes a checkpoint: renamed out of the checkpoints' names first, so that a deletion cut
/// short leaves a `.pruned-*` directory (removed by the next write), never a half-deleted
/// `step-*`.
fn prune(root: &Path, dir: &Path) -> Result<(), TrainError> {
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let doomed = root.join(format!("{PRUNED_PREFIX}{name}"));
    fs::rename(dir, &doomed).map_err(|e| TrainError::io("cannot delete old checkpoint", dir, e))?;
    sync_dir(root);
    fs::remove_dir_all(&doomed)
        .map_err(|e| TrainError::io("cannot delete old checkpoint", &doomed, e))
}

/// Removes what an interrupted write or prune left: `.partial-*` and `.pruned-*`.
fn remove_leftovers(root: &Path) -> Result<(), TrainError> {
    let entries = fs::read_dir(root).map_err(|e| TrainError::io("cannot list", root, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io("cannot list", root, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PARTIAL_PREFIX) || name.starts_with(PRUNED_PREFIX) {
            fs::remove_dir_all(entry.path()).map_err(|e| {
                TrainError::io("cannot remove unfinished checkpoint", entry.path(), e)
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
