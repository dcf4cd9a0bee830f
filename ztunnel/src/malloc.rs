//! glibc malloc settings for a proxy's allocation pattern.
//!
//! A relay allocates and frees buffers of tens of KiB to a MiB (HTTP/2 frames,
//! TLS records) at line rate. With glibc's defaults, the freed top of a thread's
//! heap went back to the kernel (`madvise`) and the next allocation faulted it in
//! again: page faults and `madvise` were about 5 % of ztunnel's CPU in a bulk
//! stream. Keeping up to 16 MiB of freed memory per heap, and serving blocks up
//! to 4 MiB from the heap rather than fresh mappings, stops that churn while the
//! idle footprint stays where it was (mimalloc also stopped it, but doubled idle
//! RSS to 16 MiB).

/// Applies the settings; call first thing in `main`, before any thread starts.
pub fn tune_for_proxy() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MMAP_THRESHOLD: libc::c_int = 4 << 20;
        const TRIM_THRESHOLD: libc::c_int = 16 << 20;
        // SAFETY: mallopt only adjusts allocator parameters; called before other
        // threads exist. It returns 0 when a value is refused, which leaves the
        // default in force: nothing to handle.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}
