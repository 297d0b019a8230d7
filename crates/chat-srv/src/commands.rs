//! What each client line does: answer a message and show it to the room, or
//! run a command.
//!
//! Every non-empty line except `q` gets exactly one answer line, written to
//! the session's output buffer: the reply `X,你好` to a message, `+ …` when a
//! command succeeds, `! …` when a line is refused. Lines for other clients go
//! through their bounded queues (`room::deliver`). See the "Chat" section of
//! `docs/PROTOCOL.md` for every form.

use std::fmt::Write as _;
use std::sync::Arc;

use std::net::SocketAddr;

use bytes::BytesMut;
use proto::chat::{count, validate_nick, validate_room, ClientLine, ServerLine};
use tracing::debug;

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

/// Runs one parsed line that is neither empty nor a quit.
pub(crate) fn apply(line: ClientLine<'_>, me: &mut Member, shared: &Shared, out: &mut BytesMut) {
    match line {
        ClientLine::Message(text) => message(text, me, shared, out),
        ClientLine::Nick(new) => nick(new, me, shared, out),
        ClientLine::Join(room) => join(room, me, shared, out),
        ClientLine::Rooms => rooms(shared, out),
        ClientLine::Who => who(me, shared, out),
        ClientLine::Msg { to, text } => private(to, text, me, shared, out),
        ClientLine::Help => ServerLine::Ok(HELP).encode(out),
        ClientLine::History(n) => history(n, me, shared, out),
        // The session handles these before calling here.
        ClientLine::Empty | ClientLine::Quit => {}
    }
}

fn message(text: &str, me: &Member, shared: &Shared, out: &mut BytesMut) {
    ServerLine::Reply(text).encode(out);
    let from = &*me.peer.nick;
    // Built outside the registry's lock; the time is the server's local time.
    let kept = shared.registry.keeps_history().then(|| {
        let time = chrono::Local::now().format("%H:%M").to_string();
        ServerLine::History {
            time: &time,
            from,
            text,
        }
        .to_bytes()
    });
    let members = shared.registry.post(&me.room, kept);
    // A lone client (the legacy tutorial case) costs no broadcast at all.
    if members.len() > 1 {
        let line = ServerLine::Chat { from, text }.to_bytes();
        deliver(&members, me.peer.id, &line);
    }
}

fn history(n: usize, me: &Member, shared: &Shared, out: &mut BytesMut) {
    if !shared.registry.keeps_history() {
        return ServerLine::Ok("this server keeps no history (chat-srv --history 0)").encode(out);
    }
    let lines = shared.registry.history(&me.room, n);
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

/// Sends `* text` to the other members, if the room is small enough for
/// notices (see [`NOTICE_ROOM_LIMIT`]).
fn notify(members: &[Peer], except: u64, text: &str) {
    if members.len() <= NOTICE_ROOM_LIMIT && members.iter().any(|p| p.id != except) {
        deliver(members, except, &ServerLine::Notice(text).to_bytes());
    }
}

fn nick(new: &str, me: &mut Member, shared: &Shared, out: &mut BytesMut) {
    let new = match validate_nick(new) {
        Ok(nfc) => nfc,
        Err(e) => return ServerLine::Error(&e.to_string()).encode(out),
    };
    if *me.peer.nick == *new {
        return ServerLine::Error(&format!("you are already {new}")).encode(out);
    }
    let old = me.peer.nick.clone();
    match shared.registry.rename(&mut me.peer, &me.room, &new) {
        Ok(members) => {
            debug!(peer = %me.addr, %old, %new, "nick changed");
            ServerLine::Ok(&format!("you are now {new}")).encode(out);
            notify(&members, me.peer.id, &format!("{old} is now {new}"));
        }
        Err(RenameError::Taken) => {
            ServerLine::Error(&format!("nickname {new} is taken, choose another")).encode(out);
        }
    }
}

fn join(room: &str, me: &mut Member, shared: &Shared, out: &mut BytesMut) {
    let room = match validate_room(room) {
        Ok(room) => room,
        Err(e) => return ServerLine::Error(&e.to_string()).encode(out),
    };
    if *me.room == *room {
        return ServerLine::Error(&format!("you are already in {room}")).encode(out);
    }
    let (new_room, old, new) = shared.registry.switch(&me.peer, &me.room, &room);
    debug!(peer = %me.addr, nick = %me.peer.nick, from = %me.room, to = %new_room, "moved");
    me.room = new_room;
    let nick = &me.peer.nick;
    notify(&old, me.peer.id, &format!("{nick} left for {room}"));
    notify(&new, me.peer.id, &format!("{nick} joined"));
    let members = count(new.len(), "member", "members");
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

fn rooms(shared: &Shared, out: &mut BytesMut) {
    let list = shared.registry.room_list();
    let mut text = format!("{}: ", count(list.len(), "room", "rooms"));
    push_list(
        &mut text,
        list.iter().map(|(name, n)| format!("{name} ({n})")),
    );
    ServerLine::Ok(&text).encode(out);
}

fn who(me: &Member, shared: &Shared, out: &mut BytesMut) {
    let members = shared.registry.members(&me.room);
    let mut nicks: Vec<&str> = members.iter().map(|p| &*p.nick).collect();
    nicks.sort_unstable();
    let mut text = format!("{} in {}: ", nicks.len(), me.room);
    push_list(&mut text, nicks.iter().map(|n| n.to_string()));
    ServerLine::Ok(&text).encode(out);
}

fn private(to: &str, text: &str, me: &Member, shared: &Shared, out: &mut BytesMut) {
    let Some(peer) = shared.registry.find(to) else {
        return ServerLine::Error(&format!("no such nickname: {to}")).encode(out);
    };
    let line = ServerLine::Private {
        from: &me.peer.nick,
        text,
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

/// Tells the lobby a client connected (never the client itself).
pub(crate) fn notify_join(members: &[Peer], me: u64, nick: &str) {
    notify(members, me, &format!("{nick} joined"));
}

/// Tells the remaining members of a room that a client disconnected.
pub(crate) fn notify_leave(remaining: &[Peer], nick: &str) {
    // The client already left the list, so nobody is excluded.
    notify(remaining, u64::MAX, &format!("{nick} left"));
}
