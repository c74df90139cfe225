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

/// The binary's jemalloc settings (feature `jemalloc`): freed pages stay
/// with the allocator while the process is busy (`dirty_decay_ms:-1`: no
/// time-based purging) and go back to the system once it has been idle for
/// a second ([`spawn_idle_purge`]); one arena (the default is four per
/// core): the workers' activations churn through one pool of pages instead
/// of one per arena (pruned at 60 req/s: ~63 instead of ~75 MB; per-thread
/// caches keep the lock off the fast path).
///
/// Time-based purging (`dirty_decay_ms:1000`, used before) handed the
/// pages of a large activation back between two runs and made the next run
/// fault them in again: jemalloc serves allocations above 8 MiB (a batch-4
/// plan's 112 x 112 x 96 activation is 19 MB) from an arena that purges
/// at once whenever the default decay is positive, and the 1 s decay of the
/// main arena purged a part of the rest. `full` at batch 4 spent ~3 ms of
/// every 13.5 ms image in page faults.
pub const JEMALLOC_CONF: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:1\0";

/// How long the process must go without a large allocation before
/// [`spawn_idle_purge`] gives the free pages back.
pub const IDLE_PURGE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

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
/// jemalloc until the process is idle), then read the RSS: used around loading models
/// and dropping plans so the figures measure what is held.
pub fn trimmed_resident_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    purge();
    resident_bytes()
}

/// Large allocations made so far and free pages the allocator holds
/// (jemalloc's merged statistics), or `None` without jemalloc.
fn allocator_activity() -> Option<(u64, u64)> {
    #[cfg(feature = "jemalloc")]
    if jemalloc_active() {
        use tikv_jemalloc_ctl::raw;
        // SAFETY: NUL-terminated names of u64 and size_t statistics
        // (MALLCTL_ARENAS_ALL, 4096: every arena merged), read after the
        // epoch was advanced by `jemalloc_active`.
        let large = unsafe { raw::read::<u64>(b"stats.arenas.4096.large.nmalloc\0") }.ok()?;
        let dirty = unsafe { raw::read::<usize>(b"stats.arenas.4096.pdirty\0") }.ok()?;
        return Some((large, dirty as u64));
    }
    None
}

/// Start a thread that gives the allocator's free pages back to the system
/// once no large allocation (an activation, a decoded image) has been made
/// for `idle`, and there are free pages to give. While requests flow, freed
/// activations are reused without faulting their pages in again; after a
/// burst, resident memory returns to what is held. Does nothing (returns
/// `None`) without jemalloc.
pub fn spawn_idle_purge(idle: std::time::Duration) -> Option<std::thread::JoinHandle<()>> {
    allocator_activity()?;
    let tick = (idle / 4).max(std::time::Duration::from_millis(10));
    std::thread::Builder::new()
        .name("slimserve-purge".into())
        .spawn(move || {
            let mut last = allocator_activity().map_or(0, |(large, _)| large);
            let mut quiet_since = std::time::Instant::now();
            loop {
                std::thread::sleep(tick);
                let Some((large, dirty)) = allocator_activity() else {
                    return;
                };
                if large != last {
                    last = large;
                    quiet_since = std::time::Instant::now();
                } else if dirty > 0 && quiet_since.elapsed() >= idle {
                    purge();
                }
            }
        })
        .ok()
}

/// Give every arena's free pages back to the system (jemalloc).
fn purge() {
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
}
