//! What the bench reads from `/proc` and the system: process memory, CPU time,
//! the machine's description, free ports and the open-file limit.
//!
//! Memory figures come from `/proc/<pid>/status` (`VmRSS` now, `VmHWM` peak),
//! which the kernel keeps for any process, so the servers need no instrumentation.

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A `kB` field of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, field).with_context(|| format!("no {field} in {path}"))
}

fn parse_status_kib(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// User plus system CPU time of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&text).with_context(|| format!("cannot parse {path}"))
}

fn parse_cpu_ticks(text: &str) -> Option<u64> {
    // The command name may contain spaces; the numeric fields follow its `)`.
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // After `)`: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Waits until `pid` has used no CPU for two consecutive 100 ms polls, so a memory
/// reading is not taken while the server is still busy (at most `timeout`).
pub fn wait_until_quiet(pid: u32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = cpu_ticks(pid)?;
    let mut quiet = 0;
    while quiet < 2 {
        if Instant::now() >= deadline {
            bail!("process {pid} still busy after {timeout:?}");
        }
        // Polling the kernel's counter; the interval is the measurement's resolution.
        std::thread::sleep(Duration::from_millis(100));
        let now = cpu_ticks(pid)?;
        quiet = if now == last { quiet + 1 } else { 0 };
        last = now;
    }
    Ok(())
}

/// A loopback address whose port was free a moment ago.
pub fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    listener.local_addr().context("reading the bound address")
}

/// The hard open-file limit a child can raise its soft limit to.
pub fn nofile_hard_limit() -> Result<u64> {
    let out = Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .context("running sh -c 'ulimit -Hn'")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.trim() {
        "unlimited" => Ok(u64::MAX),
        n => n
            .parse()
            .with_context(|| format!("unexpected ulimit -Hn output {n:?}")),
    }
}

/// Wraps `program args..` so it runs with its soft open-file limit raised to the hard one.
pub fn with_raised_nofile(program: &std::path::Path) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@""#)
        .arg(program);
    cmd
}

/// The number of online CPUs and the CPU model from `/proc/cpuinfo`.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim())
        })
        .unwrap_or("unknown CPU");
    let sha = if cpuinfo.contains(" sha_ni") {
        ", sha_ni"
    } else {
        ""
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}{sha}, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_parse_in_kib() {
        let text = "Name:\tup-srv\nVmHWM:\t   10240 kB\nVmRSS:\t    8000 kB\n";
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(10240));
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(8000));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let text = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(text), Some(12));
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(status_kib(std::process::id(), "VmRSS").expect("own status") > 0);
    }
}
