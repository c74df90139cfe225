//! The server's allocator settings (`slimserve::memory::JEMALLOC_CONF` and
//! the idle purge): a large buffer freed and allocated again while the
//! process is busy keeps its pages (no page faults), and the pages go back
//! to the system once the process is idle. One test in its own binary, so
//! no other test's allocations move the resident figures it reads.
#![cfg(all(feature = "jemalloc", target_os = "linux"))]

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = slimserve::memory::JEMALLOC_CONF;

use slimserve::memory::{resident_bytes, spawn_idle_purge};
use std::time::{Duration, Instant};

/// 24 MiB: above jemalloc's 8 MiB "oversize" threshold, like a batch-4
/// plan's largest activation (19 MB).
const BUFFER_BYTES: usize = 24 << 20;
const PAGE: usize = 4096;

/// Minor page faults of the calling thread so far.
fn thread_faults() -> u64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed value.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_THREAD, &mut u), 0);
        u.ru_minflt as u64
    }
}

/// One activation's life as tract's tensors live it (allocate, fill, write,
/// free; not `calloc`, which jemalloc zeroes by purging a reused block).
fn churn() -> f32 {
    let mut v: Vec<f32> = Vec::with_capacity(BUFFER_BYTES / 4);
    v.resize(BUFFER_BYTES / 4, 1.0);
    for (i, page) in v.chunks_mut(PAGE / 4).enumerate() {
        page[0] = i as f32;
    }
    std::hint::black_box(&v)[v.len() / 2]
}

#[test]
fn large_buffers_keep_their_pages_while_busy_and_give_them_back_when_idle() {
    let idle = Duration::from_millis(300);
    spawn_idle_purge(idle).expect("jemalloc serves this test binary");
    let pages = (BUFFER_BYTES / PAGE) as u64;

    // Busy: the buffer comes back from the allocator with its pages.
    churn();
    let before = thread_faults();
    let rounds = 30u64;
    for _ in 0..rounds {
        churn();
    }
    let faults = thread_faults() - before;
    eprintln!("{faults} page faults in {rounds} rounds of a {pages}-page buffer");
    assert!(
        faults < pages / 2,
        "{faults} page faults in {rounds} rounds of a {pages}-page buffer: freed pages were given back while busy"
    );

    // Idle: the freed buffer's pages go back to the system.
    let busy = resident_bytes();
    let t0 = Instant::now();
    let mut now = busy;
    while t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
        now = resident_bytes();
        if busy.saturating_sub(now) >= (BUFFER_BYTES as u64) * 3 / 4 {
            break;
        }
    }
    eprintln!(
        "resident {:.1} MB busy, {:.1} MB after {:.2} s idle",
        busy as f64 / 1048576.0,
        now as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        busy.saturating_sub(now) >= (BUFFER_BYTES as u64) * 3 / 4,
        "resident {busy} -> {now} bytes after 10 s idle: the freed buffer was not given back"
    );
}
