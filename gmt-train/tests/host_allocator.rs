//! `retain_freed_host_memory` keeps a freed block resident, and `release_freed_host_memory`
//! hands it back: a test without a harness, so that it runs on the main thread, where
//! training allocates (harness threads take glibc arenas of their own, capped at 64 MB a
//! heap, whose larger blocks are always mapped apart).

use gmt_train::memory::{
    peak_rss, release_freed_host_memory, reset_peak_rss, retain_freed_host_memory,
};

/// Resident memory in bytes now: the peak, restarted from the current size.
fn rss() -> u64 {
    reset_peak_rss();
    peak_rss().expect("Linux reports VmHWM")
}

fn main() {
    if !retain_freed_host_memory() {
        println!("host_allocator: skipped (not glibc on Linux)");
        return;
    }
    // Larger than glibc's 32 MB mapping threshold: without the settings this block would be
    // mapped apart and unmapped when dropped.
    let size = 256usize << 20;
    let before = rss();
    let block = vec![1u8; size];
    let touched: usize = block.iter().step_by(4096).map(|&b| b as usize).sum();
    assert_eq!(touched, size / 4096);
    drop(block);
    let kept = rss();
    assert!(
        kept >= before + size as u64 * 9 / 10,
        "freed block not kept: resident {before} → {kept} bytes"
    );
    release_freed_host_memory();
    let released = rss();
    assert!(
        released + size as u64 / 2 <= kept,
        "freed block not released: resident {kept} → {released} bytes"
    );
    println!("host_allocator: ok (resident {before} → {kept} → {released} bytes)");
}
