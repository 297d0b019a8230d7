//! Byte sizes as people type and read them: one grammar for every size flag
//! (`--max-size`, `--limit-rate`) and one readable spelling for messages.
//!
//! ```text
//! size := digits [ws] [suffix]      suffix := K | M | G | T, each optionally + B or iB, any case
//! 1048576   512K   10G   512MiB   3kb   (binary multiples: K = 1024)
//! ```
//!
//! Sizes appear in refusal reasons, so the readable form lives here beside
//! the wire types that carry them.

use std::fmt;

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// No digits, or characters that are not a size.
    #[error("invalid size '{0}' (expected e.g. 1048576, 512K, 64M or 10G)")]
    Invalid(String),
    /// A suffix other than K, M, G, T (with optional B / iB).
    #[error("unknown size suffix in '{0}' (use K, M, G or T)")]
    Suffix(String),
    /// The value does not fit in 64 bits.
    #[error("size '{0}' is too large")]
    Overflow(String),
}

/// Parses a size: digits with an optional binary suffix (`K`, `M`, `G`, `T`,
/// also spelled `KB`/`KiB`, any case); a bare number is bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    if digits.is_empty() {
        return Err(SizeError::Invalid(s.to_string()));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(s.to_string()))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(SizeError::Suffix(s.to_string())),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(s.to_string()))
}

/// A byte count that displays in the largest fitting binary unit with one
/// decimal (`39.0 MiB`), or exactly in bytes below 1 KiB (`12 B`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readable(pub u64);

impl fmt::Display for Readable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut v = self.0 as f64;
        let mut unit = 0;
        while v >= 1024.0 && unit < UNITS.len() - 1 {
            v /= 1024.0;
            unit += 1;
        }
        if unit == 0 {
            write!(f, "{} B", self.0)
        } else {
            write!(f, "{v:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_suffixes() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("3k"), Ok(3072));
        assert_eq!(parse_size("4 M"), Ok(4 << 20));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(matches!(parse_size("G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("fast"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("10X"), Err(SizeError::Suffix(_))));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn readable_sizes() {
        assert_eq!(Readable(0).to_string(), "0 B");
        assert_eq!(Readable(1023).to_string(), "1023 B");
        assert_eq!(Readable(1536).to_string(), "1.5 KiB");
        assert_eq!(Readable(39 << 20).to_string(), "39.0 MiB");
        assert_eq!(Readable(3 << 30).to_string(), "3.0 GiB");
        assert_eq!(Readable(64 << 30).to_string(), "64.0 GiB");
        assert_eq!(Readable(u64::MAX).to_string(), "16.0 EiB");
    }

    #[test]
    fn readable_round_trips_through_the_grammar_for_whole_units() {
        for n in [0u64, 7, 1 << 10, 5 << 20, 64 << 30] {
            let shown = Readable(n).to_string();
            let typed = shown.replace(".0", "");
            assert_eq!(parse_size(&typed), Ok(n), "{shown}");
        }
    }
}
