//! The generator's own CPU use, from getrusage(RUSAGE_SELF).

use crate::results::Cpu;
use std::time::Instant;

fn rusage() -> (f64, f64) {
    // SAFETY: getrusage only writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return (0.0, 0.0);
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

pub struct CpuClock {
    wall: Instant,
    user: f64,
    sys: f64,
}

impl CpuClock {
    pub fn now() -> CpuClock {
        let (user, sys) = rusage();
        CpuClock {
            wall: Instant::now(),
            user,
            sys,
        }
    }

    /// CPU seconds used by this process since `now()`, and the average number of cores busy.
    pub fn elapsed(&self) -> Cpu {
        let (u, s) = rusage();
        let wall = self.wall.elapsed().as_secs_f64();
        let (user_s, sys_s) = (u - self.user, s - self.sys);
        Cpu {
            user_s,
            sys_s,
            wall_s: wall,
            cores: if wall > 0.0 {
                (user_s + sys_s) / wall
            } else {
                0.0
            },
        }
    }
}
