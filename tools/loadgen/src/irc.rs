//! The IRC side of the fan-out case: registration, joining a channel, answering
//! `PING`, and recognising the fan-out messages, over the same [`LineConn`].
//!
//! Only what the bench needs of RFC 2812: `NICK`/`USER` then wait for `001`,
//! `JOIN` then wait for `366` (end of the names list), `PRIVMSG` to the channel.

use anyhow::{bail, Result};

use crate::conn::LineConn;

/// How many lines registration or a join may skip before giving up.
const MAX_SKIPPED_LINES: usize = 100_000;

/// What a line from the IRC server means to a fan-out member.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A numeric reply such as `001` or `366`.
    Numeric(&'a str),
    /// `PING :token`: must be answered with `PONG :token`.
    Ping(&'a str),
    /// `ERROR :reason`: the server is closing the connection.
    Error(&'a str),
    /// A `PRIVMSG` whose text is `fan-<i>`.
    Fan(usize),
    /// Anything else (notices, other members' `JOIN`s, ...).
    Other,
}

/// Parses one line (without its line end).
pub fn parse(line: &[u8]) -> Event<'_> {
    let Ok(text) = std::str::from_utf8(line) else {
        return Event::Other;
    };
    // An optional `:prefix ` comes first.
    let rest = match text.strip_prefix(':') {
        Some(prefixed) => prefixed.split_once(' ').map_or("", |(_, r)| r),
        None => text,
    };
    let (command, params) = rest.split_once(' ').unwrap_or((rest, ""));
    match command {
        "PING" => Event::Ping(params.trim_start_matches(':')),
        "ERROR" => Event::Error(params.trim_start_matches(':')),
        "PRIVMSG" => params
            .split_once(" :fan-")
            .and_then(|(_, seq)| seq.parse().ok())
            .map_or(Event::Other, Event::Fan),
        c if c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()) => Event::Numeric(c),
        _ => Event::Other,
    }
}

/// Registers as `nick` and waits for the welcome numeric `001`.
pub async fn register(conn: &mut LineConn, nick: &str) -> Result<()> {
    conn.send(format!("NICK {nick}\r\nUSER {nick} 0 * :bench\r\n").as_bytes())
        .await?;
    wait_for(conn, "001", &format!("registering as {nick}")).await
}

/// Joins `channel` and waits for the end of its names list (`366`).
pub async fn join(conn: &mut LineConn, channel: &str) -> Result<()> {
    conn.send(format!("JOIN {channel}\r\n").as_bytes()).await?;
    wait_for(conn, "366", &format!("joining {channel}")).await
}

/// Answers `PING`; fails on `ERROR`; returns the index of a fan-out message.
pub async fn handle(conn: &mut LineConn) -> Result<Option<usize>> {
    let reply = match parse(conn.read_line().await?) {
        Event::Fan(seq) => return Ok(Some(seq)),
        Event::Ping(token) => format!("PONG :{token}\r\n"),
        Event::Error(reason) => bail!("the IRC server closed the connection: {reason}"),
        Event::Numeric(_) | Event::Other => return Ok(None),
    };
    conn.send(reply.as_bytes()).await?;
    Ok(None)
}

async fn wait_for(conn: &mut LineConn, numeric: &str, what: &str) -> Result<()> {
    for _ in 0..MAX_SKIPPED_LINES {
        let line = conn.read_line().await?;
        let reply = match parse(line) {
            Event::Numeric(n) if n == numeric => return Ok(()),
            // 4xx and 5xx numerics are errors (nick in use, channel full, ...).
            Event::Numeric(n) if n.starts_with('4') || n.starts_with('5') => {
                bail!(
                    "{what}: the server answered {:?}",
                    String::from_utf8_lossy(line)
                )
            }
            Event::Error(reason) => bail!("{what}: the server closed with {reason:?}"),
            Event::Ping(token) => format!("PONG :{token}\r\n"),
            _ => continue,
        };
        conn.send(reply.as_bytes()).await?;
    }
    bail!("{what}: no {numeric} after {MAX_SKIPPED_LINES} lines")
}

#[cfg(test)]
mod tests {
    use super::{parse, Event};

    #[test]
    fn lines_are_classified_by_their_command() {
        assert_eq!(parse(b":irc.bench 001 m1 :Welcome"), Event::Numeric("001"));
        assert_eq!(
            parse(b":irc.bench 366 m1 #fanout :End of NAMES list"),
            Event::Numeric("366")
        );
        assert_eq!(parse(b"PING :irc.bench"), Event::Ping("irc.bench"));
        assert_eq!(parse(b"ERROR :Closing link"), Event::Error("Closing link"));
        assert_eq!(
            parse(b":sender!~sender@localhost PRIVMSG #fanout :fan-17"),
            Event::Fan(17)
        );
        assert_eq!(parse(b":sender!~s@h PRIVMSG #fanout :hello"), Event::Other);
        assert_eq!(parse(b":m2!~m2@h JOIN :#fanout"), Event::Other);
        assert_eq!(parse(b"\xff\xfe"), Event::Other);
    }
}
