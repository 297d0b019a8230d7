//! The cluster seen from the server: [`Bridge`] is the [`Local`] side of
//! this node (it hands lines from other nodes to the registry's members),
//! and [`member_info`] describes a member the way Redis stores it.
//!
//! Rooms are already known by their case-folded name on a server (see
//! `proto::chat::validate_room`), so a room's key and display name are the
//! same here; nicknames are keyed with `proto::chat::name_key`, the rule a
//! single server uses.

use std::sync::Weak;

use bytes::Bytes;
use proto::chat::{name_key, ServerLine};

use super::{LineKind, Local, MemberInfo};
use crate::room::{deliver, send, Peer};
use crate::shared::Shared;
use crate::NOTICE_ROOM_LIMIT;

/// This node's members, as the cluster task reaches them.
pub(crate) struct Bridge {
    /// Weak: the cluster task must not keep a stopped server's state alive.
    shared: Weak<Shared>,
}

impl Bridge {
    pub fn new(shared: Weak<Shared>) -> Bridge {
        Bridge { shared }
    }
}

impl Local for Bridge {
    fn room_line(&self, room_key: &str, kind: LineKind, line: &Bytes) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let members = shared.registry.members(room_key);
        // The same rule as for local notices, by this node's share of the room.
        if kind == LineKind::Notice && members.len() > NOTICE_ROOM_LIMIT {
            return;
        }
        deliver(&members, u64::MAX, line);
    }

    fn peer_line(&self, peer: u64, line: &Bytes) -> bool {
        let Some(shared) = self.shared.upgrade() else {
            return false;
        };
        shared
            .registry
            .peer(peer)
            .is_some_and(|p| send(&p, line.clone()))
    }

    fn notice_all(&self, text: &str) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let line = ServerLine::Notice(text).to_bytes();
        for (peer, _) in shared.registry.everyone() {
            send(&peer, line.clone());
        }
    }

    fn members(&self) -> Vec<MemberInfo> {
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        shared
            .registry
            .everyone()
            .iter()
            .map(|(peer, room)| member_info(peer, room))
            .collect()
    }

    fn nick_lost(&self, peer: u64) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        if let Some(p) = shared.registry.peer(peer) {
            let text = format!(
                "your nickname {} was taken on another server while the chat was split; \
                 choose another with /nick",
                p.nick
            );
            send(&p, ServerLine::Notice(&text).to_bytes());
        }
    }
}

/// A member as the cluster registers it.
pub(crate) fn member_info(peer: &Peer, room: &str) -> MemberInfo {
    MemberInfo {
        peer: peer.id,
        nick: peer.nick.to_string(),
        nick_key: name_key(&peer.nick),
        room: room.to_owned(),
        room_key: room.to_owned(),
    }
}
