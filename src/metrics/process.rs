//! This process's resource use, read from the kernel at scrape time (Linux
//! `/proc`; elsewhere the values are left out). Reads only.

use std::fs;

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    /// User plus system CPU time, all threads.
    pub cpu_seconds: Option<f64>,
}

pub fn read() -> ProcessStats {
    ProcessStats {
        resident_bytes: fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| resident_bytes(&status)),
        open_fds: fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as u64),
        max_fds: rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft),
        cpu_seconds: cpu_seconds(),
    }
}

/// `VmRSS:    1234 kB` from `/proc/self/status`.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_seconds() -> Option<f64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage only writes the struct it is given, and it is read
    // only when the call reports success.
    let usage = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) != 0 {
            return None;
        }
        usage.assume_init()
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_resident_set_in_bytes() {
        let status = "Name:\tlivefeed\nVmPeak:\t  9000 kB\nVmRSS:\t  1234 kB\nThreads:\t4\n";
        assert_eq!(resident_bytes(status), Some(1234 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let stats = read();
        assert!(stats.resident_bytes.is_some_and(|rss| rss > 0), "{stats:?}");
        assert!(stats.open_fds.is_some_and(|fds| fds >= 3), "{stats:?}");
        assert!(stats.cpu_seconds.is_some(), "{stats:?}");
    }
}
