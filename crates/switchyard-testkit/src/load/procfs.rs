//! What the harness reads from Linux's `/proc`: CPU time and memory of the children, and
//! the machine facts printed with every run.
//!
//! The parsers are pure functions over the file's text so they are tested on fixed
//! samples; the readers around them only add the file I/O. Nothing here writes anything.

use std::io;
use std::time::{Duration, Instant};

/// The tick of `utime`/`stime` in `/proc/<pid>/stat`. Linux fixes `USER_HZ` at 100 on every
/// architecture it exposes to user space, and reading `sysconf(_SC_CLK_TCK)` would need a
/// libc call this crate does not otherwise make.
pub const CLOCK_TICKS_PER_SECOND: u64 = 100;

/// Which process to read: a child by pid, or the harness itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// A child started by the harness.
    Pid(u32),
    /// `/proc/self`: the harness, load generator included.
    Myself,
}

impl Process {
    fn file(self, name: &str) -> String {
        match self {
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
            Process::Myself => format!("/proc/self/{name}"),
        }
    }
}

/// User plus system CPU time a process has used so far, in clock ticks.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')', so
    // count fields from the last ')'. After it come field 3 (state) onwards; utime and
    // stime are fields 14 and 15.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace().skip(14 - 3);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// The value in bytes of a `kB` line such as `VmRSS:\t  5128 kB` in `/proc/<pid>/status`.
pub fn parse_status_kilobytes(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kilobytes = rest.trim().strip_suffix("kB")?.trim();
        kilobytes.parse::<u64>().ok().map(|kb| kb * 1024)
    })
}

/// The three load averages from `/proc/loadavg`.
pub fn parse_load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut fields = loadavg.split_ascii_whitespace();
    let mut averages = [0.0; 3];
    for average in &mut averages {
        *average = fields.next()?.parse().ok()?;
    }
    Some(averages)
}

/// Share of one core used between two samples, in percent (200 means two full cores).
pub fn cpu_percent(ticks: u64, wall: Duration) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    let busy = ticks as f64 / CLOCK_TICKS_PER_SECOND as f64;
    busy / wall.as_secs_f64() * 100.0
}

/// Reads the CPU ticks a process has used so far.
pub fn read_cpu_ticks(process: Process) -> io::Result<u64> {
    let stat = std::fs::read_to_string(process.file("stat"))?;
    parse_cpu_ticks(&stat).ok_or_else(|| malformed(process, "stat"))
}

/// Reads one `kB` line (`VmRSS`, `VmHWM`) of a process's status, in bytes.
pub fn read_status_bytes(process: Process, key: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(process.file("status"))?;
    parse_status_kilobytes(&status, key).ok_or_else(|| malformed(process, key))
}

fn malformed(process: Process, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected format of {} ({what})", process.file("")),
    )
}

/// One CPU-time reading, to subtract from a later one.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    ticks: u64,
    at: Instant,
}

impl CpuSample {
    /// Reads the process's CPU time now.
    pub fn take(process: Process) -> io::Result<Self> {
        Ok(Self {
            ticks: read_cpu_ticks(process)?,
            at: Instant::now(),
        })
    }

    /// Percent of one core used from `self` to `later`.
    pub fn percent_until(&self, later: &CpuSample) -> f64 {
        cpu_percent(
            later.ticks.saturating_sub(self.ticks),
            later.at.saturating_duration_since(self.at),
        )
    }
}

/// Facts about the machine, printed with every run so two runs can be compared honestly.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MachineFacts {
    /// CPUs this process may run on (what `nproc` prints).
    pub cpus: usize,
    /// 1, 5 and 15 minute load averages when the run started.
    pub load_average: Option<[f64; 3]>,
    /// `uname -r`-like kernel release, when readable.
    pub kernel: Option<String>,
}

impl MachineFacts {
    /// Reads the facts now; fields that cannot be read stay empty.
    pub fn read() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |cpus| cpus.get());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| parse_load_average(&text));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|text| text.trim().to_owned());
        Self {
            cpus,
            load_average,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_add_user_and_system_time() {
        let stat = "4242 (switchyard) S 1 4242 4242 0 -1 4194560 1123 0 0 0 \
                    731 129 0 0 20 0 3 0 12345 20000000 1500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(731 + 129));
    }

    #[test]
    fn cpu_ticks_survive_odd_command_names() {
        let stat = "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 1 1";
        assert_eq!(parse_cpu_ticks(stat), Some(11));
    }

    #[test]
    fn cpu_ticks_reject_truncated_lines() {
        assert_eq!(parse_cpu_ticks("1 (x) S 1 2 3"), None);
        assert_eq!(parse_cpu_ticks("no parenthesis at all"), None);
        assert_eq!(parse_cpu_ticks("1 (x) S 0 0 0 0 0 0 0 0 0 0 abc 1"), None);
    }

    #[test]
    fn cpu_ticks_of_this_process_are_readable() {
        assert!(read_cpu_ticks(Process::Myself).is_ok());
        assert!(read_status_bytes(Process::Myself, "VmRSS").unwrap() > 0);
    }

    #[test]
    fn status_lines_are_read_in_bytes() {
        let status = "Name:\tswitchyard\nVmPeak:\t  100 kB\nVmHWM:\t    9000 kB\n\
                      VmRSS:\t    5128 kB\nThreads:\t3\n";
        assert_eq!(parse_status_kilobytes(status, "VmRSS"), Some(5128 * 1024));
        assert_eq!(parse_status_kilobytes(status, "VmHWM"), Some(9000 * 1024));
        assert_eq!(parse_status_kilobytes(status, "Threads"), None);
        assert_eq!(parse_status_kilobytes(status, "VmSwap"), None);
        // A key that is a prefix of another key must not match it.
        assert_eq!(parse_status_kilobytes(status, "Vm"), None);
    }

    #[test]
    fn load_average_takes_the_first_three_fields() {
        assert_eq!(
            parse_load_average("0.52 1.10 2.00 2/345 6789\n"),
            Some([0.52, 1.10, 2.00])
        );
        assert_eq!(parse_load_average("0.52"), None);
    }

    #[test]
    fn cpu_percent_is_relative_to_one_core() {
        assert_eq!(cpu_percent(50, Duration::from_secs(1)), 50.0);
        assert_eq!(cpu_percent(400, Duration::from_secs(2)), 200.0);
        assert_eq!(cpu_percent(10, Duration::ZERO), 0.0);
    }
}
