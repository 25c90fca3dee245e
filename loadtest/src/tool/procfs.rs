//! What `/proc` says about a process (through the `procfs` crate): CPU time of
//! the process and of each thread, resident memory, open file descriptors.

use std::time::Duration;

use procfs::process::Process;
use procfs::{Current, WithCurrentSystemInfo};

fn ticks(t: u64) -> Duration {
    let hz = procfs::ticks_per_second().max(1);
    Duration::from_micros(t.saturating_mul(1_000_000) / hz)
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// CPU time used so far by process `pid`, all threads, user + system (`None`
/// if it is gone or unreadable).
pub(crate) fn cpu_time(pid: u32) -> Option<Duration> {
    let st = process(pid)?.stat().ok()?;
    Some(ticks(st.utime + st.stime))
}

/// CPU time used so far by each thread of process `pid`, with the thread's
/// name (empty if the process is gone).
pub(crate) fn thread_cpu_times(pid: u32) -> Vec<(String, Duration)> {
    let Some(tasks) = process(pid).and_then(|p| p.tasks().ok()) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| t.stat().ok())
        .map(|st| (st.comm, ticks(st.utime + st.stime)))
        .collect()
}

/// CPU time used so far by this process.
pub(crate) fn own_cpu_time() -> Option<Duration> {
    cpu_time(std::process::id())
}

/// Resident memory of process `pid`, bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    Some(process(pid)?.stat().ok()?.rss_bytes().get())
}

/// Open file descriptors of process `pid`.
pub(crate) fn open_fds(pid: u32) -> Option<u64> {
    process(pid)?.fd_count().ok().map(|n| n as u64)
}

/// The machine's CPU model (first processor) and kernel release.
pub(crate) fn machine() -> (String, String) {
    let model = procfs::CpuInfo::current()
        .ok()
        .and_then(|c| c.model_name(0).map(str::to_string))
        .unwrap_or_else(|| "unknown".into());
    let kernel = procfs::sys::kernel::Version::current().map_or("unknown".into(), |v| {
        format!("{}.{}.{}", v.major, v.minor, v.patch)
    });
    (model, kernel)
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
    fn memory_and_descriptors_of_this_process() {
        let me = std::process::id();
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 1 << 20, "{rss}");
        // stdin, stdout, stderr at least (other tests open and close more).
        assert!(open_fds(me).unwrap() >= 3);
        assert!(rss_bytes(u32::MAX).is_none() && open_fds(u32::MAX).is_none());
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
