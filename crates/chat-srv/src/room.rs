//! The shared registry of rooms, nicknames and room history.
//!
//! One `std::sync::Mutex` guards it; every method locks, does a short
//! in-memory change and unlocks, never across an `.await`. A room's member
//! list is an `Arc<Vec<Peer>>`: a broadcast clones the `Arc` under the lock
//! and delivers outside it, and joins and leaves change the list in place
//! (`Arc::make_mut`) unless a broadcast still holds the old snapshot. Each
//! room keeps its last chat lines (already encoded as `~ [HH:MM] NICK: X`)
//! in a ring of at most `--history` lines, for as long as the room exists.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use proto::chat::name_key;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio_util::sync::CancellationToken;

/// One connected client as the rest of the server reaches it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// Unique for the life of the server; identifies the client even across
    /// nickname changes.
    pub id: u64,
    /// Current nickname, as displayed.
    pub nick: Arc<str>,
    /// The client's bounded outgoing queue of encoded lines.
    pub tx: mpsc::Sender<Bytes>,
    /// Cancelled when the client cannot keep up, which ends its session.
    pub kick: CancellationToken,
}

/// A snapshot of a room's members.
pub(crate) type Members = Arc<Vec<Peer>>;

/// Why a nickname change was refused.
#[derive(Debug)]
pub(crate) enum RenameError {
    Taken,
}

/// One room: who is in it and what was said lately.
#[derive(Default)]
struct Room {
    members: Members,
    /// The last chat lines, oldest first, encoded as history lines.
    history: VecDeque<Bytes>,
}

#[derive(Default)]
struct Inner {
    rooms: HashMap<Arc<str>, Room>,
    /// Keyed by [`proto::chat::name_key`]: nicknames are unique ignoring
    /// case (Unicode case folding) and normalisation.
    nicks: HashMap<Box<str>, Peer>,
    next_id: u64,
}

/// Rooms and nicknames of all connected clients.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    /// Lines of history kept per room; 0 keeps none.
    history: usize,
    /// Put between `guest-` and the id: empty on a single server; in a
    /// cluster, a tag of the node, so guests of two nodes never share a name.
    guest_tag: Box<str>,
}

impl Registry {
    /// An empty registry keeping `history` lines per room.
    #[cfg(test)]
    pub fn new(history: usize) -> Self {
        Registry::with_guest_tag(history, "")
    }

    /// An empty registry whose guests are named `guest-{tag}{id}`.
    pub fn with_guest_tag(history: usize, tag: &str) -> Self {
        Registry {
            inner: Mutex::default(),
            history,
            guest_tag: tag.into(),
        }
    }

    /// True when rooms keep history.
    pub fn keeps_history(&self) -> bool {
        self.history > 0
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain maps behind, still
        // consistent enough to serve the other clients.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new client as `guest-N` in the lobby; returns it, the
    /// lobby's name and the lobby's members (the new client included).
    pub fn enter(
        &self,
        tx: mpsc::Sender<Bytes>,
        kick: CancellationToken,
    ) -> (Peer, Arc<str>, Members) {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        // `guest-` names cannot be chosen with /nick and ids never repeat,
        // so this name is free.
        let nick: Arc<str> = format!("{}{}{id}", proto::chat::GUEST_PREFIX, self.guest_tag).into();
        let peer = Peer { id, nick, tx, kick };
        inner
            .nicks
            .insert(name_key(&peer.nick).into(), peer.clone());
        let (room, members) = add_member(&mut inner, proto::chat::LOBBY, peer.clone());
        (peer, room, members)
    }

    /// The members of `room` (empty if it does not exist).
    pub fn members(&self, room: &str) -> Members {
        self.lock()
            .rooms
            .get(room)
            .map(|r| r.members.clone())
            .unwrap_or_default()
    }

    /// Records `line` (a history line, built by the caller outside the
    /// lock) in `room`'s history and returns the room's members.
    pub fn post(&self, room: &str, line: Option<Bytes>) -> Members {
        let mut inner = self.lock();
        let Some(r) = inner.rooms.get_mut(room) else {
            return Members::default();
        };
        if let Some(line) = line.filter(|_| self.history > 0) {
            if r.history.len() >= self.history {
                r.history.pop_front();
            }
            r.history.push_back(line);
        }
        r.members.clone()
    }

    /// The last `n` history lines of `room`, oldest first.
    pub fn history(&self, room: &str, n: usize) -> Vec<Bytes> {
        let inner = self.lock();
        let Some(r) = inner.rooms.get(room) else {
            return Vec::new();
        };
        let skip = r.history.len().saturating_sub(n);
        r.history.iter().skip(skip).cloned().collect()
    }

    /// Removes a client; returns the members left in its room.
    pub fn leave(&self, me: &Peer, room: &str) -> Members {
        let mut inner = self.lock();
        inner.nicks.remove(name_key(&me.nick).as_str());
        remove_member(&mut inner, room, me.id)
    }

    /// Changes a nickname (already validated); returns the room's members.
    pub fn rename(&self, me: &mut Peer, room: &str, new: &str) -> Result<Members, RenameError> {
        let mut inner = self.lock();
        let new_key = name_key(new);
        let old_key = name_key(&me.nick);
        if new_key != old_key && inner.nicks.contains_key(new_key.as_str()) {
            return Err(RenameError::Taken);
        }
        inner.nicks.remove(old_key.as_str());
        me.nick = new.into();
        inner.nicks.insert(new_key.into(), me.clone());
        let members = match inner.rooms.get_mut(room) {
            Some(r) => {
                let list = Arc::make_mut(&mut r.members);
                if let Some(p) = list.iter_mut().find(|p| p.id == me.id) {
                    p.nick = me.nick.clone();
                }
                r.members.clone()
            }
            None => Members::default(),
        };
        Ok(members)
    }

    /// Moves a client from room `from` to room `to` (validated, different);
    /// returns the new room's name and the members of the old and new rooms.
    pub fn switch(&self, me: &Peer, from: &str, to: &str) -> (Arc<str>, Members, Members) {
        let mut inner = self.lock();
        let old = remove_member(&mut inner, from, me.id);
        let (room, new) = add_member(&mut inner, to, me.clone());
        (room, old, new)
    }

    /// Every room with its member count, sorted by name.
    pub fn room_list(&self) -> Vec<(Arc<str>, usize)> {
        let inner = self.lock();
        let mut list: Vec<_> = inner
            .rooms
            .iter()
            .map(|(name, r)| (name.clone(), r.members.len()))
            .collect();
        drop(inner);
        list.sort_unstable();
        list
    }

    /// The client with this id, if connected (a scan: for the rare private
    /// line that arrives from another cluster node).
    pub fn peer(&self, id: u64) -> Option<Peer> {
        self.lock().nicks.values().find(|p| p.id == id).cloned()
    }

    /// Every client with its room (for the cluster's registration).
    pub fn everyone(&self) -> Vec<(Peer, Arc<str>)> {
        let inner = self.lock();
        let mut all = Vec::with_capacity(inner.nicks.len());
        for (room, r) in &inner.rooms {
            all.extend(r.members.iter().map(|p| (p.clone(), room.clone())));
        }
        all
    }

    /// The client known by `nick` (ignoring case), if connected.
    pub fn find(&self, nick: &str) -> Option<Peer> {
        self.lock().nicks.get(name_key(nick).as_str()).cloned()
    }
}

fn add_member(inner: &mut Inner, room: &str, peer: Peer) -> (Arc<str>, Members) {
    let key = match inner.rooms.get_key_value(room) {
        Some((key, _)) => key.clone(),
        None => Arc::from(room),
    };
    let r = inner.rooms.entry(key.clone()).or_default();
    Arc::make_mut(&mut r.members).push(peer);
    (key, r.members.clone())
}

fn remove_member(inner: &mut Inner, room: &str, id: u64) -> Members {
    let Some(r) = inner.rooms.get_mut(room) else {
        return Members::default();
    };
    let list = Arc::make_mut(&mut r.members);
    if let Some(i) = list.iter().position(|p| p.id == id) {
        list.swap_remove(i);
    }
    if list.is_empty() {
        // Rooms (and their history) exist only while someone is in them.
        inner.rooms.remove(room);
        return Members::default();
    }
    r.members.clone()
}

/// Queues `line` for every member except `except`; a member whose queue is
/// full is disconnected (its session ends and announces the leave), so one
/// slow reader never delays or blocks the others.
pub(crate) fn deliver(members: &[Peer], except: u64, line: &Bytes) {
    for peer in members {
        if peer.id != except {
            send(peer, line.clone());
        }
    }
}

/// Queues `line` for one client; returns false if it was not queued.
pub(crate) fn send(peer: &Peer, line: Bytes) -> bool {
    match peer.tx.try_send(line) {
        Ok(()) => true,
        Err(TrySendError::Full(_)) => {
            if !peer.kick.is_cancelled() {
                tracing::warn!(nick = %peer.nick, "outgoing queue full, disconnecting slow client");
                peer.kick.cancel();
            }
            false
        }
        // The session is already ending.
        Err(TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_client(reg: &Registry) -> (Peer, Arc<str>, mpsc::Receiver<Bytes>) {
        let (tx, rx) = mpsc::channel(2);
        let (peer, room, _) = reg.enter(tx, CancellationToken::new());
        (peer, room, rx)
    }

    #[test]
    fn rooms_exist_while_occupied_and_nicks_are_unique_ignoring_case() {
        let reg = Registry::new(2);
        let (mut a, lobby, _ra) = new_client(&reg);
        let (mut b, _, _rb) = new_client(&reg);
        assert_eq!(&*a.nick, "guest-1");
        assert_eq!(reg.room_list(), vec![(lobby.clone(), 2)]);
        reg.rename(&mut a, &lobby, "Alice").expect("free nick");
        assert!(matches!(
            reg.rename(&mut b, &lobby, "alice"),
            Err(RenameError::Taken)
        ));
        assert_eq!(reg.find("ALICE").map(|p| p.id), Some(a.id));
        let (dev, old, new) = reg.switch(&a, &lobby, "dev");
        assert_eq!((old.len(), new.len()), (1, 1));
        assert_eq!(reg.room_list().len(), 2);
        reg.leave(&a, &dev);
        assert_eq!(reg.room_list(), vec![(lobby, 1)]);
        assert!(reg.find("alice").is_none());
    }

    #[test]
    fn history_keeps_the_last_lines_of_a_room_while_it_exists() {
        let reg = Registry::new(2);
        let (a, lobby, _ra) = new_client(&reg);
        for line in ["1", "2", "3"] {
            reg.post(&lobby, Some(Bytes::from(line)));
        }
        assert_eq!(reg.history(&lobby, 10), vec!["2", "3"]);
        assert_eq!(reg.history(&lobby, 1), vec!["3"]);
        reg.leave(&a, &lobby);
        let (_b, lobby, _rb) = new_client(&reg);
        assert!(reg.history(&lobby, 10).is_empty());
        let off = Registry::new(0);
        let (_c, lobby, _rc) = new_client(&off);
        off.post(&lobby, Some(Bytes::from("x")));
        assert!(off.history(&lobby, 10).is_empty());
    }

    #[test]
    fn full_queue_kicks_only_that_member() {
        let reg = Registry::new(2);
        let (a, lobby, _ra) = new_client(&reg);
        let (b, _, mut rb) = new_client(&reg);
        let (_c, _, _rc) = new_client(&reg);
        let line = Bytes::from_static(b"x\n");
        for _ in 0..3 {
            deliver(&reg.members(&lobby), a.id, &line);
            while rb.try_recv().is_ok() {}
        }
        assert!(!b.kick.is_cancelled(), "a reading member stays");
        let members = reg.members(&lobby);
        let slow = members
            .iter()
            .find(|p| p.id != a.id && p.id != b.id)
            .expect("third member");
        assert!(
            slow.kick.is_cancelled(),
            "a member that never drains is kicked"
        );
    }
}
