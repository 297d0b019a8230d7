//! What the user sees: indicatif bars on stderr when it is a terminal (one
//! bar per file, a total only when there are several files, a `verifying`
//! bar while a local prefix is hashed), one `<sha256>  <name>` line per
//! stored file on stdout, one `error: ...` line per problem, and a summary
//! whose counts agree with those lines.
//!
//! stdout never carries anything but checksum lines, so
//! `up-cli ... | sha256sum -c` works whether or not bars are drawn.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use proto::size::Readable;

use crate::{Outcome, Reporter};

/// Longest file name shown in a bar; longer ones are cut with an ellipsis.
pub const BAR_NAME_CHARS: usize = 24;

/// A local hash shorter than this prints no notice when no bar is drawn.
const VERIFY_NOTICE_MIN: u64 = 8 * 1024 * 1024;

/// What happened in this run, for the summary and the exit code.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Files stored (or downloaded) and verified.
    pub stored: usize,
    /// Files the other side already held with the same digest.
    pub already: usize,
    /// Paths skipped by policy (symlinked directories): not failures.
    pub skipped: usize,
    /// Files that failed, one error line each.
    pub failed: usize,
    /// Files never attempted because the run stopped (one error line in all).
    pub not_attempted: usize,
    /// Body bytes sent (or received) in this run.
    pub sent: u64,
    /// Bytes the other side already held and were not sent again.
    pub resumed: u64,
}

/// Terminal reporter; counts what happened for the summary and exit code.
pub struct Console {
    quiet: bool,
    bars: Option<Bars>,
    started: Instant,
    /// What happened so far.
    pub counts: Counts,
    /// The file moving now: name, bytes done, size (for Ctrl-C's line).
    current: Option<(String, u64, u64)>,
    /// Hashed bytes are not transfer progress.
    verifying: bool,
    /// What the summary calls a file that arrived: `stored` or `downloaded`.
    verb: &'static str,
}

struct Bars {
    multi: MultiProgress,
    total: Option<ProgressBar>,
    file: Option<ProgressBar>,
}

/// `name` cut to `max` characters with an ellipsis in the middle, so both
/// the start and the extension stay visible.
pub fn shorten(name: &str, max: usize) -> String {
    let count = name.chars().count();
    if count <= max {
        return name.to_string();
    }
    let keep = max.saturating_sub(1);
    let head = keep / 2;
    let tail = keep - head;
    let start: String = name.chars().take(head).collect();
    let end: String = name.chars().skip(count - tail).collect();
    format!("{start}…{end}")
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Console {
    /// A reporter for `files` files of `total_bytes` in all; bars only when
    /// stderr is a terminal and `-q` is not given.
    pub fn new(quiet: bool, files: usize, total_bytes: u64) -> Self {
        let show = !quiet && std::io::stderr().is_terminal();
        let bars = show.then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
            let total = (files > 1).then(|| {
                let bar = multi.add(ProgressBar::new(total_bytes));
                bar.set_style(style(
                    "{msg} {wide_bar:.green/white} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                ));
                bar.set_message(format!("{files} files"));
                bar
            });
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
            counts: Counts::default(),
            current: None,
            verifying: false,
            verb: "stored",
        }
    }

    /// The same reporter for `get`: the summary says `downloaded`.
    pub fn downloading(mut self) -> Self {
        self.verb = "downloaded";
        self
    }

    fn stderr_line(&self, line: &str) {
        match &self.bars {
            Some(b) => {
                let _ = b.multi.println(line);
            }
            None => eprintln!("{line}"),
        }
    }

    /// One problem with one file or path: always shown, counted as failed.
    pub fn error(&mut self, line: &str) {
        self.counts.failed += 1;
        self.stderr_line(&format!("error: {line}"));
    }

    /// The run stopped: one line, and `left` files were not attempted.
    pub fn fatal(&mut self, line: &str, left: usize) {
        self.counts.not_attempted += left;
        self.stderr_line(&format!("error: {line}"));
    }

    /// A path skipped by policy: a notice, not a failure.
    pub fn skipped(&mut self, line: &str) {
        self.counts.skipped += 1;
        self.notice(line);
    }

    /// A warning that always shows.
    pub fn warn(&mut self, line: &str) {
        self.stderr_line(&format!("warning: {line}"));
    }

    /// The line for Ctrl-C: where the current file stood.
    pub fn interrupted(&mut self) -> String {
        self.clear_bars();
        match &self.current {
            Some((name, done, size)) => format!(
                "interrupted at {} of {} of {name}: run the same command to resume",
                Readable(*done),
                Readable(*size)
            ),
            None => "interrupted: run the same command to resume".to_string(),
        }
    }

    fn clear_bars(&mut self) {
        if let Some(b) = self.bars.take() {
            if let Some(f) = b.file {
                f.finish_and_clear();
            }
            if let Some(t) = b.total {
                t.finish_and_clear();
            }
            let _ = b.multi.clear();
        }
    }

    /// Removes the bars without printing a summary.
    pub fn summary_quiet(&mut self) {
        self.clear_bars();
    }

    /// Prints the final summary to stderr (not with `-q`).
    pub fn summary(&mut self) {
        self.clear_bars();
        if !self.quiet {
            eprintln!(
                "{}",
                summary_line(&self.counts, self.started.elapsed(), self.verb)
            );
        }
    }

    /// True when nothing failed.
    pub fn success(&self) -> bool {
        self.counts.failed == 0 && self.counts.not_attempted == 0
    }

    fn new_file_bar(&mut self, len: u64, template: &str, message: String) {
        if let Some(b) = &mut self.bars {
            let bar = match &b.total {
                Some(total) => b.multi.insert_before(total, ProgressBar::new(len)),
                None => b.multi.add(ProgressBar::new(len)),
            };
            bar.set_style(style(template));
            bar.set_message(message);
            if let Some(old) = b.file.replace(bar) {
                old.finish_and_clear();
                b.multi.remove(&old);
            }
        }
    }
}

/// The final summary, in units that fit, e.g. `2 files stored: 5.0 MiB sent
/// in 2.5 s (2.0 MiB/s), all verified`. The rate is left out when too little
/// time passed for it to mean anything.
pub fn summary_line(c: &Counts, elapsed: Duration, verb: &str) -> String {
    let files = |n: usize| if n == 1 { "file" } else { "files" };
    let mut parts = vec![format!("{} {} {verb}", c.stored, files(c.stored))];
    if c.already > 0 {
        parts.push(format!("{} already stored", c.already));
    }
    if c.skipped > 0 {
        parts.push(format!("{} skipped", c.skipped));
    }
    if c.failed > 0 {
        parts.push(format!("{} failed", c.failed));
    }
    if c.not_attempted > 0 {
        parts.push(format!("{} not attempted", c.not_attempted));
    }
    let took = if elapsed < Duration::from_millis(1) {
        "<1 ms".to_string()
    } else if elapsed < Duration::from_secs(1) {
        format!("{} ms", elapsed.as_millis())
    } else {
        format!("{:.1} s", elapsed.as_secs_f64())
    };
    let rate = if elapsed < Duration::from_millis(1) || c.sent == 0 {
        String::new()
    } else {
        let per_sec = c.sent as f64 / elapsed.as_secs_f64();
        format!(" ({}/s)", Readable(per_sec as u64))
    };
    let resumed = if c.resumed > 0 {
        format!(", {} resumed", Readable(c.resumed))
    } else {
        String::new()
    };
    let sent = if verb == "stored" { "sent" } else { "received" };
    let verdict = if c.failed == 0 && c.not_attempted == 0 {
        ", all verified"
    } else {
        ""
    };
    format!(
        "{}: {} {sent} in {took}{rate}{resumed}{verdict}",
        parts.join(", "),
        Readable(c.sent)
    )
}

impl Reporter for Console {
    fn verifying(&mut self, name: &str, bytes: u64) {
        self.verifying = true;
        let message = format!("verifying {} already on the server", Readable(bytes));
        if self.bars.is_some() {
            let label = format!("{} {message}", shorten(name, BAR_NAME_CHARS));
            self.new_file_bar(
                bytes,
                "{msg} {wide_bar:.yellow/white} {bytes}/{total_bytes}",
                label,
            );
        } else if !self.quiet && bytes >= VERIFY_NOTICE_MIN {
            self.stderr_line(&format!("{name}: {message}"));
        }
    }

    fn file_started(&mut self, name: &str, size: u64, offset: u64) {
        self.verifying = false;
        self.current = Some((name.to_string(), offset, size));
        self.new_file_bar(
            size,
            "{msg} {wide_bar:.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            shorten(name, BAR_NAME_CHARS),
        );
        if let Some(b) = &self.bars {
            if let Some(f) = &b.file {
                f.set_position(offset);
                f.reset_eta();
            }
            if let Some(t) = &b.total {
                // Download sizes are learnt one file at a time.
                if self.verb == "downloaded" {
                    t.inc_length(size);
                }
                t.inc(offset);
            }
        }
    }

    fn advanced(&mut self, bytes: u64) {
        if !self.verifying {
            if let Some((_, done, _)) = &mut self.current {
                *done += bytes;
            }
        }
        if let Some(b) = &self.bars {
            if let (Some(t), false) = (&b.total, self.verifying) {
                t.inc(bytes);
            }
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

    fn finished(&mut self, size: u64, outcome: &Outcome) {
        self.verifying = false;
        self.current = None;
        if let Some(b) = &mut self.bars {
            if let Some(f) = b.file.take() {
                f.finish_and_clear();
                b.multi.remove(&f);
            }
        }
        let (name, sha256) = match outcome {
            Outcome::Stored {
                name,
                sha256,
                sent,
                resumed,
            } => {
                self.counts.stored += 1;
                self.counts.sent += sent;
                self.counts.resumed += resumed;
                (name, sha256)
            }
            Outcome::AlreadyStored { name, sha256 } => {
                self.counts.already += 1;
                if let Some(t) = self.bars.as_ref().and_then(|b| b.total.as_ref()) {
                    t.inc(size);
                }
                self.notice(&format!("{name}: already stored"));
                (name, sha256)
            }
            Outcome::Failed(reason) => {
                // Shrink the total so the ETA stays honest.
                if let Some(t) = self.bars.as_ref().and_then(|b| b.total.as_ref()) {
                    t.set_length(t.length().unwrap_or(0).saturating_sub(size));
                }
                self.error(reason);
                return;
            }
        };
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn summary_says_what_was_sent_and_what_was_not() {
        let one = Counts {
            stored: 1,
            sent: 12,
            ..Counts::default()
        };
        assert_eq!(
            summary_line(&one, Duration::from_millis(3), "stored"),
            "1 file stored: 12 B sent in 3 ms (3.9 KiB/s), all verified"
        );
        let mixed = Counts {
            stored: 2,
            already: 1,
            skipped: 1,
            failed: 1,
            sent: 300 << 20,
            resumed: 200 << 20,
            ..Counts::default()
        };
        assert_eq!(
            summary_line(&mixed, Duration::from_secs(10), "stored"),
            "2 files stored, 1 already stored, 1 skipped, 1 failed: 300.0 MiB sent in 10.0 s (30.0 MiB/s), 200.0 MiB resumed"
        );
        let none = Counts {
            not_attempted: 3,
            ..Counts::default()
        };
        assert_eq!(
            summary_line(&none, Duration::from_micros(200), "stored"),
            "0 files stored, 3 not attempted: 0 B sent in <1 ms"
        );
        let skipped = Counts {
            already: 2,
            ..Counts::default()
        };
        assert_eq!(
            summary_line(&skipped, Duration::from_millis(268), "stored"),
            "0 files stored, 2 already stored: 0 B sent in 268 ms, all verified"
        );
    }

    #[test]
    fn long_names_keep_both_ends() {
        assert_eq!(shorten("short.jpg", 24), "short.jpg");
        let cut = shorten("a-very-long-holiday-photo-name-2026.jpeg", 24);
        assert_eq!(cut.chars().count(), 24);
        assert!(
            cut.starts_with("a-very") && cut.ends_with("2026.jpeg") && cut.contains('…'),
            "{cut}"
        );
    }
}
