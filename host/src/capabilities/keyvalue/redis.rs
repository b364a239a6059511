//! The Redis backend, for stores shared by several pycage hosts: a tenant's
//! store is one hash, `pycage:kv:{<tenant>:<store>}`, with its byte count in
//! `...:bytes` and its keys, for listing in order, in the sorted set
//! `...:keys` (the braces keep all three in one Redis Cluster slot).
//!
//! Every write is one Lua script, so the quota checks, increments and
//! compare-and-swap are atomic across requests and across hosts. Tenant and
//! store names cannot contain `:` (see `grants::valid_name`), so no key a
//! guest writes, which is only ever a hash field, reaches another tenant's
//! hash.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, Script};
use tokio::sync::Mutex;

use super::backend::{Backend, KvError, page_of};
use crate::limits::KvLimits;

/// One Redis server, shared by every store configured with its URL.
pub(crate) struct RedisServer {
    client: redis::Client,
    /// The connection, made lazily inside the runtime that uses it, and
    /// made anew if it breaks (its runtime may have ended).
    connection: Mutex<Option<MultiplexedConnection>>,
}

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisServer {
    /// Check that `url` answers (a PING), for a load-time error rather than
    /// a request-time one.
    pub(crate) fn connect(url: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("{}: {e}", redacted(url)))?;
        let mut probe = client
            .get_connection_with_timeout(CONNECT_TIMEOUT)
            .map_err(|e| format!("{}: {e}", redacted(url)))?;
        redis::cmd("PING")
            .query::<String>(&mut probe)
            .map_err(|e| format!("{}: {e}", redacted(url)))?;
        Ok(Self {
            client,
            connection: Mutex::new(None),
        })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, KvError> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = &*slot {
            return Ok(connection.clone());
        }
        let connection = tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| KvError::Backend("redis: connecting timed out".into()))?
        .map_err(failed)?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    /// Run `op` on a connection; if the connection broke, drop it and, for
    /// an operation that may run twice (`Repeat::Safe`), retry once on a
    /// fresh one.
    async fn run<T, F, Fut>(&self, repeat: Repeat, op: F) -> Result<T, KvError>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let connection = self.connection().await?;
        match op(connection).await {
            Ok(value) => Ok(value),
            Err(error)
                if error.is_io_error()
                    || error.is_connection_dropped()
                    || error.is_unrecoverable_error() =>
            {
                *self.connection.lock().await = None;
                match repeat {
                    Repeat::Safe => op(self.connection().await?).await.map_err(failed),
                    Repeat::Never => Err(failed(error)),
                }
            }
            Err(error) => Err(failed(error)),
        }
    }
}

/// Whether an operation may be sent again after its connection failed.
/// A failure may come after Redis ran it (a response timeout), so an
/// increment or a compare-and-swap sent twice could apply twice: those fail
/// instead, and the guest sees the store unavailable.
#[derive(Clone, Copy)]
enum Repeat {
    /// Reads, and writes whose second run changes nothing (set, delete).
    Safe,
    Never,
}

/// A URL without its credentials, for messages: everything between
/// `://` and the authority's last `@` (a password may itself hold `@`).
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a redis URL)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://***@{host}{path}"),
        None => url.to_owned(),
    }
}

fn failed(error: redis::RedisError) -> KvError {
    KvError::Backend(format!("redis: {error}"))
}

/// One tenant's one store on a server.
pub(crate) struct RedisBackend {
    server: std::sync::Arc<RedisServer>,
    hash: String,
    bytes: String,
    keys: String,
}

impl RedisBackend {
    pub(crate) fn new(server: std::sync::Arc<RedisServer>, tenant: &str, store: &str) -> Self {
        let hash = format!("pycage:kv:{{{tenant}:{store}}}");
        Self {
            server,
            bytes: format!("{hash}:bytes"),
            keys: format!("{hash}:keys"),
            hash,
        }
    }

    /// A write script with this store's keys.
    fn invocation<'a>(&self, script: &'a Script) -> redis::ScriptInvocation<'a> {
        let mut invocation = script.key(&self.hash);
        invocation.key(&self.bytes).key(&self.keys);
        invocation
    }
}

// Scripts answer {1, result} on success and {0, reason} when a quota or a
// type check refuses the write. KEYS: the hash, the byte count, the key
// index. ARGV[1]: the key; then per script.
const PUT: &str = r#"
local function put(key, old, value, max_keys, max_bytes)
    local delta, new_key = #value, 0
    if old then delta = delta - #old else delta = delta + #key; new_key = 1 end
    if new_key == 1 and redis.call('HLEN', KEYS[1]) + 1 > max_keys then
        return {0, 'the store holds ' .. max_keys .. ' keys, its limit'}
    end
    local bytes = tonumber(redis.call('GET', KEYS[2]) or '0') + delta
    if delta > 0 and bytes > max_bytes then
        return {0, 'the store would hold ' .. bytes .. ' bytes, over its limit of ' .. max_bytes}
    end
    redis.call('HSET', KEYS[1], key, value)
    redis.call('INCRBY', KEYS[2], delta)
    if new_key == 1 then redis.call('ZADD', KEYS[3], 0, key) end
    return {1, ''}
end
"#;

static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PUT}
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        return put(ARGV[1], old, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]))"
    ))
});

// HINCRBY keeps the value a 64-bit integer (Lua numbers are doubles, so the
// script never computes with it) and refuses a value that is not one. The
// byte quota is checked on the result, as `PUT` does, and a refused
// increment is undone within the script (which Redis runs atomically).
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local old = redis.call('HGET', KEYS[1], ARGV[1])
        if not old and redis.call('HLEN', KEYS[1]) + 1 > tonumber(ARGV[3]) then
            return {0, 'the store holds ' .. ARGV[3] .. ' keys, its limit'}
        end
        local done = redis.pcall('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
        if type(done) == 'table' and done.err then
            return {4, 'the value is not an integer, or the increment overflows'}
        end
        local value = redis.call('HGET', KEYS[1], ARGV[1])
        local delta = #value + #ARGV[1]
        if old then delta = #value - #old end
        if delta > 0 then
            local bytes = tonumber(redis.call('GET', KEYS[2]) or '0') + delta
            if bytes > tonumber(ARGV[4]) then
                if old then
                    redis.call('HSET', KEYS[1], ARGV[1], old)
                else
                    redis.call('HDEL', KEYS[1], ARGV[1])
                end
                return {0, 'the store would hold ' .. bytes .. ' bytes, over its limit of ' .. ARGV[4]}
            end
        end
        if not old then redis.call('ZADD', KEYS[3], 0, ARGV[1]) end
        redis.call('INCRBY', KEYS[2], delta)
        return {1, value}",
    )
});

static SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{PUT}
        local old = redis.call('HGET', KEYS[1], ARGV[1])
        local expected_present = ARGV[2] == '1'
        local same = (old == false and not expected_present) or (old ~= false and expected_present and old == ARGV[3])
        if not same then
            if old then return {{2, old}} end
            return {{3, ''}}
        end
        return put(ARGV[1], old, ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]))"
    ))
});

static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local old = redis.call('HGET', KEYS[1], ARGV[1])
        if old then
            redis.call('HDEL', KEYS[1], ARGV[1])
            redis.call('ZREM', KEYS[3], ARGV[1])
            redis.call('INCRBY', KEYS[2], -(#ARGV[1] + #old))
        end
        return 1",
    )
});

/// A script's `{status, payload}` answer.
fn answer(reply: (i64, Vec<u8>)) -> Result<Vec<u8>, KvError> {
    match reply {
        (1, payload) => Ok(payload),
        (_, reason) => Err(KvError::Quota(
            String::from_utf8_lossy(&reason).into_owned(),
        )),
    }
}

#[wasmtime_wasi::async_trait]
impl Backend for RedisBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.server
            .run(Repeat::Safe, |mut c| async move {
                c.hget(&self.hash, key).await
            })
            .await
    }

    async fn set(&self, key: &str, value: &[u8], limits: &KvLimits) -> Result<(), KvError> {
        let reply = self
            .server
            .run(Repeat::Safe, |mut c| async move {
                self.invocation(&SET)
                    .arg(key)
                    .arg(value)
                    .arg(limits.max_keys)
                    .arg(limits.max_total_bytes)
                    .invoke_async::<(i64, Vec<u8>)>(&mut c)
                    .await
            })
            .await?;
        answer(reply).map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.server
            .run(Repeat::Safe, |mut c| async move {
                self.invocation(&DELETE)
                    .arg(key)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(drop)
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.server
            .run(Repeat::Safe, |mut c| async move {
                c.hexists(&self.hash, key).await
            })
            .await
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
        page: usize,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        // Exclusive of the cursor, the last key of the previous page: pages
        // in key order, as the SQLite backend's.
        let start = cursor.map_or_else(|| "-".to_owned(), |c| format!("({c}"));
        let keys: Vec<String> = self
            .server
            .run(Repeat::Safe, |mut c| {
                let start = start.clone();
                async move {
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&self.keys)
                        .arg(&start)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(page + 1)
                        .query_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(page_of(keys, page))
    }

    async fn increment(&self, key: &str, delta: i64, limits: &KvLimits) -> Result<i64, KvError> {
        let reply = self
            .server
            .run(Repeat::Never, |mut c| async move {
                self.invocation(&INCREMENT)
                    .arg(key)
                    .arg(delta)
                    .arg(limits.max_keys)
                    .arg(limits.max_total_bytes)
                    .invoke_async::<(i64, Vec<u8>)>(&mut c)
                    .await
            })
            .await?;
        let value = match reply {
            (4, reason) => {
                return Err(KvError::Invalid(
                    String::from_utf8_lossy(&reason).into_owned(),
                ));
            }
            other => answer(other)?,
        };
        std::str::from_utf8(&value)
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| KvError::Backend("redis: an increment answered a non-integer".into()))
    }

    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        limits: &KvLimits,
    ) -> Result<Result<(), Option<Vec<u8>>>, KvError> {
        let (present, expected) = match expected {
            Some(bytes) => ("1", bytes),
            None => ("0", &[][..]),
        };
        let reply: (i64, Vec<u8>) = self
            .server
            .run(Repeat::Never, |mut c| async move {
                self.invocation(&SWAP)
                    .arg(key)
                    .arg(present)
                    .arg(expected)
                    .arg(new)
                    .arg(limits.max_keys)
                    .arg(limits.max_total_bytes)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match reply {
            (1, _) => Ok(Ok(())),
            (2, current) => Ok(Err(Some(current))),
            (3, _) => Ok(Err(None)),
            (_, reason) => Err(KvError::Quota(
                String::from_utf8_lossy(&reason).into_owned(),
            )),
        }
    }
}
