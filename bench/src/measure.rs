//! Clocks, callgrind client requests and summary statistics.

use std::time::Duration;

/// CPU time of the calling thread (user + system), `CLOCK_THREAD_CPUTIME_ID`.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// The commit, the machine: "commit abc1234, 2 CPUs, AMD EPYC". The commit
/// is marked "+ local changes" when files outside `bench/`, `docs/` and
/// `Cargo.lock` differ from it.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let top = git(&["rev-parse", "--show-toplevel"]).unwrap_or_else(|| ".".into());
    let local = git(&[
        "-C",
        &top,
        "status",
        "--porcelain",
        "--",
        ".",
        ":!bench",
        ":!docs",
        ":!Cargo.lock",
    ])
    .is_some_and(|s| !s.is_empty());
    let local = if local { " + local changes" } else { "" };
    format!("commit {commit}{local}, {nproc} CPUs, {cpu}")
}

/// What a measured region cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// Thread CPU time.
    pub cpu: Duration,
    /// Wall-clock time.
    pub wall: Duration,
    /// Outgoing media packets produced.
    pub packets: u64,
}

impl Cost {
    /// CPU nanoseconds per outgoing packet.
    pub fn cpu_ns(&self) -> f64 {
        self.cpu.as_nanos() as f64 / self.packets.max(1) as f64
    }

    /// Wall nanoseconds per outgoing packet.
    pub fn wall_ns(&self) -> f64 {
        self.wall.as_nanos() as f64 / self.packets.max(1) as f64
    }
}

/// Measures `f`, which returns the number of outgoing packets it produced.
pub fn measure(f: impl FnOnce() -> u64) -> Cost {
    let (c0, w0) = (thread_cpu(), std::time::Instant::now());
    let packets = f();
    let (wall, cpu) = (w0.elapsed(), thread_cpu() - c0);
    Cost { cpu, wall, packets }
}

/// Runs this executable again under callgrind as a child (with `env` set,
/// nothing collected outside the regions it marks; with `instr_atstart`
/// false, nothing instrumented either), its dumps going to `dir` (emptied
/// first). False, with a note printed, when valgrind is missing or the run
/// failed.
pub fn callgrind_child(dir: &std::path::Path, env: &[(&str, String)], instr_atstart: bool) -> bool {
    use std::process::{Command, Stdio};
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("\n(valgrind not found: no instruction counts)");
        return false;
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("callgrind output directory");
    let exe = std::env::current_exe().expect("own path");
    let t = std::time::Instant::now();
    let status = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            if instr_atstart {
                "--instr-atstart=yes"
            } else {
                "--instr-atstart=no"
            },
            "--collect-atstart=no",
            "--dump-instr=no",
            &format!(
                "--callgrind-out-file={}",
                dir.join("callgrind.out").display()
            ),
        ])
        .arg(&exe)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        println!("\n(callgrind run failed: no instruction counts)");
        return false;
    }
    eprintln!("callgrind child took {:.0} s", t.elapsed().as_secs_f64());
    true
}

/// The dumps of a [`callgrind_child`] run: label (the client request's),
/// total instructions and file, sorted by label.
pub fn callgrind_dumps(dir: &std::path::Path) -> Vec<(String, u64, std::path::PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)
        .expect("read callgrind output")
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let label = text
            .lines()
            .find_map(|l| l.strip_prefix("desc: Trigger: Client Request: "))
            .map(str::to_string);
        let total = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("totals: ")
                    .or_else(|| l.strip_prefix("summary: "))
            })
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok());
        if let (Some(label), Some(total)) = (label, total) {
            out.push((label, total, e.path()));
        }
    }
    out.sort();
    out
}

/// Median, minimum and maximum of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Summary {
    /// Summarises `v` (not empty).
    pub fn of(v: &[f64]) -> Self {
        assert!(!v.is_empty());
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
        Self {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    /// Spread as a percentage of the median: (max - min) / median.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            100.0 * (self.max - self.min) / self.median
        }
    }
}

/// Callgrind client requests (`valgrind/callgrind.h`), written out for
/// x86_64 so no C header or extra crate is needed. Outside valgrind the
/// magic sequence is a no-op and the requests return 0.
pub mod callgrind {
    const BASE: usize = ((b'C' as usize) << 24) | ((b'T' as usize) << 16);
    const DUMP_STATS_AT: usize = BASE + 3;
    const ZERO_STATS: usize = BASE + 1;
    const TOGGLE_COLLECT: usize = BASE + 2;
    const START_INSTRUMENTATION: usize = BASE + 4;
    const STOP_INSTRUMENTATION: usize = BASE + 5;
    /// `VG_USERREQ__RUNNING_ON_VALGRIND`.
    const RUNNING_ON_VALGRIND: usize = 0x1001;

    #[cfg(target_arch = "x86_64")]
    fn request(req: usize, arg1: usize) -> usize {
        let args: [usize; 6] = [req, arg1, 0, 0, 0, 0];
        let result: usize;
        // SAFETY: valgrind's documented client-request sequence for amd64:
        // the four rotations of rdi add up to 128 bits (rdi is unchanged)
        // and `xchg rbx, rbx` is a no-op on a real CPU; valgrind recognises
        // the sequence, reads the request from [rax] and writes rdx.
        unsafe {
            std::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                inout("rdx") 0usize => result,
                in("rax") args.as_ptr(),
                inout("rdi") 0usize => _,
                options(nostack),
            );
        }
        result
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn request(_req: usize, _arg1: usize) -> usize {
        0
    }

    /// Switches collection on or off (`CALLGRIND_TOGGLE_COLLECT`): cheap,
    /// for marking many short regions in an instrumented run.
    pub fn toggle_collect() {
        request(TOGGLE_COLLECT, 0);
    }

    /// Dumps the counts collected so far under `label` and zeroes them.
    pub fn dump(label: &str) {
        let label = std::ffi::CString::new(label).expect("label without NUL");
        request(DUMP_STATS_AT, label.as_ptr() as usize);
    }

    /// Whether the process runs under valgrind.
    pub fn running_on_valgrind() -> bool {
        request(RUNNING_ON_VALGRIND, 0) != 0
    }

    /// Instruments and collects `f` only, then dumps its counts under the
    /// label made from its result (run with `--instr-atstart=no
    /// --collect-atstart=no`). The label is built after collection stops.
    pub fn region<R>(f: impl FnOnce() -> R, label: impl FnOnce(&R) -> String) -> R {
        request(START_INSTRUMENTATION, 0);
        request(ZERO_STATS, 0);
        request(TOGGLE_COLLECT, 0);
        let r = std::hint::black_box(f());
        request(TOGGLE_COLLECT, 0);
        let label = std::ffi::CString::new(label(&r)).expect("label without NUL");
        request(DUMP_STATS_AT, label.as_ptr() as usize);
        request(STOP_INSTRUMENTATION, 0);
        r
    }
}
