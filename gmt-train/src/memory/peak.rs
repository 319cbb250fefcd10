//! What a run really held: the process's peak resident memory, the measurement the
//! estimates are checked against on the CPU (where the process's memory is the run's).

/// The peak resident set size of this process since it started or since the last
/// [`reset_peak_rss`] (Linux `VmHWM`); `None` where the kernel does not say.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Restarts [`peak_rss`] from the current resident size, so that a phase of a run (the
/// steps, a checkpoint save) can be measured apart (Linux ≥ 4.0; elsewhere it does nothing).
pub fn reset_peak_rss() {
    // Writing "5" to clear_refs resets VmHWM (Documentation/filesystems/proc.rst).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_grows_with_what_is_touched() {
        let Some(before) = peak_rss() else {
            return; // not Linux
        };
        let block = vec![1u8; 64 << 20];
        let after = peak_rss().unwrap();
        assert!(after >= before.max(64 << 20), "{before} → {after}");
        assert_eq!(block.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
