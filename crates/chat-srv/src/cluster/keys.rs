//! The names of everything this chat keeps in Redis, in one place.
//!
//! Every key and channel starts with `sockchat:{cluster}:`, so several chats
//! (`--cluster-name`) share one Redis without seeing each other. Names and
//! rooms appear in keys only in their case-folded form (the caller folds), so
//! `Alice` and `alice` are one key and a race between them has one winner.
//!
//! ```text
//! sockchat:{c}:bus                  pub/sub: room lines and notices, every node listens
//! sockchat:{c}:to:{node}            pub/sub: private lines for one node's members
//! sockchat:{c}:nodes                set of registered node ids
//! sockchat:{c}:alive:{node}         heartbeat, expires unless renewed
//! sockchat:{c}:peers:{node}         hash peer id -> "nick_key\tnick\troom_key\troom"
//! sockchat:{c}:nick:{nick_key}      owner "node:peer:nick", claimed with SET NX semantics
//! sockchat:{c}:room:{room_key}      hash "node:peer" -> nick (the members, for /who)
//! sockchat:{c}:rooms                hash room_key -> room as displayed (for /rooms)
//! sockchat:{c}:history:{room_key}   stream, capped with MAXLEN
//! ```

use std::hash::{BuildHasher, Hasher};

/// Longest cluster name accepted by `--cluster-name`.
pub const MAX_CLUSTER_NAME: usize = 64;

/// Key and channel names of one cluster.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `sockchat:{cluster}:`, the Lua scripts build their keys from it too.
    pub prefix: String,
}

impl Keys {
    pub fn new(cluster: &str) -> Keys {
        Keys {
            prefix: format!("sockchat:{cluster}:"),
        }
    }

    pub fn bus(&self) -> String {
        format!("{}bus", self.prefix)
    }

    pub fn inbox(&self, node: &str) -> String {
        format!("{}to:{node}", self.prefix)
    }

    pub fn nick(&self, nick_key: &str) -> String {
        format!("{}nick:{nick_key}", self.prefix)
    }

    pub fn room(&self, room_key: &str) -> String {
        format!("{}room:{room_key}", self.prefix)
    }

    pub fn history(&self, room_key: &str) -> String {
        format!("{}history:{room_key}", self.prefix)
    }
}

/// Checks a `--cluster-name`: 1 to [`MAX_CLUSTER_NAME`] ASCII letters,
/// digits, `-`, `_` or `.`, so it can sit inside a key and a log line as is.
pub fn validate_cluster_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_CLUSTER_NAME {
        return Err(format!(
            "cluster name must be 1 to {MAX_CLUSTER_NAME} characters, got {}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        Some(c) => Err(format!(
            "cluster name may use ASCII letters, digits, '-', '_' and '.', not {c:?}"
        )),
        None => Ok(()),
    }
}

/// A fresh random node id (16 hex digits). A restarted process gets a new one,
/// so its old members are reaped as a dead node's and never confused with
/// the new ones.
pub fn new_node_id() -> String {
    // RandomState is seeded from the operating system's randomness; the time
    // and pid make two ids of one process differ as well.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_cluster_name() {
        let k = Keys::new("blue");
        assert_eq!(k.bus(), "sockchat:blue:bus");
        assert_eq!(k.nick("alice"), "sockchat:blue:nick:alice");
        assert_eq!(k.inbox("ab12"), "sockchat:blue:to:ab12");
        assert_eq!(k.history("dev"), "sockchat:blue:history:dev");
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(validate_cluster_name("chat-1.prod_a").is_ok());
        assert!(validate_cluster_name("").is_err());
        assert!(validate_cluster_name("a:b").is_err());
        assert!(validate_cluster_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn node_ids_differ() {
        let a = new_node_id();
        assert_eq!(a.len(), 16);
        assert_ne!(a, new_node_id());
    }
}
