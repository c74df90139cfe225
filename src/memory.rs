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

/// Give freed heap pages back to the OS (glibc keeps them otherwise, which
/// inflates the resident size after loading models), then read the RSS.
pub fn trimmed_resident_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    resident_bytes()
}
