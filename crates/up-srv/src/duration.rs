//! Parses the durations of up-srv's flags: a number with a unit, `500ms`,
//! `30s`, `10m`, `2h`, `7d`; a bare number is seconds (what the flags took
//! before units were accepted).

use std::time::Duration;

/// Parses `30s`-style durations; see the module doc for the units.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (expected e.g. 30s, 10m, 2h or 7d)"))?;
    let secs = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(n)),
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => return Err(format!("unknown unit in '{s}' (use ms, s, m, h or d)")),
    };
    secs.map(Duration::from_secs)
        .ok_or_else(|| format!("duration '{s}' is too long"))
}

/// A duration in the largest unit that divides it exactly (`7d`, `90s`),
/// the spelling `--help` shows for defaults.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_nanos() != 0 || secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % len == 0 {
            return format!("{}{unit}", secs / len);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("3w").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn defaults_print_in_their_natural_unit() {
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(60)), "1m");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        for d in ["7d", "1m", "10s", "100ms"] {
            assert_eq!(format_duration(parse_duration(d).expect("parses")), d);
        }
    }
}
