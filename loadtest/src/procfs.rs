//! CPU time and resident memory of a process, from /proc.

use std::io;
use std::sync::OnceLock;

/// What a process has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User plus system CPU time, all threads.
    pub cpu_micros: u64,
    pub rss_bytes: u64,
}

/// `None` reads this process.
pub fn usage(pid: Option<u32>) -> io::Result<Usage> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}/{what}"));
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let ticks = cpu_ticks(&stat).ok_or_else(|| bad("stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let rss_kib = rss_kib(&status).ok_or_else(|| bad("status"))?;
    Ok(Usage {
        cpu_micros: ticks * 1_000_000 / ticks_per_second(),
        rss_bytes: rss_kib * 1024,
    })
}

/// CPU time of several processes added up; `None` is this one. Processes
/// that are gone count as nothing.
pub fn cpu_micros_of(pids: &[Option<u32>]) -> u64 {
    pids.iter()
        .filter_map(|pid| usage(*pid).ok())
        .map(|usage| usage.cpu_micros)
        .sum()
}

/// The 1-minute load average of the machine.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of `/proc/<pid>/stat`. The command
/// name in field 2 may hold spaces and parentheses, so count from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // Fields 3.. follow the name; utime is field 14, i.e. the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it only reads a constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_an_awkward_name() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1200 0 0 0 \
                    731 269 0 0 20 0 3 0 12345 123456789 2500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(1000));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_rss() {
        let status = "Name:\tlivefeed\nVmPeak:\t  999 kB\nVmRSS:\t   51200 kB\nThreads:\t3\n";
        assert_eq!(rss_kib(status), Some(51200));
        assert_eq!(rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let usage = usage(None).unwrap();
        assert!(usage.rss_bytes > 0);
    }
}
