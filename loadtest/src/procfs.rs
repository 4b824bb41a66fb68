//! CPU time and resident memory of a process, and of a process tree, from
//! /proc.

use std::collections::HashMap;
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

/// One process's line of `/proc/<pid>/stat`, the fields a tree's CPU needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    name: String,
    parent: u32,
    /// utime + stime.
    own_ticks: u64,
    /// cutime + cstime: children that exited and were waited for.
    reaped_ticks: u64,
}

/// Pids of the roots of the trees of processes named `name`: processes so
/// named whose parent is not (the postmaster, not its backends).
pub fn roots_named(name: &str) -> Vec<u32> {
    let table = process_table();
    let mut roots: Vec<u32> = table
        .iter()
        .filter(|(_, stat)| stat.name == name)
        .filter(|(_, stat)| table.get(&stat.parent).is_none_or(|p| p.name != name))
        .map(|(pid, _)| *pid)
        .collect();
    roots.sort_unstable();
    roots
}

/// CPU time of the trees rooted at `roots`: each process's own time plus
/// the time of the children it reaped, over every live process of the trees.
/// A PostgreSQL backend that exits is reaped by the postmaster, so its time
/// moves into the postmaster's and is still counted; a root that is gone
/// counts as nothing.
pub fn tree_cpu_micros(roots: &[u32]) -> u64 {
    let table = process_table();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, stat) in &table {
        children.entry(stat.parent).or_default().push(*pid);
    }
    let mut ticks = 0;
    let mut pending: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|pid| table.contains_key(pid))
        .collect();
    while let Some(pid) = pending.pop() {
        let stat = &table[&pid];
        ticks += stat.own_ticks + stat.reaped_ticks;
        pending.extend(children.get(&pid).into_iter().flatten());
    }
    ticks * 1_000_000 / ticks_per_second()
}

/// Every process readable now; ones that exit while being read are skipped.
fn process_table() -> HashMap<u32, Stat> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, parse_stat(&text)?))
        })
        .collect()
}

/// The command name is field 2, in parentheses, and may hold spaces and
/// parentheses itself, so the other fields count from the last `)`.
fn parse_stat(stat: &str) -> Option<Stat> {
    let name = &stat[stat.find('(')? + 1..stat.rfind(')')?];
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_ascii_whitespace().take(15).collect();
    // Fields 3.. follow the name: ppid is field 4, utime..cstime 14..17.
    let number = |field: usize| -> Option<u64> { fields.get(field - 3)?.parse().ok() };
    Some(Stat {
        name: name.to_owned(),
        parent: u32::try_from(number(4)?).ok()?,
        own_ticks: number(14)? + number(15)?,
        reaped_ticks: number(16)? + number(17)?,
    })
}

/// The 1-minute load average of the machine.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) of `/proc/<pid>/stat`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    parse_stat(stat).map(|stat| stat.own_ticks)
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
        assert_eq!(
            parse_stat(stat),
            Some(Stat {
                name: "my (odd) name".to_owned(),
                parent: 1,
                own_ticks: 1000,
                reaped_ticks: 0,
            })
        );
    }

    #[test]
    fn a_tree_counts_its_live_children_and_what_it_reaped() {
        let root = std::process::id();
        let alone = tree_cpu_micros(&[root]);
        // Burns some CPU, then sleeps as the same process.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; exec sleep 60",
            ])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while process_table()[&child.id()].name != "sleep" {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never slept"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let child_own = usage(Some(child.id())).unwrap().cpu_micros;
        assert!(child_own > 0, "the child burnt no CPU");
        let live = tree_cpu_micros(&[root]);
        assert!(live >= alone + child_own, "{live} < {alone} + {child_own}");
        child.kill().unwrap();
        child.wait().unwrap();
        let reaped = tree_cpu_micros(&[root]);
        assert!(
            reaped >= alone + child_own,
            "{reaped} < {alone} + {child_own}"
        );
        assert!(roots_named("no-such-process").is_empty());
        assert_eq!(tree_cpu_micros(&[u32::MAX]), 0);
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
