//! Summaries of repeated runs and the markdown table they end up in.
//!
//! Every figure is the median of its runs with the minimum and maximum beside it;
//! the ratio compares medians of the figure and its same-run baseline. Targets are
//! printed with a verdict, never asserted: a slow shared machine must not fail CI.

use std::fmt::Write as _;

/// The runs of one measurement, in one unit.
#[derive(Debug, Clone)]
pub struct Figure {
    values: Vec<f64>,
    unit: &'static str,
}

impl Figure {
    /// A figure from per-run values (at least one).
    pub fn new(mut values: Vec<f64>, unit: &'static str) -> Figure {
        values.sort_by(f64::total_cmp);
        Figure { values, unit }
    }

    /// The median (the upper middle value for an even count).
    pub fn median(&self) -> f64 {
        self.values
            .get(self.values.len() / 2)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn cell(&self) -> String {
        let (Some(min), Some(max)) = (self.values.first(), self.values.last()) else {
            return "—".to_owned();
        };
        format!(
            "{} {} ({}–{}, n={})",
            number(self.median()),
            self.unit,
            number(*min),
            number(*max),
            self.values.len()
        )
    }
}

/// How a figure is judged against its target.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// figure / baseline must be at least this.
    RatioAtLeast(f64),
    /// figure / baseline must be at most this.
    RatioAtMost(f64),
    /// The figure itself must stay below this, in its own unit.
    Below(f64),
    /// Reported for information.
    None,
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    case: String,
    figure: Option<Figure>,
    baseline_name: String,
    baseline: Option<Figure>,
    target: Target,
    note: String,
}

impl Row {
    /// A row for `case` with its figure and no baseline.
    pub fn new(case: impl Into<String>, figure: Figure, target: Target) -> Row {
        Row {
            case: case.into(),
            figure: Some(figure),
            baseline_name: String::new(),
            baseline: None,
            target,
            note: String::new(),
        }
    }

    /// A row that could not be measured, with the reason in place of the figure.
    pub fn skipped(case: impl Into<String>, reason: impl Into<String>) -> Row {
        Row {
            case: case.into(),
            figure: None,
            baseline_name: String::new(),
            baseline: None,
            target: Target::None,
            note: reason.into(),
        }
    }

    /// Adds the same-run baseline and its name.
    pub fn against(mut self, name: impl Into<String>, baseline: Figure) -> Row {
        self.baseline_name = name.into();
        self.baseline = Some(baseline);
        self
    }

    /// Adds a note shown in the baseline column (or in place of a skipped figure).
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = note.into();
        self
    }

    fn ratio(&self) -> Option<f64> {
        let (figure, baseline) = (self.figure.as_ref()?, self.baseline.as_ref()?);
        let ratio = figure.median() / baseline.median();
        ratio.is_finite().then_some(ratio)
    }

    /// `Some(true)` when the target is met, `None` when there is none to judge.
    pub fn met(&self) -> Option<bool> {
        let figure = self.figure.as_ref()?;
        match self.target {
            Target::RatioAtLeast(min) => self.ratio().map(|r| r >= min),
            Target::RatioAtMost(max) => self.ratio().map(|r| r <= max),
            Target::Below(limit) => Some(figure.median() < limit),
            Target::None => None,
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Target::RatioAtLeast(min) => format!("≥ {min}x"),
            Target::RatioAtMost(max) => format!("≤ {max}x"),
            Target::Below(limit) => format!(
                "< {} {}",
                number(limit),
                self.figure.as_ref().map_or("", |f| f.unit)
            ),
            Target::None => "—".to_owned(),
        }
    }
}

/// A markdown table of `rows` under `title`.
pub fn table(title: &str, rows: &[Row]) -> String {
    let mut out = format!("### {title}\n\n");
    out.push_str(
        "| case | figure (median, min–max) | baseline (same run) | ratio | target | met? |\n",
    );
    out.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for row in rows {
        let figure = row
            .figure
            .as_ref()
            .map_or_else(|| format!("skipped: {}", row.note), Figure::cell);
        let baseline = match &row.baseline {
            Some(b) => format!("{}: {}", row.baseline_name, b.cell()),
            None if row.figure.is_some() && !row.note.is_empty() => row.note.clone(),
            None => "—".to_owned(),
        };
        let ratio = row.ratio().map_or("—".to_owned(), |r| format!("{r:.2}x"));
        let met = match row.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {figure} | {baseline} | {ratio} | {} | {met} |",
            row.case,
            row.target_text()
        );
    }
    out
}

/// A number with as many decimals as its size deserves.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 100.0 || magnitude == 0.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_and_max_come_from_sorted_runs() {
        let f = Figure::new(vec![3.0, 1.0, 2.0, 5.0, 4.0], "MB/s");
        assert_eq!(f.median(), 3.0);
        assert_eq!(f.cell(), "3.00 MB/s (1.00–5.00, n=5)");
    }

    #[test]
    fn ratio_targets_are_judged_on_medians() {
        let fast = Figure::new(vec![90.0, 95.0, 100.0], "MB/s");
        let base = Figure::new(vec![100.0, 100.0, 100.0], "MB/s");
        let row = Row::new("upload", fast, Target::RatioAtLeast(0.9)).against("raw", base);
        assert_eq!(row.met(), Some(true));
        let text = table("t", &[row]);
        assert!(text.contains("| 0.95x | ≥ 0.9x | yes |"), "{text}");
    }

    #[test]
    fn skipped_rows_say_why_and_judge_nothing() {
        let row = Row::skipped("redis", "redis-server not available");
        assert_eq!(row.met(), None);
        assert!(table("t", &[row]).contains("skipped: redis-server not available"));
    }
}
