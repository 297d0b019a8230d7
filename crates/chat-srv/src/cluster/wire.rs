//! What travels on the cluster's pub/sub channels, and the per-sender order
//! check on the receiving side.
//!
//! One published message carries one chat line, already encoded as the
//! members will read it:
//!
//! ```text
//! v1 \t {node} \t {seq} \t {kind} \t {target} \t {line bytes, newline included}
//! kind: c = room chat line   (target: room key)
//!       n = room notice      (target: room key)
//!       p = private line     (target: peer id on the receiving node)
//! ```
//!
//! `seq` counts up by one for every message a node publishes, in the order
//! its writer sends them on its one Redis connection, so a receiver sees each
//! sender's lines in order; a gap means lines were lost (pub/sub is
//! at-most-once), and a number at or below the last one seen is dropped.

use std::collections::HashMap;

use bytes::Bytes;

/// What a bus message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// A member's message to a room.
    Chat,
    /// A `* …` notice to a room (joins, leaves, renames).
    Notice,
    /// A `/msg` line to one member.
    Private,
}

impl LineKind {
    fn tag(self) -> u8 {
        match self {
            LineKind::Chat => b'c',
            LineKind::Notice => b'n',
            LineKind::Private => b'p',
        }
    }

    fn from_tag(tag: &[u8]) -> Option<LineKind> {
        match tag {
            b"c" => Some(LineKind::Chat),
            b"n" => Some(LineKind::Notice),
            b"p" => Some(LineKind::Private),
            _ => None,
        }
    }
}

/// One decoded bus message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub node: &'a str,
    pub seq: u64,
    pub kind: LineKind,
    pub target: &'a str,
    pub line: &'a [u8],
}

const VERSION: &[u8] = b"v1";

impl Envelope<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48 + self.target.len() + self.line.len());
        for part in [
            VERSION,
            self.node.as_bytes(),
            self.seq.to_string().as_bytes(),
            &[self.kind.tag()],
            self.target.as_bytes(),
        ] {
            out.extend_from_slice(part);
            out.push(b'\t');
        }
        out.extend_from_slice(self.line);
        out
    }

    /// Parses a message; `None` for anything malformed or of another
    /// version (a newer node's message is skipped, never misread).
    pub fn decode(bytes: &[u8]) -> Option<Envelope<'_>> {
        let mut parts = bytes.splitn(6, |&b| b == b'\t');
        if parts.next()? != VERSION {
            return None;
        }
        let node = std::str::from_utf8(parts.next()?).ok()?;
        let seq = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
        let kind = LineKind::from_tag(parts.next()?)?;
        let target = std::str::from_utf8(parts.next()?).ok()?;
        let line = parts.next()?;
        Some(Envelope {
            node,
            seq,
            kind,
            target,
            line,
        })
    }

    /// The line as members receive it.
    pub fn line_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.line)
    }
}

/// Senders tracked at most; past this the table is cleared (nodes that left
/// long ago would otherwise stay in it forever).
const MAX_SENDERS: usize = 1024;

/// The receiving side's per-sender order check.
#[derive(Debug, Default)]
pub(crate) struct Order {
    last: HashMap<String, u64>,
}

/// What to do with a received message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Deliver it; `lost` messages of this sender were never received.
    Deliver { lost: u64 },
    /// Already seen or older than one seen: drop it.
    Stale,
}

impl Order {
    pub fn check(&mut self, node: &str, seq: u64) -> Verdict {
        if let Some(last) = self.last.get_mut(node) {
            if seq <= *last {
                return Verdict::Stale;
            }
            let lost = seq - *last - 1;
            *last = seq;
            return Verdict::Deliver { lost };
        }
        if self.last.len() >= MAX_SENDERS {
            self.last.clear();
        }
        self.last.insert(node.to_owned(), seq);
        // The first message heard from a node: what came before is not ours
        // to count (it may predate this node's subscription).
        Verdict::Deliver { lost: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_tabs_in_the_line() {
        let env = Envelope {
            node: "00ff",
            seq: 42,
            kind: LineKind::Chat,
            target: "dev",
            line: "alice: a\tb 你好\n".as_bytes(),
        };
        let bytes = env.encode();
        assert_eq!(Envelope::decode(&bytes), Some(env));
    }

    #[test]
    fn malformed_or_foreign_messages_are_skipped() {
        for bad in [
            &b""[..],
            b"v2\tn\t1\tc\troom\tx\n",
            b"v1\tn\tnot-a-number\tc\troom\tx\n",
            b"v1\tn\t1\tz\troom\tx\n",
            b"v1\tn\t1\tc\troom",
            b"v1\t\xff\t1\tc\troom\tx\n",
        ] {
            assert_eq!(Envelope::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn order_counts_gaps_and_drops_stale_messages() {
        let mut order = Order::default();
        assert_eq!(order.check("a", 5), Verdict::Deliver { lost: 0 });
        assert_eq!(order.check("a", 6), Verdict::Deliver { lost: 0 });
        assert_eq!(order.check("a", 9), Verdict::Deliver { lost: 2 });
        assert_eq!(order.check("a", 8), Verdict::Stale);
        assert_eq!(order.check("a", 9), Verdict::Stale);
        assert_eq!(order.check("b", 1), Verdict::Deliver { lost: 0 });
    }
}
