//! What the user sees: indicatif bars (a bar per file and a total, with
//! bytes, rate and ETA) on a terminal, notices and errors on stderr, and one
//! `<sha256>  <name>` line per stored file on stdout, then a summary.
//!
//! Bars appear only when both stdout and stderr are terminals and `-q` is not
//! given, so `up-cli ... | sha256sum -c` sees nothing but checksum lines.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::client::human_bytes;
use crate::{FileJob, Outcome, Reporter};

/// Terminal reporter; counts what happened for the summary and exit code.
pub struct Console {
    quiet: bool,
    bars: Option<Bars>,
    started: Instant,
    /// Files stored and verified.
    pub stored: usize,
    /// Files that failed (including collection errors reported through [`Console::error`]).
    pub failed: usize,
    /// Bytes of the stored files.
    pub stored_bytes: u64,
}

struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    file: Option<ProgressBar>,
}

impl Console {
    /// A reporter for `total_bytes` across all files; bars only on a terminal.
    pub fn new(quiet: bool, total_bytes: u64) -> Self {
        let show = !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        let bars = show.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = multi.add(ProgressBar::new(total_bytes));
            total.set_style(
                ProgressStyle::with_template(
                    "total {bar:30.green/white} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            Bars {
                multi,
                total,
                file: None,
            }
        });
        Console {
            quiet,
            bars,
            started: Instant::now(),
            stored: 0,
            failed: 0,
            stored_bytes: 0,
        }
    }

    fn stderr_line(&self, line: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// An error line that always shows, even with `-q`.
    pub fn error(&mut self, line: &str) {
        self.failed += 1;
        self.stderr_line(&format!("up-cli: {line}"));
    }

    /// Removes the bars without printing a summary.
    pub fn summary_quiet(&mut self) {
        if let Some(b) = self.bars.take() {
            b.total.finish_and_clear();
            let _ = b.multi.clear();
        }
    }

    /// Prints the final summary to stderr (not with `-q`).
    pub fn summary(&mut self) {
        self.summary_quiet();
        if self.quiet {
            return;
        }
        eprintln!(
            "{}",
            summary_line(
                self.stored,
                self.stored_bytes,
                self.started.elapsed(),
                self.failed
            )
        );
    }
}

/// The final summary, in units that fit: `1 file, 12 B in 3 ms (4.0 KiB/s),
/// all verified`. The rate is left out when too little time passed for it
/// to mean anything.
pub fn summary_line(stored: usize, bytes: u64, elapsed: Duration, failed: usize) -> String {
    let files = if stored == 1 { "file" } else { "files" };
    let took = if elapsed < Duration::from_millis(1) {
        "<1 ms".to_string()
    } else if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis())
    } else {
        format!("{:.1} s", elapsed.as_secs_f64())
    };
    let rate = if elapsed < Duration::from_millis(1) {
        String::new()
    } else {
        let per_sec = bytes as f64 / elapsed.as_secs_f64();
        format!(" ({}/s)", human_bytes(per_sec as u64))
    };
    let verdict = if failed == 0 {
        "all verified".to_string()
    } else {
        format!("{failed} failed")
    };
    format!(
        "{stored} {files}, {} in {took}{rate}, {verdict}",
        human_bytes(bytes)
    )
}

impl Reporter for Console {
    fn file_started(&mut self, job: &FileJob, offset: u64) {
        if let Some(b) = &mut self.bars {
            let bar = b.multi.insert_before(&b.total, ProgressBar::new(job.size));
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg:20!} {bar:30.cyan/blue} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("valid template"),
            );
            bar.set_message(job.name.clone());
            bar.set_position(offset);
            bar.reset_eta();
            b.total.inc(offset);
            b.file = Some(bar);
        }
    }

    fn advanced(&mut self, bytes: u64) {
        if let Some(b) = &self.bars {
            b.total.inc(bytes);
            if let Some(f) = &b.file {
                f.inc(bytes);
            }
        }
    }

    fn notice(&mut self, message: &str) {
        if !self.quiet {
            self.stderr_line(message);
        }
    }

    fn finished(&mut self, job: &FileJob, outcome: &Outcome) {
        if let Some(b) = &mut self.bars {
            if let Some(f) = b.file.take() {
                f.finish_and_clear();
                b.multi.remove(&f);
            }
        }
        match outcome {
            Outcome::Stored { name, sha256, .. } => {
                self.stored += 1;
                self.stored_bytes += job.size;
                let line = format!("{}  {name}", proto::upload::hex(sha256));
                let print = || {
                    // A closed stdout (`| head`) is not an error worth reporting.
                    let _ = writeln!(std::io::stdout().lock(), "{line}");
                };
                match &self.bars {
                    Some(b) => b.multi.suspend(print),
                    None => print(),
                }
            }
            Outcome::Failed(reason) => {
                // Shrink the total so the ETA stays honest.
                if let Some(b) = &self.bars {
                    let len = b.total.length().unwrap_or(0);
                    b.total.set_length(len.saturating_sub(job.size));
                }
                self.error(reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::summary_line;

    #[test]
    fn summary_uses_fitting_units() {
        assert_eq!(
            summary_line(1, 12, Duration::from_millis(3), 0),
            "1 file, 12 B in 3 ms (3.9 KiB/s), all verified"
        );
        assert_eq!(
            summary_line(2, 5 << 20, Duration::from_millis(2500), 0),
            "2 files, 5.0 MiB in 2.5 s (2.0 MiB/s), all verified"
        );
        assert_eq!(
            summary_line(1, 3 << 30, Duration::from_secs(3), 1),
            "1 file, 3.0 GiB in 3.0 s (1.0 GiB/s), 1 failed"
        );
        assert_eq!(
            summary_line(1, 1536, Duration::from_micros(200), 0),
            "1 file, 1.5 KiB in <1 ms, all verified"
        );
        assert_eq!(
            summary_line(0, 0, Duration::from_millis(999), 1),
            "0 files, 0 B in 999 ms (0 B/s), 1 failed"
        );
    }
}
