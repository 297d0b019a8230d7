//! What each client line does: answer a message and show it to the room, or
//! run a command.
//!
//! Every non-empty line except `q` gets exactly one answer line, written to
//! the session's output buffer: the reply `X,你好` to a message, `+ …` when a
//! command succeeds, `! …` when a line is refused. Lines for other clients go
//! through their bounded queues (`room::deliver`). See the "Chat" section of
//! `docs/PROTOCOL.md` for every form.
//!
//! On a cluster node (`--redis`) the same commands also reach the other
//! nodes through [`crate::cluster`]: room lines and notices are published
//! after local delivery, and `/nick`, `/who`, `/rooms`, `/msg` and
//! `/history` ask Redis; while the node is split from Redis they answer
//! from this node alone (and `/nick` waits for the chat to be whole).

use std::fmt::Write as _;
use std::sync::Arc;

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use proto::chat::{count, name_key, validate_nick, validate_room, ClientLine, ServerLine};
use tracing::debug;

use crate::cluster::{Claim, ClusterError, LineKind};
use crate::room::{deliver, send, Peer, RenameError};
use crate::shared::Shared;
use crate::NOTICE_ROOM_LIMIT;

/// Lists (`/rooms`, `/who`) name at most this many entries, so one answer
/// line stays small whatever the number of clients.
pub(crate) const LIST_LIMIT: usize = 100;

/// The `/help` answer.
pub(crate) const HELP: &str = "commands: /nick NAME, /join ROOM, /rooms, /who, /msg NICK TEXT, \
/history [N], /help, /quit (or q); any other line is a message (start it with // to send a \
leading /); command names ignore case";

/// Where a client is: its identity and its room.
pub(crate) struct Member {
    pub peer: Peer,
    pub room: Arc<str>,
    /// The client's address, for the log.
    pub addr: SocketAddr,
}

/// Runs one parsed line that is neither empty nor a quit. Only on a
/// cluster node does it wait (for Redis, at most `cluster::QUERY_TIMEOUT`).
pub(crate) async fn apply(
    line: ClientLine<'_>,
    me: &mut Member,
    shared: &Shared,
    out: &mut BytesMut,
) {
    match line {
        ClientLine::Message(text) => message(text, me, shared, out),
        ClientLine::Nick(new) => nick(new, me, shared, out).await,
        ClientLine::Join(room) => join(room, me, shared, out).await,
        ClientLine::Rooms => rooms(shared, out).await,
        ClientLine::Who => who(me, shared, out).await,
        ClientLine::Msg { to, text } => private(to, text, me, shared, out).await,
        ClientLine::Help => ServerLine::Ok(HELP).encode(out),
        ClientLine::History(n) => history(n, me, shared, out).await,
        // The session handles these before calling here.
        ClientLine::Empty | ClientLine::Quit => {}
    }
}

fn message(text: &str, me: &Member, shared: &Shared, out: &mut BytesMut) {
    ServerLine::Reply(text).encode(out);
    let from = &*me.peer.nick;
    // Built outside the registry's lock; the time is the server's local time.
    let kept = shared.registry.keeps_history().then(|| {
        let time = local_hh_mm(unix_ms() / 1000);
        ServerLine::History {
            time: time.as_str(),
            from,
            text,
        }
        .to_bytes()
    });
    let members = shared.registry.post(&me.room, kept.clone());
    let cluster = shared.cluster();
    // A lone client (the legacy tutorial case) costs no broadcast at all.
    if members.len() > 1 || cluster.is_some() {
        let line = ServerLine::Chat { from, text }.to_bytes();
        // Published first: the other nodes' members have the longer way.
        if let Some(cluster) = cluster {
            cluster.room_line(&me.room, LineKind::Chat, line.clone());
        }
        deliver(&members, me.peer.id, &line);
        if let (Some(cluster), Some(kept)) = (cluster, kept) {
            let kept = String::from_utf8_lossy(&kept);
            cluster.record(&me.room, unix_ms(), kept.trim_end_matches('\n'));
        }
    }
}

/// The server's local time of day at `unix_secs`, as `HH:MM`.
///
/// Worked out once a minute per thread and reused: asking the time zone and
/// formatting on every message cost more than the rest of a lone client's
/// message. A minute of UTC is a minute of local time in every zone (their
/// offsets and transitions fall on whole minutes), so the cache is exact.
fn local_hh_mm(unix_secs: u64) -> HhMm {
    use chrono::{TimeZone as _, Timelike as _};
    use std::cell::Cell;
    thread_local! {
        static LAST: Cell<Option<(u64, HhMm)>> = const { Cell::new(None) };
    }
    let minute = unix_secs / 60;
    LAST.with(|last| {
        if let Some((_, hh_mm)) = last.get().filter(|(cached, _)| *cached == minute) {
            return hh_mm;
        }
        let secs = i64::try_from(minute * 60).unwrap_or(i64::MAX);
        let hh_mm = chrono::Local
            .timestamp_opt(secs, 0)
            .single()
            .map_or(HhMm(*b"??:??"), |t| HhMm::new(t.hour(), t.minute()));
        last.set(Some((minute, hh_mm)));
        hh_mm
    })
}

/// A time of day as the five ASCII bytes `HH:MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HhMm([u8; 5]);

impl HhMm {
    fn new(hour: u32, minute: u32) -> Self {
        let digit = |n: u32| b'0' + u8::try_from(n % 10).unwrap_or(0);
        HhMm([
            digit(hour / 10),
            digit(hour),
            b':',
            digit(minute / 10),
            digit(minute),
        ])
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, ':' and '?' are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??:??")
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn history(n: usize, me: &Member, shared: &Shared, out: &mut BytesMut) {
    if !shared.registry.keeps_history() {
        return ServerLine::Ok("this server keeps no history (chat-srv --history 0)").encode(out);
    }
    let from_cluster = match shared.cluster() {
        Some(cluster) => cluster.history(&me.room, n).await.ok(),
        None => None,
    };
    let lines: Vec<Bytes> = match from_cluster {
        Some(entries) => entries
            .into_iter()
            .map(|e| Bytes::from(format!("{}\n", e.line)))
            .collect(),
        None => shared.registry.history(&me.room, n),
    };
    for line in &lines {
        out.extend_from_slice(line);
    }
    let text = format!(
        "{} of history in {}",
        count(lines.len(), "line", "lines"),
        me.room
    );
    ServerLine::Ok(&text).encode(out);
}

/// Sends `* text` to the other members of `room`, if the room is small
/// enough for notices (see [`NOTICE_ROOM_LIMIT`]), and to its members on
/// the other cluster nodes.
fn notify(shared: &Shared, room: &str, members: &[Peer], except: u64, text: &str) {
    let local = members.len() <= NOTICE_ROOM_LIMIT && members.iter().any(|p| p.id != except);
    let cluster = shared.cluster();
    if !local && cluster.is_none() {
        return;
    }
    let line = ServerLine::Notice(text).to_bytes();
    if local {
        deliver(members, except, &line);
    }
    if let Some(cluster) = cluster {
        cluster.room_line(room, LineKind::Notice, line);
    }
}

/// The answer to a nickname change a cluster node cannot check now.
fn unchecked_nick_error(e: &ClusterError) -> String {
    match e {
        ClusterError::Split => {
            "the chat is split: nickname changes wait until it is whole again".to_owned()
        }
        e => format!("cannot check the nickname with the other servers ({e}); try again"),
    }
}

async fn nick(new: &str, me: &mut Member, shared: &Shared, out: &mut BytesMut) {
    let new = match validate_nick(new) {
        Ok(nfc) => nfc,
        Err(e) => return ServerLine::Error(&e.to_string()).encode(out),
    };
    if *me.peer.nick == *new {
        return ServerLine::Error(&format!("you are already {new}")).encode(out);
    }
    let old = me.peer.nick.clone();
    if let Some(cluster) = shared.cluster() {
        // Redis decides first: exactly one of racing claims on any node wins.
        let (old_key, new_key) = (name_key(&old), name_key(&new));
        match cluster
            .claim_nick(me.peer.id, &old_key, &new_key, &new)
            .await
        {
            Ok(Claim::Won) => {}
            Ok(Claim::Taken) => {
                let msg = format!("nickname {new} is taken, choose another");
                return ServerLine::Error(&msg).encode(out);
            }
            Err(e) => return ServerLine::Error(&unchecked_nick_error(&e)).encode(out),
        }
    }
    match shared.registry.rename(&mut me.peer, &me.room, &new) {
        Ok(members) => {
            debug!(peer = %me.addr, %old, %new, "nick changed");
            ServerLine::Ok(&format!("you are now {new}")).encode(out);
            let text = format!("{old} is now {new}");
            notify(shared, &me.room, &members, me.peer.id, &text);
        }
        Err(RenameError::Taken) => {
            ServerLine::Error(&format!("nickname {new} is taken, choose another")).encode(out);
        }
    }
}

async fn join(room: &str, me: &mut Member, shared: &Shared, out: &mut BytesMut) {
    let room = match validate_room(room) {
        Ok(room) => room,
        Err(e) => return ServerLine::Error(&e.to_string()).encode(out),
    };
    if *me.room == *room {
        return ServerLine::Error(&format!("you are already in {room}")).encode(out);
    }
    let (new_room, old, new) = shared.registry.switch(&me.peer, &me.room, &room);
    debug!(peer = %me.addr, nick = %me.peer.nick, from = %me.room, to = %new_room, "moved");
    if let Some(cluster) = shared.cluster() {
        cluster.switch(me.peer.id, &new_room, &new_room);
    }
    let from = std::mem::replace(&mut me.room, new_room);
    let nick = &me.peer.nick;
    notify(
        shared,
        &from,
        &old,
        me.peer.id,
        &format!("{nick} left for {room}"),
    );
    notify(
        shared,
        &me.room,
        &new,
        me.peer.id,
        &format!("{nick} joined"),
    );
    // A cluster node counts the whole room (asked after the move, in order).
    let total = match shared.cluster() {
        Some(cluster) => cluster.room_size(&me.room).await.unwrap_or(new.len()),
        None => new.len(),
    };
    let members = count(total, "member", "members");
    ServerLine::Ok(&format!("you are now in {room} ({members})")).encode(out);
}

/// Appends `items` comma-separated, at most [`LIST_LIMIT`] of them.
fn push_list<I: ExactSizeIterator<Item = String>>(text: &mut String, items: I) {
    let total = items.len();
    for (i, item) in items.take(LIST_LIMIT).enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        text.push_str(&item);
    }
    if total > LIST_LIMIT {
        let _ = write!(text, ", and {} more", total - LIST_LIMIT);
    }
}

async fn rooms(shared: &Shared, out: &mut BytesMut) {
    let from_cluster = match shared.cluster() {
        Some(cluster) => cluster.rooms().await.ok(),
        None => None,
    };
    let list: Vec<(Arc<str>, usize)> = match from_cluster {
        Some(list) => list.into_iter().map(|(r, n)| (r.into(), n)).collect(),
        None => shared.registry.room_list(),
    };
    let mut text = format!("{}: ", count(list.len(), "room", "rooms"));
    push_list(
        &mut text,
        list.iter().map(|(name, n)| format!("{name} ({n})")),
    );
    ServerLine::Ok(&text).encode(out);
}

async fn who(me: &Member, shared: &Shared, out: &mut BytesMut) {
    let from_cluster = match shared.cluster() {
        Some(cluster) => cluster.who(&me.room).await.ok(),
        None => None,
    };
    let nicks: Vec<String> = match from_cluster {
        Some(nicks) => nicks,
        None => {
            let members = shared.registry.members(&me.room);
            let mut nicks: Vec<String> = members.iter().map(|p| p.nick.to_string()).collect();
            nicks.sort_unstable();
            nicks
        }
    };
    let mut text = format!("{} in {}: ", nicks.len(), me.room);
    push_list(&mut text, nicks.into_iter());
    ServerLine::Ok(&text).encode(out);
}

async fn private(to: &str, text: &str, me: &Member, shared: &Shared, out: &mut BytesMut) {
    let line = ServerLine::Private {
        from: &me.peer.nick,
        text,
    };
    let Some(peer) = shared.registry.find(to) else {
        return private_elsewhere(to, line.to_bytes(), shared, out).await;
    };
    if send(&peer, line.to_bytes()) {
        ServerLine::Ok(&format!("sent to {}", peer.nick)).encode(out);
    } else {
        let msg = format!(
            "cannot deliver to {}: it is not keeping up and is being disconnected",
            peer.nick
        );
        ServerLine::Error(&msg).encode(out);
    }
}

/// `/msg` to a nickname not on this node: through the cluster, if any.
async fn private_elsewhere(to: &str, line: Bytes, shared: &Shared, out: &mut BytesMut) {
    let found = match shared.cluster() {
        Some(cluster) => match cluster.find(&name_key(to)).await {
            Ok(Some(peer)) => {
                cluster.private_line(&peer, line);
                Some(peer.nick)
            }
            Ok(None) => None,
            Err(e) => {
                let msg = format!("cannot reach the other servers ({e}); {to} is not on this one");
                return ServerLine::Error(&msg).encode(out);
            }
        },
        None => None,
    };
    match found {
        Some(nick) => ServerLine::Ok(&format!("sent to {nick}")).encode(out),
        None => ServerLine::Error(&format!("no such nickname: {to}")).encode(out),
    }
}

/// Tells the lobby a client connected (never the client itself).
pub(crate) fn notify_join(shared: &Shared, room: &str, members: &[Peer], me: u64, nick: &str) {
    notify(shared, room, members, me, &format!("{nick} joined"));
}

/// Tells the remaining members of a room that a client disconnected: on
/// this node only when `local` (not at shutdown, when all are leaving),
/// on the other cluster nodes always.
pub(crate) fn notify_leave(
    shared: &Shared,
    room: &str,
    remaining: &[Peer],
    nick: &str,
    local: bool,
) {
    let remaining = if local { remaining } else { &[] };
    // The client already left the list, so nobody is excluded.
    notify(shared, room, remaining, u64::MAX, &format!("{nick} left"));
}

#[cfg(test)]
mod tests {
    use super::local_hh_mm;
    use chrono::TimeZone as _;

    #[test]
    fn history_time_matches_the_local_clock_across_minutes_and_days() {
        // Every 7 minutes and 13 seconds over two days, plus both sides of
        // a minute boundary: the cached value always equals a fresh format.
        let start = 1_780_000_000_u64;
        let points = (0..400).map(|i| start + i * 433).chain([
            start + 59,
            start + 60,
            start + 119,
            start + 120,
        ]);
        for secs in points {
            let expected = chrono::Local
                .timestamp_opt(i64::try_from(secs).expect("small"), 0)
                .single()
                .expect("a UTC instant has one local time")
                .format("%H:%M")
                .to_string();
            assert_eq!(local_hh_mm(secs).as_str(), expected, "at {secs}");
        }
    }
}
