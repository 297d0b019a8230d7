//! The Lua scripts that change the cluster's shared state atomically.
//!
//! A nickname claim, a room move or the removal of a dead node's members
//! touches several keys; a script runs whole inside Redis, so no other node
//! sees half a change and two racing claims have exactly one winner. Every
//! script takes the key prefix and this node's id as `ARGV[1]` and `ARGV[2]`
//! (keys are built inside, so this needs a single Redis, not Redis Cluster).
//! The key layout is in [`super::keys`].

/// Helpers shared by the scripts: `owned(v, me)` says whether the nickname
/// value `v` ("node:peer:nick") belongs to `me` ("node:peer"); `split(info)`
/// parses a `peers` entry; `drop_peer` removes one member everywhere.
const PRELUDE: &str = r#"
local p, node = ARGV[1], ARGV[2]
local function owned(v, me)
  return v and string.sub(v, 1, #me + 1) == me .. ':'
end
local function split(info)
  return string.match(info, '^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$')
end
local function leave_room(rk, me)
  redis.call('HDEL', p .. 'room:' .. rk, me)
  if redis.call('EXISTS', p .. 'room:' .. rk) == 0 then
    redis.call('HDEL', p .. 'rooms', rk)
  end
end
local function drop_peer(n, peer, out)
  local info = redis.call('HGET', p .. 'peers:' .. n, peer)
  if not info then return end
  local me = n .. ':' .. peer
  local nk, nick, rk = split(info)
  if nk then
    if owned(redis.call('GET', p .. 'nick:' .. nk), me) then
      redis.call('DEL', p .. 'nick:' .. nk)
    end
    leave_room(rk, me)
    if out then
      table.insert(out, n); table.insert(out, rk); table.insert(out, nick)
    end
  end
  redis.call('HDEL', p .. 'peers:' .. n, peer)
end
"#;

/// Registers a member (ARGV 3..7: peer, nick_key, nick, room_key, room);
/// returns 1, or 0 when another member holds the nickname.
const REGISTER: &str = r#"
local peer, nk, nick, rk, room = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local me = node .. ':' .. peer
local cur = redis.call('GET', p .. 'nick:' .. nk)
if cur and not owned(cur, me) then return 0 end
redis.call('SET', p .. 'nick:' .. nk, me .. ':' .. nick)
redis.call('HSET', p .. 'peers:' .. node, peer, nk .. '\t' .. nick .. '\t' .. rk .. '\t' .. room)
redis.call('HSET', p .. 'room:' .. rk, me, nick)
redis.call('HSETNX', p .. 'rooms', rk, room)
return 1
"#;

/// Changes a member's nickname (ARGV 3..6: peer, old_key, new_key, nick);
/// returns 1, or 0 when another member holds it.
const CLAIM: &str = r#"
local peer, old, nk, nick = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local me = node .. ':' .. peer
local cur = redis.call('GET', p .. 'nick:' .. nk)
if cur and not owned(cur, me) then return 0 end
redis.call('SET', p .. 'nick:' .. nk, me .. ':' .. nick)
if old ~= nk and owned(redis.call('GET', p .. 'nick:' .. old), me) then
  redis.call('DEL', p .. 'nick:' .. old)
end
local info = redis.call('HGET', p .. 'peers:' .. node, peer)
if info then
  local _, _, rk, room = split(info)
  if rk then
    redis.call('HSET', p .. 'peers:' .. node, peer, nk .. '\t' .. nick .. '\t' .. rk .. '\t' .. room)
    redis.call('HSET', p .. 'room:' .. rk, me, nick)
  end
end
return 1
"#;

/// Moves a member to another room (ARGV 3..5: peer, room_key, room).
const SWITCH: &str = r#"
local peer, to, room = ARGV[3], ARGV[4], ARGV[5]
local me = node .. ':' .. peer
local info = redis.call('HGET', p .. 'peers:' .. node, peer)
if not info then return 0 end
local nk, nick, rk = split(info)
if not nk then return 0 end
leave_room(rk, me)
redis.call('HSET', p .. 'peers:' .. node, peer, nk .. '\t' .. nick .. '\t' .. to .. '\t' .. room)
redis.call('HSET', p .. 'room:' .. to, me, nick)
redis.call('HSETNX', p .. 'rooms', to, room)
return 1
"#;

/// Removes one member (ARGV 3: peer).
const EXIT: &str = r#"
drop_peer(node, ARGV[3], nil)
return 1
"#;

/// Removes every node whose heartbeat expired, with its members; returns
/// flat triples `node, room_key, nick` (one `node, '', ''` per node), so the
/// caller can send the `left` notices. The `SREM` makes each node reaped
/// exactly once even when every node runs this at the same moment.
const REAP: &str = r#"
local out = {}
for _, n in ipairs(redis.call('SMEMBERS', p .. 'nodes')) do
  if n ~= node and redis.call('EXISTS', p .. 'alive:' .. n) == 0 then
    redis.call('SREM', p .. 'nodes', n)
    table.insert(out, n); table.insert(out, ''); table.insert(out, '')
    for _, peer in ipairs(redis.call('HKEYS', p .. 'peers:' .. n)) do
      drop_peer(n, peer, out)
    end
    redis.call('DEL', p .. 'peers:' .. n, p .. 'to:' .. n)
  end
end
return out
"#;

/// This node's orderly exit: its members and its registration go.
const CLOSE: &str = r#"
for _, peer in ipairs(redis.call('HKEYS', p .. 'peers:' .. node)) do
  drop_peer(node, peer, nil)
end
redis.call('DEL', p .. 'peers:' .. node, p .. 'alive:' .. node)
redis.call('SREM', p .. 'nodes', node)
return 1
"#;

/// `/rooms`: flat pairs `room, member count`; forgets rooms left empty.
const ROOMS: &str = r#"
local out = {}
local all = redis.call('HGETALL', p .. 'rooms')
for i = 1, #all, 2 do
  local n = redis.call('HLEN', p .. 'room:' .. all[i])
  if n > 0 then
    table.insert(out, all[i + 1]); table.insert(out, n)
  else
    redis.call('HDEL', p .. 'rooms', all[i])
  end
end
return out
"#;

/// The scripts, each loaded once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ScriptId {
    Register,
    Claim,
    Switch,
    Exit,
    Reap,
    Close,
    Rooms,
}

impl ScriptId {
    pub const ALL: [ScriptId; 7] = [
        ScriptId::Register,
        ScriptId::Claim,
        ScriptId::Switch,
        ScriptId::Exit,
        ScriptId::Reap,
        ScriptId::Close,
        ScriptId::Rooms,
    ];

    /// The full source: the shared helpers, then the body.
    pub fn source(self) -> String {
        let body = match self {
            ScriptId::Register => REGISTER,
            ScriptId::Claim => CLAIM,
            ScriptId::Switch => SWITCH,
            ScriptId::Exit => EXIT,
            ScriptId::Reap => REAP,
            ScriptId::Close => CLOSE,
            ScriptId::Rooms => ROOMS,
        };
        format!("{PRELUDE}{body}")
    }
}

/// The SHA-1 names under which the scripts are loaded.
#[derive(Debug, Clone)]
pub(crate) struct Scripts {
    shas: Vec<String>,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            shas: ScriptId::ALL
                .iter()
                .map(|s| redis::Script::new(&s.source()).get_hash().to_owned())
                .collect(),
        }
    }

    pub fn sha(&self, id: ScriptId) -> &str {
        &self.shas[id as usize]
    }
}
