//! The Lua scripts that make each write one step on the Redis server.

/// Stores the record only while the stored one is still at the version it was renewed
/// from, then tells the other replicas; otherwise answers what is stored. The version is
/// read as [`super::store::version_in`] reads it (an integer from 0 to 2^53 - 1, else 0),
/// so both sides agree whatever a planted record holds. No timestamp is looked at.
/// KEYS: token, and for an account's record the credential's account set (one slot: the
/// channel is an argument, not a key). ARGV: record json, expected version, key,
/// channel, and the account's name (with the set).
/// Returns `{1, false}` when stored, `{0, stored value or false}` when refused.
pub(super) const SAVE_IF_VERSION: &str = r#"
local cur = redis.call('GET', KEYS[1])
local have = 0
if cur then
  local ok, t = pcall(cjson.decode, cur)
  if ok and type(t) == 'table' then
    local v = t['version']
    if type(v) == 'number' and v == v and v >= 0 and v <= 9007199254740991 and math.floor(v) == v then
      have = v
    end
  end
end
if have ~= tonumber(ARGV[2]) then
  return {0, cur or false}
end
redis.call('SET', KEYS[1], ARGV[1])
if KEYS[2] then
  redis.call('SADD', KEYS[2], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return {1, false}
"#;

/// Deletes a record and, for an account's, its name from the credential's account set,
/// in one step; tells the other replicas when something was deleted.
/// KEYS: token, account set (for an account). ARGV: notice, channel, account name.
pub(super) const REMOVE: &str = r#"
local n = redis.call('DEL', KEYS[1])
if KEYS[2] then
  redis.call('SREM', KEYS[2], ARGV[3])
end
if n > 0 then
  redis.call('PUBLISH', ARGV[2], ARGV[1])
end
return n
"#;

/// Deletes the lock only if it still holds this holder's fencing value.
pub(super) const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;
