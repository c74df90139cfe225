//! Process memory figures from /proc (Linux); zero elsewhere.

/// Resident set size of this process, in bytes.
pub fn resident_bytes() -> u64 {
    statm_field(1)
}

/// Virtual memory size of this process, in bytes.
pub fn virtual_bytes() -> u64 {
    statm_field(0)
}

fn statm_field(i: usize) -> u64 {
    let page = 4096u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(i)
                .and_then(|x| x.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page)
}

/// The binary's jemalloc settings (feature `jemalloc`): a background thread
/// purges freed pages; dirty pages go back to the system after 1 s
/// (jemalloc's default is 10 s), with no second "muzzy" stage; one arena
/// (the default is four per core): the workers' activations churn through
/// one pool of pages instead of one per arena (pruned at 60 req/s: ~63
/// instead of ~75 MB; per-thread caches keep the lock off the fast path).
pub const JEMALLOC_CONF: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1\0";

/// Which allocator serves this process's heap.
pub fn allocator() -> &'static str {
    if jemalloc_active() {
        "jemalloc"
    } else {
        "system"
    }
}

/// Whether jemalloc holds this process's heap (it then reports allocated
/// bytes; in the test binaries, which keep the system allocator, it does
/// not).
fn jemalloc_active() -> bool {
    #[cfg(feature = "jemalloc")]
    {
        let _ = tikv_jemalloc_ctl::epoch::advance();
        tikv_jemalloc_ctl::stats::allocated::read().is_ok_and(|b| b > 0)
    }
    #[cfg(not(feature = "jemalloc"))]
    false
}

/// Give freed heap pages back to the OS now (glibc keeps them otherwise,
/// jemalloc for a second), then read the RSS: used around loading models
/// and dropping plans so the figures measure what is held.
pub fn trimmed_resident_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    #[cfg(feature = "jemalloc")]
    if jemalloc_active() {
        // MALLCTL_ARENAS_ALL (4096): purge the unused pages of every arena.
        // SAFETY: a NUL-terminated name; "arena.<i>.purge" reads and
        // writes nothing, so every pointer is null.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            );
        }
    }
    resident_bytes()
}
