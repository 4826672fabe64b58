//! GoTo's quota as one budget for every replica (`store = "redis"`): each route's pace —
//! the `rate_limit` spacing and the pause after an upstream 429 — kept in Redis and
//! changed only by atomic Lua scripts, on Redis's own clock (replicas' clocks differ).
//! It implements the data path's [`SharedBudget`]; the data path never sees Redis.
//!
//! Keys, under `redis_prefix`:
//! * `{prefix}:pace:{route}` — when the route's next request may leave (µs on Redis's
//!   clock; GCRA: each reservation moves it one interval on).
//! * `{prefix}:pause:{route}` — until when an upstream 429 pauses the route.
//!
//! On a Redis Cluster the route's name is a hash tag (`{prefix}:pace:{{route}}`), so a
//! route's two keys share a slot and each script runs on one node.
//!
//! Both expire shortly after they stop mattering. Nothing here holds a secret.

use std::time::Duration;

use super::redis_link::{location_of, Link, Timeouts};
use super::redis_store::describe;
use crate::config::RedisTarget;
use crate::limit::{BudgetUnavailable, Reservation, SharedBudget, QUEUE_STEP};

/// Reserves a route's next slot: after the previous one by the interval, and not before
/// the pause ends. KEYS: pace, pause. ARGV: interval µs, max wait µs, queue step µs.
/// Returns {1, wait µs} when reserved, {0, wait µs} when that wait is too long.
const RESERVE: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nxt = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local paused = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local slot = math.max(nxt, paused, now)
local wait = slot - now
if wait > tonumber(ARGV[2]) then
  return {0, wait}
end
local step = tonumber(ARGV[1])
if wait > 0 and step < tonumber(ARGV[3]) then
  step = tonumber(ARGV[3])
end
local new = slot + step
if new > now then
  redis.call('SET', KEYS[1], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return {1, wait}
"#;

/// Pauses a route: the pause ends at the later of its current end and now + ARGV[1] µs.
const PAUSE: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = now + tonumber(ARGV[1])
local cur = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if untl > cur then
  redis.call('SET', KEYS[1], string.format('%.0f', untl), 'PX', math.ceil(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
"#;

/// How many µs of the route's pause are left.
const PAUSED_FOR: &str = r#"
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local untl = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
return math.max(0, untl - now)
"#;

/// Routes' pace in Redis, shared by every replica under one `redis_prefix`.
pub(crate) struct RedisBudget {
    link: Link,
    prefix: String,
    /// Keys carry the route as a hash tag (a cluster).
    tagged: bool,
    /// `host:port/db` for messages; never the password.
    location: String,
    reserve: redis::Script,
    pause: redis::Script,
    paused_for: redis::Script,
}

impl RedisBudget {
    /// A budget on `target` under `prefix`, on its own connection (the data path never
    /// queues behind token-store traffic). Connects lazily; must be called inside a
    /// tokio runtime. `tls`: as for the store (`rediss://` trusts `[tls]`).
    pub(crate) fn connect(
        target: &RedisTarget,
        prefix: &str,
        tls: Option<redis::TlsCertificates>,
    ) -> Result<RedisBudget, BudgetUnavailable> {
        let location = location_of(target);
        // Short timeouts: a request waits for this answer (the data path gives up sooner).
        let timeouts = Timeouts { connect: Duration::from_millis(250), response: Duration::from_millis(250) };
        let link = Link::new(target, tls, timeouts)
            .map_err(|e| BudgetUnavailable(format!("[state] Redis ({location}) is not usable: {}", e.category())))?;
        Ok(RedisBudget {
            link,
            prefix: prefix.to_string(),
            tagged: matches!(target, RedisTarget::Cluster(_)),
            location,
            reserve: redis::Script::new(RESERVE),
            pause: redis::Script::new(PAUSE),
            paused_for: redis::Script::new(PAUSED_FOR),
        })
    }

    /// A reload changed `[tls]`: requests from now on use a new connection trusting `tls`.
    pub(crate) fn retls(&self, tls: Option<redis::TlsCertificates>) -> Result<(), BudgetUnavailable> {
        self.link.retls(tls).map_err(|e| BudgetUnavailable(format!("redis {}: {}", self.location, describe(&e))))
    }

    fn key(&self, kind: &str, route: &str) -> String {
        if self.tagged {
            format!("{}:{kind}:{{{route}}}", self.prefix)
        } else {
            format!("{}:{kind}:{route}", self.prefix)
        }
    }

    /// A failed call: the master may have moved (Sentinel), so the next goes where it is.
    async fn failed(&self, e: &redis::RedisError) -> BudgetUnavailable {
        self.link.suspect().await;
        BudgetUnavailable(format!("redis {}: {}", self.location, describe(e)))
    }

    /// Runs `script`'s call on the connection in force.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: redis::ScriptInvocation<'_>,
    ) -> Result<T, BudgetUnavailable> {
        let result = match self.link.conn().await {
            Ok(mut conn) => call.invoke_async(&mut conn).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(&e).await),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[async_trait::async_trait]
impl SharedBudget for RedisBudget {
    async fn reserve(
        &self,
        route: &str,
        interval: Duration,
        max_wait: Duration,
    ) -> Result<Reservation, BudgetUnavailable> {
        let mut call = self.reserve.key(self.key("pace", route));
        call.key(self.key("pause", route)).arg(micros(interval)).arg(micros(max_wait)).arg(micros(QUEUE_STEP));
        let (reserved, wait): (u8, u64) = self.invoke(call).await?;
        let wait = Duration::from_micros(wait);
        Ok(if reserved == 1 { Reservation::After(wait) } else { Reservation::TooFar(wait) })
    }

    async fn pause(&self, route: &str, pause: Duration) -> Result<(), BudgetUnavailable> {
        let mut call = self.pause.key(self.key("pause", route));
        call.arg(micros(pause));
        let _: u8 = self.invoke(call).await?;
        Ok(())
    }

    async fn paused_for(&self, route: &str) -> Result<Duration, BudgetUnavailable> {
        let left: u64 = self.invoke(self.paused_for.key(self.key("pause", route))).await?;
        Ok(Duration::from_micros(left))
    }
}
