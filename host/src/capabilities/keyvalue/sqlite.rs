//! The SQLite backend, embedded and the default: one database file per
//! tenant and store (`<data dir>/kv/<tenant>/<store>.sqlite`), in WAL mode.
//!
//! Every write is one `BEGIN IMMEDIATE` transaction that checks the quotas
//! against a running count of keys and bytes kept in the same database, so
//! quotas, increments and compare-and-swap are atomic across concurrent
//! requests and across pycage processes sharing the file. `synchronous =
//! NORMAL` under WAL: a write is acknowledged once its transaction is in the
//! log, which survives the process being killed (`kill -9`); a power cut may
//! lose the last transactions.
//!
//! SQLite calls run on the calling thread, under a mutex per database: they
//! are short (microseconds), and a hand-off to a blocking pool would cost
//! more than the call.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use rustix::fs::{Mode, OFlags};

use super::backend::{Backend, KvError, page_of, parse_integer};
use crate::host_fs::private;
use crate::limits::KvLimits;

pub(crate) struct SqliteBackend {
    connection: Mutex<Connection>,
}

fn failed(error: rusqlite::Error) -> KvError {
    KvError::Backend(format!("sqlite: {error}"))
}

/// What a write does to the store's totals, checked against its quotas.
fn check_totals(
    tx: &rusqlite::Transaction<'_>,
    added_keys: i64,
    added_bytes: i64,
    limits: &KvLimits,
) -> Result<(), KvError> {
    let (keys, bytes): (i64, i64) = tx
        .query_row("SELECT keys, bytes FROM totals WHERE id = 0", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .map_err(failed)?;
    let (keys, bytes) = (keys + added_keys, bytes + added_bytes);
    if added_keys > 0 && keys as u64 > limits.max_keys {
        return Err(KvError::Quota(format!(
            "the store holds {} keys, its limit",
            limits.max_keys
        )));
    }
    if added_bytes > 0 && bytes as u64 > limits.max_total_bytes {
        return Err(KvError::Quota(format!(
            "the store would hold {bytes} bytes, over its limit of {}",
            limits.max_total_bytes
        )));
    }
    tx.execute(
        "UPDATE totals SET keys = ?1, bytes = ?2 WHERE id = 0",
        params![keys, bytes],
    )
    .map_err(failed)?;
    Ok(())
}

/// Write `value` under `key` in `tx`, keeping the totals.
fn put(
    tx: &rusqlite::Transaction<'_>,
    key: &str,
    old: Option<&[u8]>,
    value: &[u8],
    limits: &KvLimits,
) -> Result<(), KvError> {
    let (added_keys, added_bytes) = match old {
        Some(old) => (0, value.len() as i64 - old.len() as i64),
        None => (1, (key.len() + value.len()) as i64),
    };
    check_totals(tx, added_keys, added_bytes, limits)?;
    tx.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
    .map_err(failed)?;
    Ok(())
}

fn read(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, KvError> {
    conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |row| {
        row.get(0)
    })
    .optional()
    .map_err(failed)
}

impl SqliteBackend {
    /// Open (creating if needed) the database at `file`, in a private
    /// directory.
    pub(crate) fn open(file: &Path) -> Result<Self, String> {
        let shown = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
        let (Some(dir), Some(name)) = (file.parent(), file.file_name().and_then(|n| n.to_str()))
        else {
            return Err(shown(&"not a file name"));
        };
        let dir = private::create_dir_all(dir).map_err(|e| shown(&e))?;
        // Created private before SQLite opens it (its -wal and -shm files
        // take the database's permissions). A failure here (a link, a FIFO)
        // is named by the check that follows, on the handle it opens: a
        // file that is not a regular one, not ours, or open to others is
        // refused.
        let _created = rustix::fs::openat(
            &dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        );
        private::open_secret_file(&dir, name).map_err(|e| shown(&e))?;
        // SQLite opens the path again: never through a link.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let connection = Connection::open_with_flags(file, flags)
            .map_err(|e| format!("{}: {e}", file.display()))?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|()| {
                connection.execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = NORMAL;
                     CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)
                         WITHOUT ROWID;
                     CREATE TABLE IF NOT EXISTS totals (
                         id INTEGER PRIMARY KEY CHECK (id = 0),
                         keys INTEGER NOT NULL,
                         bytes INTEGER NOT NULL);
                     INSERT OR IGNORE INTO totals VALUES (0, 0, 0);",
                )
            })
            .map_err(|e| format!("{}: {e}", file.display()))?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> Result<T, KvError>) -> Result<T, KvError> {
        let mut connection = self.connection.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut connection)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, KvError>,
    ) -> Result<T, KvError> {
        self.with(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(failed)?;
            let value = f(&tx)?;
            tx.commit().map_err(failed)?;
            Ok(value)
        })
    }
}

#[wasmtime_wasi::async_trait]
impl Backend for SqliteBackend {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.with(|conn| read(conn, key))
    }

    async fn set(&self, key: &str, value: &[u8], limits: &KvLimits) -> Result<(), KvError> {
        self.write(|tx| {
            let old = read(tx, key)?;
            put(tx, key, old.as_deref(), value, limits)
        })
    }

    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.write(|tx| {
            if let Some(old) = read(tx, key)? {
                tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                    .map_err(failed)?;
                tx.execute(
                    "UPDATE totals SET keys = keys - 1, bytes = bytes - ?1 WHERE id = 0",
                    [(key.len() + old.len()) as i64],
                )
                .map_err(failed)?;
            }
            Ok(())
        })
    }

    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.with(|conn| {
            conn.query_row("SELECT 1 FROM kv WHERE key = ?1", [key], |_| Ok(()))
                .optional()
                .map(|found| found.is_some())
                .map_err(failed)
        })
    }

    async fn list_keys(
        &self,
        cursor: Option<&str>,
        page: usize,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        self.with(|conn| {
            let mut statement = conn
                .prepare_cached(
                    "SELECT key FROM kv WHERE ?1 IS NULL OR key > ?1 ORDER BY key LIMIT ?2",
                )
                .map_err(failed)?;
            let keys: Vec<String> = statement
                .query_map(params![cursor, page as i64 + 1], |row| row.get(0))
                .map_err(failed)?
                .collect::<Result<_, _>>()
                .map_err(failed)?;
            Ok(page_of(keys, page))
        })
    }

    async fn increment(&self, key: &str, delta: i64, limits: &KvLimits) -> Result<i64, KvError> {
        self.write(|tx| {
            let old = read(tx, key)?;
            let value = parse_integer(old.as_deref())?
                .checked_add(delta)
                .ok_or_else(|| {
                    KvError::Invalid("the increment overflows a 64-bit integer".into())
                })?;
            put(
                tx,
                key,
                old.as_deref(),
                value.to_string().as_bytes(),
                limits,
            )?;
            Ok(value)
        })
    }

    async fn swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
        limits: &KvLimits,
    ) -> Result<Result<(), Option<Vec<u8>>>, KvError> {
        self.write(|tx| {
            let current = read(tx, key)?;
            if current.as_deref() != expected {
                return Ok(Err(current));
            }
            put(tx, key, current.as_deref(), new, limits)?;
            Ok(Ok(()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_database_that_is_a_link_a_fifo_or_open_to_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let kv = dir.path().join("kv");
        std::fs::create_dir(&kv).unwrap();
        std::fs::set_permissions(&kv, std::fs::Permissions::from_mode(0o700)).unwrap();
        let elsewhere = dir.path().join("elsewhere.sqlite");
        std::fs::write(&elsewhere, b"").unwrap();
        std::os::unix::fs::symlink(&elsewhere, kv.join("link.sqlite")).unwrap();
        assert!(SqliteBackend::open(&kv.join("link.sqlite")).is_err());
        let fifo = kv.join("fifo.sqlite");
        let path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
        // Refused without blocking (no reader: ENXIO; with one: not a file).
        assert!(SqliteBackend::open(&fifo).is_err());
        let open = kv.join("open.sqlite");
        std::fs::write(&open, b"").unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(SqliteBackend::open(&open).is_err());
        assert!(SqliteBackend::open(&kv.join("fine.sqlite")).is_ok());
    }

    #[test]
    fn operations_quotas_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t/s.sqlite");
        let limits = KvLimits {
            max_keys: 3,
            max_total_bytes: 100,
            ..KvLimits::default()
        };
        let store = SqliteBackend::open(&file).unwrap();
        block(async {
            assert_eq!(store.get("a").await, Ok(None));
            store.set("a", b"1", &limits).await.unwrap();
            assert_eq!(store.get("a").await, Ok(Some(b"1".to_vec())));
            assert_eq!(store.increment("a", 41, &limits).await, Ok(42));
            assert_eq!(store.get("a").await, Ok(Some(b"42".to_vec())));
            assert_eq!(store.increment("n", -2, &limits).await, Ok(-2));
            store.set("s", b"text", &limits).await.unwrap();
            assert!(matches!(
                store.increment("s", 1, &limits).await,
                Err(KvError::Invalid(_))
            ));
            // Three keys is the quota; a fourth is refused, an overwrite is not.
            assert!(matches!(
                store.set("d", b"x", &limits).await,
                Err(KvError::Quota(_))
            ));
            store.set("s", b"other", &limits).await.unwrap();
            assert!(matches!(
                store.set("s", &[0; 200], &limits).await,
                Err(KvError::Quota(_))
            ));
            assert_eq!(
                store.swap("s", Some(b"nope"), b"x", &limits).await,
                Ok(Err(Some(b"other".to_vec())))
            );
            assert_eq!(
                store.swap("s", Some(b"other"), b"x", &limits).await,
                Ok(Ok(()))
            );
            store.delete("s").await.unwrap();
            assert_eq!(store.swap("s", None, b"y", &limits).await, Ok(Ok(())));
            assert!(store.exists("s").await.unwrap());
            let (keys, next) = store.list_keys(None, 2).await.unwrap();
            assert_eq!(
                (keys.as_slice(), next.as_deref()),
                (&["a".to_owned(), "n".to_owned()][..], Some("n"))
            );
            let (keys, next) = store.list_keys(next.as_deref(), 2).await.unwrap();
            assert_eq!((keys, next), (vec!["s".to_owned()], None));
        });
        drop(store);
        let reopened = SqliteBackend::open(&file).unwrap();
        assert_eq!(block(reopened.get("a")), Ok(Some(b"42".to_vec())));
    }
}
