//! What the client remembers about its session from the lines it sees: its
//! nickname and room (restored after `--reconnect`) and the nicknames of its
//! room (offered by Tab completion).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use proto::chat::{NOTICE_PREFIX, OK_PREFIX};

/// The nicknames seen in the current room, shared with the line editor.
pub type Nicks = Arc<Mutex<BTreeSet<String>>>;

/// The session as the server last described it.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Our nickname, once set by `--nick` or `/nick`.
    pub nick: Option<String>,
    /// Our room, once moved by `--room` or `/join`.
    pub room: Option<String>,
    /// Nicknames seen in our room.
    pub nicks: Nicks,
}

impl State {
    /// Learns from one server line.
    pub fn observe(&mut self, line: &str) {
        let mut nicks = self.nicks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ok) = line.strip_prefix(OK_PREFIX) {
            if let Some(room) = ok.strip_prefix("you are now in ") {
                let room = room.split(" (").next().unwrap_or(room);
                self.room = Some(room.to_owned());
                nicks.clear();
            } else if let Some(nick) = ok.strip_prefix("you are now ") {
                self.nick = Some(nick.to_owned());
            } else if let Some((_, list)) =
                ok.split_once(" in ").and_then(|(_, r)| r.split_once(": "))
            {
                // The /who answer: `N in ROOM: a, b, and 3 more`.
                nicks.extend(
                    list.split(", ")
                        .filter(|n| !n.starts_with("and ") && !n.is_empty())
                        .map(str::to_owned),
                );
            }
        } else if let Some(notice) = line.strip_prefix(NOTICE_PREFIX) {
            if let Some((old, new)) = notice.split_once(" is now ") {
                nicks.remove(old);
                nicks.insert(new.to_owned());
            } else if let Some(nick) = notice.strip_suffix(" joined") {
                nicks.insert(nick.to_owned());
            } else if let Some((nick, _)) = notice.split_once(" left") {
                nicks.remove(nick);
            }
        } else if let Some((nick, _)) = line.split_once(": ") {
            if !nick.is_empty() && !nick.contains(' ') {
                nicks.insert(nick.to_owned());
            }
        }
    }

    /// A snapshot of the room's nicknames.
    #[cfg(test)]
    pub fn nick_list(&self) -> Vec<String> {
        let nicks = self.nicks.lock().unwrap_or_else(PoisonError::into_inner);
        nicks.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nick_room_and_members_are_learned_from_lines() {
        let mut s = State::default();
        s.observe("+ you are now bob");
        s.observe("+ you are now in dev (2 members)");
        s.observe("+ 2 in dev: alice, bob");
        s.observe("* carol joined");
        s.observe("* alice is now al");
        s.observe("dave: hi");
        s.observe("* carol left for lobby");
        assert_eq!(s.nick.as_deref(), Some("bob"));
        assert_eq!(s.room.as_deref(), Some("dev"));
        assert_eq!(s.nick_list(), ["al", "bob", "dave"]);
    }
}
