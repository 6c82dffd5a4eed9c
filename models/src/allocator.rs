//! Process-wide allocator tuning for the engine's tensor temporaries.
//!
//! Every candle op allocates its output. glibc serves blocks above its mmap threshold (128 KiB at
//! start) with fresh `mmap`s, so each such temporary costs page faults and zeroing on first touch
//! and an `munmap` when dropped (the SD2 VAE decode at 512x512: 12.4 s, 9.1 s with this setting).
//! Keeping blocks below [`MMAP_THRESHOLD`] in the heap, and trimming the heap only past
//! [`TRIM_THRESHOLD`] of free space, lets those pages be reused. Blocks from the threshold up
//! (the VAE decoder's full-resolution feature maps, a few per decode) are still mapped, so their
//! pages go back to the system when they are dropped instead of staying with the process: with
//! 256 MiB / 512 MiB here the SD2 512x512 f32 bench peaked 128 MiB higher (5584 MiB against
//! 5456). At 64 MiB the bf16 decode's 64 MiB maps were mapped afresh each time (4.6 s against
//! 4.0 s at 96 MiB). The cost of keeping blocks: a growing buffer is copied on every realloc
//! instead of remapped (the server therefore joins a request body once at its final size), and
//! freed memory stays with the process up to the trim threshold. Every `imago` command applies
//! it at start-up.

/// Blocks below this are served from the heap (glibc caps its own adaptive threshold at 32 MiB).
pub const MMAP_THRESHOLD: usize = 96 << 20;
/// Free memory at the top of the heap kept for reuse before it is returned to the system.
pub const TRIM_THRESHOLD: usize = 192 << 20;

/// Applies the thresholds above; returns whether the allocator took them (glibc on Linux only,
/// elsewhere a no-op that returns false). Call once at start-up, before the engine runs.
pub fn keep_tensor_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; both values fit in a c_int.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Returns the heap's free pages to the system (glibc's `malloc_trim`; a no-op elsewhere).
/// Before a phase whose new allocations are mapped blocks rather than heap ones (the VAE
/// decoder's full-resolution maps), the free memory kept by [`TRIM_THRESHOLD`] would only add
/// to the peak.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only returns free pages of the allocator's own heap.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        assert!(super::keep_tensor_pages());
    }
}
