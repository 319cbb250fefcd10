//! Keeping the memory a CPU training step frees for the next step, instead of handing it back
//! to the kernel and faulting it in again, zeroed, one page at a time.
//!
//! Every step allocates and frees the same tensors. glibc's `malloc` maps each allocation
//! over 32 MB (the logits and their gradients, 100 MB each for SmolLM2 at 4 × 128 tokens; the
//! embedding's gradient) afresh with `mmap` and unmaps it when freed, and it hands the top of
//! its heap back once that top holds more than a few free megabytes. The next step then takes
//! a page fault per 4 KiB page it writes, and the kernel zeroes each page: on SmolLM2 at
//! 4 × 128 tokens, ~290,000 faults a step, which made the forward pass take 22–36% longer than
//! the same arithmetic on reused memory (README "Benchmarks"). The cap of 32 MB on `mmap`'s
//! threshold is glibc's own, so the only way to keep such blocks is to stop it from mapping
//! blocks apart at all.

/// Tells the process's allocator to keep freed memory for reuse: glibc stops mapping large
/// blocks apart (`M_MMAP_MAX` 0), keeps up to 2 GiB free at the top of its heap
/// (`M_TRIM_THRESHOLD`), and grows the heap 256 MB at a time (`M_TOP_PAD`), so that a
/// training step reuses the pages the step before it freed.
///
/// Meant for processes that train or decode on the CPU: the resident memory then stays at
/// the peak of what a step uses rather than falling between steps, and that peak grows where
/// the heap fragments (SmolLM2 at 4 × 128: +4% for SFT, +14% for GMT).
/// It does not suit a process that loads a model only to copy it to a GPU, whose freed host
/// buffers would stay resident; call [`release_freed_host_memory`] after such phases. Call it
/// early, before the threads that train allocate: `mallopt` changes process-wide settings.
///
/// Returns whether the allocator took the settings: `true` on Linux with glibc; elsewhere it
/// does nothing and returns `false`.
pub fn retain_freed_host_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only sets glibc's allocator parameters; it returns 0 on failure.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
                && libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Hands the memory the allocator holds free back to the kernel (glibc's `malloc_trim`), for
/// the end of a phase whose buffers the next phase does not reuse: loading a model, saving a
/// checkpoint. Elsewhere than glibc it does nothing.
pub fn release_freed_host_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free pages of the heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}
