//! The record kept in the store beside each object: its SHA-256, size and state.
//!
//! A record is a small text object under `<prefix>/.up-srv/records/<name>`. It is
//! created with a conditional put before the data goes up, so it doubles as the
//! claim on the name that keeps two up-srv nodes from clobbering each other
//! (see [`super::put`]), and once the data is verified it says `stored`, which is
//! what reruns, `ls` and `get` read on any node. The format is line based so a
//! person can read it with `aws s3 cp ... -`:
//!
//! ```text
//! up-srv record 1
//! sha256 <64 lower-case hex digits>
//! size <decimal bytes>
//! state pending|stored
//! ```

use std::fmt::Write as _;

/// First line of every record; the number changes if the format does.
pub const RECORD_MAGIC: &str = "up-srv record 1";

/// Largest record accepted when reading one back (a valid one is under 150 bytes).
pub const MAX_RECORD_LEN: usize = 1024;

/// Whether the data under a name is complete and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Claimed: the data is going up, or an upload was cut before it was verified.
    Pending,
    /// The data is in the store and matched the digest.
    Stored,
}

/// What the store records about one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// SHA-256 of the whole object.
    pub sha256: [u8; 32],
    /// Object size in bytes.
    pub size: u64,
    /// Pending or stored.
    pub state: State,
}

/// Why a record read back from the store cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Longer than [`MAX_RECORD_LEN`].
    #[error("record is {0} bytes long (limit {MAX_RECORD_LEN})")]
    TooLong(usize),
    /// Not UTF-8, wrong first line, or a field missing or malformed.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

impl Record {
    /// A claim for content with this digest and size, before the data is up.
    pub fn pending(sha256: [u8; 32], size: u64) -> Self {
        Record {
            sha256,
            size,
            state: State::Pending,
        }
    }

    /// The same content, marked stored.
    pub fn stored(&self) -> Self {
        Record {
            state: State::Stored,
            ..self.clone()
        }
    }

    /// True when both records describe the same bytes (state aside).
    pub fn same_content(&self, other: &Record) -> bool {
        self.sha256 == other.sha256 && self.size == other.size
    }

    /// The digest as 64 lower-case hex digits.
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// The record's text form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let state = match self.state {
            State::Pending => "pending",
            State::Stored => "stored",
        };
        format!(
            "{RECORD_MAGIC}\nsha256 {}\nsize {}\nstate {state}\n",
            self.sha256_hex(),
            self.size
        )
        .into_bytes()
    }

    /// Parses a record read back from the store; total on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(RecordError::TooLong(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RecordError::Malformed("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(RECORD_MAGIC) {
            return Err(RecordError::Malformed(
                "first line is not `up-srv record 1`",
            ));
        }
        let (mut sha256, mut size, mut state) = (None, None, None);
        for line in lines {
            match line.split_once(' ') {
                Some(("sha256", v)) => sha256 = parse_hex(v),
                Some(("size", v)) => size = v.parse::<u64>().ok(),
                Some(("state", "pending")) => state = Some(State::Pending),
                Some(("state", "stored")) => state = Some(State::Stored),
                _ => return Err(RecordError::Malformed("unknown line")),
            }
        }
        Ok(Record {
            sha256: sha256.ok_or(RecordError::Malformed("no valid sha256 line"))?,
            size: size.ok_or(RecordError::Malformed("no valid size line"))?,
            state: state.ok_or(RecordError::Malformed("no valid state line"))?,
        })
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses exactly 64 hex digits (either case).
pub fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_in_both_states() {
        let pending = Record::pending([0xab; 32], 123_456);
        for r in [pending.clone(), pending.stored()] {
            assert_eq!(Record::from_bytes(&r.to_bytes()), Ok(r));
        }
    }

    #[test]
    fn record_text_is_readable() {
        let text = String::from_utf8(Record::pending([1; 32], 5).stored().to_bytes()).unwrap();
        assert_eq!(
            text,
            format!(
                "up-srv record 1\nsha256 {}\nsize 5\nstate stored\n",
                "01".repeat(32)
            )
        );
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let good = String::from_utf8(Record::pending([7; 32], 9).to_bytes()).unwrap();
        let bad = [
            String::new(),
            "up-srv record 2\n".to_string(),
            good.replace("size 9", "size -1"),
            good.replace("state pending", "state maybe"),
            good.replace(&"07".repeat(32), &"07".repeat(31)),
            good.replace(&"07".repeat(32), &format!("zz{}", "07".repeat(31))),
            good.replace("size 9\n", ""),
            format!("{good}extra line\n"),
        ];
        for text in bad {
            assert!(Record::from_bytes(text.as_bytes()).is_err(), "{text:?}");
        }
        assert!(Record::from_bytes(&[0xff, 0xfe]).is_err());
        assert_eq!(
            Record::from_bytes(&vec![b'a'; MAX_RECORD_LEN + 1]),
            Err(RecordError::TooLong(MAX_RECORD_LEN + 1))
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_wrong_lengths() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 8) as u8);
        assert_eq!(parse_hex(&hex(&d)), Some(d));
        assert_eq!(parse_hex(&hex(&d).to_uppercase()), Some(d));
        assert_eq!(parse_hex("00"), None);
        assert_eq!(parse_hex(&"é".repeat(32)), None);
    }
}
