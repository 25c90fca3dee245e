//! CPU time of a process from `/proc/PID/stat` (all its threads, user + system).

use std::time::Duration;

use super::measure::proc_stat_ticks;

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value; no pointers are involved.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time used so far by process `pid` (`None` if it is gone or unreadable).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    ticks_to_duration(proc_stat_ticks(&text)?)
}

/// CPU time used so far by each thread of process `pid`, with the thread's
/// name (empty if the process is gone).
pub fn thread_cpu_times(pid: u32) -> Vec<(String, Duration)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = text
            .find('(')
            .zip(text.rfind(')'))
            .map(|(a, b)| text[a + 1..b].to_string())
            .unwrap_or_default();
        if let Some(t) = proc_stat_ticks(&text).and_then(ticks_to_duration) {
            out.push((name, t));
        }
    }
    out
}

/// CPU time used so far by this process.
pub fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

fn ticks_to_duration(ticks: u64) -> Option<Duration> {
    let hz = clock_ticks_per_sec();
    Some(Duration::from_micros(ticks.checked_mul(1_000_000)? / hz))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_grows() {
        let a = own_cpu_time().unwrap();
        let mut x = 0u64;
        let end = std::time::Instant::now() + Duration::from_millis(60);
        while std::time::Instant::now() < end {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let b = own_cpu_time().unwrap();
        assert!(b > a, "{a:?} -> {b:?}");
        assert!(cpu_time(u32::MAX).is_none());
    }

    #[test]
    fn threads_are_listed_by_name() {
        // The name is set by the new thread itself as it starts: list the
        // threads only once it runs.
        let (started, running) = std::sync::mpsc::channel();
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let h = std::thread::Builder::new()
            .name("probe-thread".into())
            .spawn(move || {
                started.send(()).unwrap();
                let _ = stopped.recv();
            })
            .unwrap();
        running.recv().unwrap();
        let threads = thread_cpu_times(std::process::id());
        stop.send(()).unwrap();
        assert!(
            threads.iter().any(|(n, _)| n == "probe-thread"),
            "{threads:?}"
        );
        h.join().unwrap();
        assert!(thread_cpu_times(u32::MAX).is_empty());
    }
}
