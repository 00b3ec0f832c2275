//! The store's SQLite database: valid paths, their references, and roots.
//!
//! The schema enforces the closure property: a reference must name a registered path
//! (`FOREIGN KEY`), and a path that something references cannot be deleted (`ON DELETE RESTRICT`).
//! Migrations are numbered and recorded in `migrations`; a db newer than this binary is refused.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Schema migrations, applied in order; index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE valid_paths (
    id            INTEGER PRIMARY KEY,
    name          TEXT    NOT NULL UNIQUE,
    kind          TEXT    NOT NULL CHECK (kind IN ('file', 'tree')),
    tree_hash     TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    file_count    INTEGER NOT NULL,
    registered_at INTEGER NOT NULL
);
CREATE TABLE refs (
    referrer  INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE CASCADE,
    reference INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE RESTRICT,
    PRIMARY KEY (referrer, reference),
    CHECK (referrer <> reference)
);
CREATE INDEX refs_reference ON refs(reference);
CREATE TABLE roots (
    name       TEXT    PRIMARY KEY,
    path_id    INTEGER NOT NULL REFERENCES valid_paths(id) ON DELETE RESTRICT,
    kind       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    // When the collector first found a home root's home gone (moved, copied away or deleted): what
    // it keeps is freed only after a grace period.
    r#"
ALTER TABLE roots ADD COLUMN gone_since INTEGER;
"#,
    // Files outside the store whose contents were hashed (a snapshot's models), by absolute path:
    // their digest is known again while the file's stat tuple is unchanged, as git's index
    // trusts (device, inode, size, mtime, ctime).
    r#"
CREATE TABLE file_digests (
    path     TEXT    PRIMARY KEY,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    blake3   TEXT    NOT NULL,
    seen_at  INTEGER NOT NULL
);
"#,
    // The models index: folders the user indexed (`comfix models index`), whose files' rows in
    // `file_digests` make them a substituter; a file's SHA-256, computed when a source asked for
    // one; files found by BLAKE3 and by size.
    r#"
ALTER TABLE file_digests ADD COLUMN sha256 TEXT;
CREATE INDEX file_digests_blake3 ON file_digests(blake3);
CREATE INDEX file_digests_sha256 ON file_digests(sha256);
CREATE INDEX file_digests_size ON file_digests(size);
CREATE TABLE model_folders (
    path     TEXT    PRIMARY KEY,
    added_at INTEGER NOT NULL
);
"#,
];

/// A file's stat tuple: while it is unchanged, so are its contents (barring a clock set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// The file at `path` (the link followed) has this stat tuple still.
    pub fn is_current(&self, path: &std::path::Path) -> bool {
        std::fs::metadata(path).is_ok_and(|meta| FileStamp::of(&meta) == *self)
    }
}

/// The BLAKE3 (hex) recorded for `path` when its stamp was `stamp`.
pub fn known_digest(
    conn: &Connection,
    path: &str,
    stamp: &FileStamp,
) -> rusqlite::Result<Option<String>> {
    let mut statement = conn.prepare_cached(&format!("{KNOWN_FILE} WHERE path = ?1"))?;
    let row = statement.query_row(params![path], known_file).optional()?;
    Ok(row
        .filter(|file| file.stamp == *stamp)
        .map(|file| file.blake3))
}

/// Record that `path`, stamped `stamp`, has the BLAKE3 `blake3` (hex).
pub fn remember_digest(
    conn: &Connection,
    path: &str,
    stamp: &FileStamp,
    blake3: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR REPLACE INTO file_digests (path, dev, ino, size, mtime_ns, ctime_ns, blake3, seen_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            path,
            stamp.dev as i64,
            stamp.ino as i64,
            stamp.size as i64,
            stamp.mtime_ns,
            stamp.ctime_ns,
            blake3,
            now()
        ],
    )
    .map(|_| ())
}

/// A file outside the store whose digests are recorded.
#[derive(Debug, Clone)]
pub struct KnownFile {
    pub path: String,
    pub stamp: FileStamp,
    /// Hex.
    pub blake3: String,
    /// Hex, when a source asked for one.
    pub sha256: Option<String>,
}

const KNOWN_FILE: &str =
    "SELECT path, dev, ino, size, mtime_ns, ctime_ns, blake3, sha256 FROM file_digests";

fn known_file(r: &rusqlite::Row<'_>) -> rusqlite::Result<KnownFile> {
    Ok(KnownFile {
        path: r.get(0)?,
        stamp: FileStamp {
            dev: r.get::<_, i64>(1)? as u64,
            ino: r.get::<_, i64>(2)? as u64,
            size: r.get::<_, i64>(3)? as u64,
            mtime_ns: r.get(4)?,
            ctime_ns: r.get(5)?,
        },
        blake3: r.get(6)?,
        sha256: r.get(7)?,
    })
}

/// The files recorded with BLAKE3 `blake3`, or with SHA-256 `sha256`, or of `size` bytes with no
/// SHA-256 computed yet (each a candidate for a SHA-256 asked for).
pub fn files_with(
    conn: &Connection,
    blake3: Option<&str>,
    sha256: Option<&str>,
    size: Option<u64>,
) -> rusqlite::Result<Vec<KnownFile>> {
    let mut out = Vec::new();
    if let Some(hex) = blake3 {
        out.extend(select_files(conn, "blake3 = ?1", &hex)?);
    }
    if let Some(hex) = sha256 {
        out.extend(select_files(conn, "sha256 = ?1", &hex)?);
        if let Some(size) = size {
            out.extend(select_files(
                conn,
                "size = ?1 AND sha256 IS NULL",
                &(size as i64),
            )?);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|f| seen.insert(f.path.clone()));
    Ok(out)
}

/// The files recorded under the directory `dir` (an absolute path without a trailing slash).
pub fn files_under(conn: &Connection, dir: &str) -> rusqlite::Result<Vec<KnownFile>> {
    let condition = "substr(path, 1, length(?1) + 1) = ?1 || '/' ORDER BY path";
    select_files(conn, condition, &dir)
}

/// The recorded files `condition` (on the one parameter `value`) selects.
fn select_files(
    conn: &Connection,
    condition: &str,
    value: &dyn rusqlite::ToSql,
) -> rusqlite::Result<Vec<KnownFile>> {
    let mut statement = conn.prepare_cached(&format!("{KNOWN_FILE} WHERE {condition}"))?;
    let rows = statement.query_map([value], known_file)?;
    rows.collect()
}

/// Record the SHA-256 of `path`, when its row still has the stamp `stamp`.
pub fn remember_sha256(
    conn: &Connection,
    path: &str,
    stamp: &FileStamp,
    sha256: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE file_digests SET sha256 = ?2 WHERE path = ?1 AND dev = ?3 AND ino = ?4
         AND size = ?5 AND mtime_ns = ?6 AND ctime_ns = ?7",
        params![
            path,
            sha256,
            stamp.dev as i64,
            stamp.ino as i64,
            stamp.size as i64,
            stamp.mtime_ns,
            stamp.ctime_ns
        ],
    )
    .map(|_| ())
}

/// Forget the digests of `path`.
pub fn forget_file(conn: &Connection, path: &str) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM file_digests WHERE path = ?1", params![path])
        .map(|_| ())
}

/// The folders of the models index.
pub fn model_folders(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare_cached("SELECT path FROM model_folders ORDER BY path")?;
    let rows = statement.query_map([], |r| r.get(0))?;
    rows.collect()
}

/// Add `dir` to the models index's folders.
pub fn add_model_folder(conn: &Connection, dir: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT OR IGNORE INTO model_folders (path, added_at) VALUES (?1, ?2)",
        params![dir, now()],
    )
    .map(|_| ())
}

/// A registered store path as the db records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PathRecord {
    #[serde(skip)]
    pub id: i64,
    /// `<digest>-<name>`, the path's file name under `paths/`.
    pub name: String,
    /// `file` or `tree`.
    pub kind: String,
    /// Hex BLAKE3 of the canonical serialization.
    pub tree_hash: String,
    /// Bytes of file contents.
    pub size: u64,
    pub file_count: u64,
    /// Seconds since the Unix epoch.
    pub registered_at: i64,
}

/// Journal mode: WAL needs shared memory between processes, which network filesystems lack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    Wal,
    /// Rollback journal, for a store on a network filesystem (single machine only).
    Delete,
}

pub fn open(path: &Path, journal: Journal) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(120))?;
    let mode = match journal {
        Journal::Wal => "wal",
        Journal::Delete => "delete",
    };
    // The mode persists in the file; changing it is what needs exclusive access.
    let current: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if !current.eq_ignore_ascii_case(mode) {
        conn.pragma_update(None, "journal_mode", mode)?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&conn)?;
    Ok(conn)
}

/// Open the database of a store this process cannot write: read-only, and without migrating. A
/// WAL database whose `-shm` file cannot be created is read as immutable (nobody can write it
/// on a read-only mount; with only permissions missing, its owner may, and this process then
/// reads the last checkpointed state).
pub fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut uri = String::from("file:");
    for byte in path.as_os_str().as_encoded_bytes() {
        match byte {
            b'?' | b'#' | b'%' | 0x80.. => uri.push_str(&format!("%{byte:02X}")),
            _ => uri.push(*byte as char),
        }
    }
    let plain = Connection::open_with_flags(format!("{uri}?mode=ro"), flags).and_then(|conn| {
        conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })?;
        Ok(conn)
    });
    let conn = match plain {
        Ok(conn) => conn,
        Err(_) => Connection::open_with_flags(format!("{uri}?mode=ro&immutable=1"), flags)?,
    };
    conn.busy_timeout(Duration::from_secs(120))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// The highest schema version this binary knows.
pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);",
    )?;
    let current: i64 = conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM migrations",
        [],
        |r| r.get(0),
    )?;
    if current as usize >= MIGRATIONS.len() {
        return Ok(());
    }
    let mut conn_tx = rusqlite::Transaction::new_unchecked(conn, TransactionBehavior::Immediate)?;
    conn_tx.set_drop_behavior(rusqlite::DropBehavior::Rollback);
    // Re-read under the write lock: another process may have migrated meanwhile.
    let current: i64 = conn_tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM migrations",
        [],
        |r| r.get(0),
    )?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        conn_tx.execute_batch(sql)?;
        conn_tx.execute(
            "INSERT INTO migrations (version, applied_at) VALUES (?1, ?2)",
            params![(i + 1) as i64, now()],
        )?;
    }
    conn_tx.commit()
}

/// Make the database's bytes depend on its paths alone (an image's store, the same on any
/// machine): every time it recorded set to 0, the file compacted.
pub fn make_reproducible(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "UPDATE migrations SET applied_at = 0; UPDATE valid_paths SET registered_at = 0; VACUUM;",
    )
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Schema version recorded in the db (0 for a fresh one).
pub fn recorded_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM migrations",
        [],
        |r| r.get(0),
    )
}

fn row_to_record(row: &rusqlite::Row<'_>) -> rusqlite::Result<PathRecord> {
    Ok(PathRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        kind: row.get(2)?,
        tree_hash: row.get(3)?,
        size: row.get::<_, i64>(4)? as u64,
        file_count: row.get::<_, i64>(5)? as u64,
        registered_at: row.get(6)?,
    })
}

const COLUMNS: &str = "id, name, kind, tree_hash, size, file_count, registered_at";

/// What registering found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    New,
    AlreadyValid,
}

/// Register `record` with its `references` (path names) in one transaction. Fails if a
/// reference is not registered (the closure property).
pub fn register(
    conn: &mut Connection,
    record: &PathRecord,
    references: &[String],
) -> Result<Registered, RegisterError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let existing: Option<String> = tx
        .query_row(
            "SELECT tree_hash FROM valid_paths WHERE name = ?1",
            [&record.name],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(hash) = existing {
        if hash != record.tree_hash {
            return Err(RegisterError::Conflict {
                name: record.name.clone(),
                registered: hash,
                new: record.tree_hash.clone(),
            });
        }
        return Ok(Registered::AlreadyValid);
    }
    tx.execute(
        "INSERT INTO valid_paths (name, kind, tree_hash, size, file_count, registered_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            record.name,
            record.kind,
            record.tree_hash,
            record.size as i64,
            record.file_count as i64,
            record.registered_at
        ],
    )?;
    let id = tx.last_insert_rowid();
    for reference in references {
        let ref_id: Option<i64> = tx
            .query_row(
                "SELECT id FROM valid_paths WHERE name = ?1",
                [reference],
                |r| r.get(0),
            )
            .optional()?;
        let Some(ref_id) = ref_id else {
            return Err(RegisterError::MissingReference {
                name: record.name.clone(),
                reference: reference.clone(),
            });
        };
        if ref_id != id {
            tx.execute(
                "INSERT OR IGNORE INTO refs (referrer, reference) VALUES (?1, ?2)",
                params![id, ref_id],
            )?;
        }
    }
    tx.commit()?;
    Ok(Registered::New)
}

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("Cannot register `{name}`: its reference `{reference}` is not a valid store path")]
    MissingReference { name: String, reference: String },
    #[error("`{name}` is already registered with tree hash `{registered}`, not `{new}`")]
    Conflict {
        name: String,
        registered: String,
        new: String,
    },
}

/// The record of `name`, when it is registered (the statement is prepared once per connection:
/// a realize asks this of every path of a version, twice).
pub fn query(conn: &Connection, name: &str) -> rusqlite::Result<Option<PathRecord>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM valid_paths WHERE name = ?1"
    ))?
    .query_row([name], row_to_record)
    .optional()
}

pub fn list(conn: &Connection) -> rusqlite::Result<Vec<PathRecord>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM valid_paths ORDER BY name"))?;
    let rows = stmt.query_map([], row_to_record)?;
    rows.collect()
}

/// The valid paths named `<digest>-<name>`, sorted.
pub fn named(conn: &Connection, name: &str) -> rusqlite::Result<Vec<PathRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM valid_paths WHERE substr(name, instr(name, '-') + 1) = ?1 ORDER BY name"
    ))?;
    let rows = stmt.query_map([name], row_to_record)?;
    rows.collect()
}

/// The valid paths whose tree hash is `tree_hash`, sorted.
pub fn with_tree_hash(conn: &Connection, tree_hash: &str) -> rusqlite::Result<Vec<PathRecord>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM valid_paths WHERE tree_hash = ?1 ORDER BY name"
    ))?;
    let rows = stmt.query_map([tree_hash], row_to_record)?;
    rows.collect()
}

/// The names of the paths `id` references directly, sorted.
pub fn references(conn: &Connection, id: i64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT p.name FROM refs r JOIN valid_paths p ON p.id = r.reference WHERE r.referrer = ?1 ORDER BY p.name",
    )?;
    let rows = stmt.query_map([id], |r| r.get(0))?;
    rows.collect()
}

/// The path `id` and everything it references, transitively, sorted by name.
pub fn closure(conn: &Connection, id: i64) -> rusqlite::Result<Vec<PathRecord>> {
    let sql = format!(
        "WITH RECURSIVE c(id) AS (SELECT ?1 UNION SELECT r.reference FROM refs r JOIN c ON r.referrer = c.id)
         SELECT {COLUMNS} FROM valid_paths WHERE id IN (SELECT id FROM c) ORDER BY name"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([id], row_to_record)?;
    rows.collect()
}

/// A GC root as recorded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RootRecord {
    pub name: String,
    pub path: String,
    pub kind: String,
    pub created_at: i64,
    /// When a collection first found the root's home gone.
    pub gone_since: Option<i64>,
}

/// Record (or move) root `name` to the valid path `path`.
pub fn add_root(conn: &Connection, name: &str, path: &str, kind: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO roots (name, path_id, kind, created_at)
         SELECT ?1, id, ?3, ?4 FROM valid_paths WHERE name = ?2
         ON CONFLICT(name) DO UPDATE SET path_id = excluded.path_id, kind = excluded.kind,
             gone_since = NULL",
        params![name, path, kind, now()],
    )?;
    Ok(())
}

pub fn remove_root(conn: &Connection, name: &str) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM roots WHERE name = ?1", [name])
}

pub fn roots(conn: &Connection) -> rusqlite::Result<Vec<RootRecord>> {
    let mut stmt = conn.prepare(
        "SELECT r.name, p.name, r.kind, r.created_at, r.gone_since FROM roots r JOIN valid_paths p ON p.id = r.path_id ORDER BY r.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(RootRecord {
            name: r.get(0)?,
            path: r.get(1)?,
            kind: r.get(2)?,
            created_at: r.get(3)?,
            gone_since: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Record that the homes of roots `names` were found gone at `at` (kept where already recorded).
pub fn mark_gone(conn: &Connection, names: &[&str], at: i64) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare("UPDATE roots SET gone_since = ?2 WHERE name = ?1 AND gone_since IS NULL")?;
    for name in names {
        stmt.execute(params![name, at])?;
    }
    Ok(())
}

/// Every reference `(referrer id, reference id)`.
pub fn all_references(conn: &Connection) -> rusqlite::Result<Vec<(i64, i64)>> {
    let mut stmt = conn.prepare("SELECT referrer, reference FROM refs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Delete the registrations of `names` in one transaction; the foreign keys are checked at the
/// end, so a set that includes all its referrers can go in any order.
pub fn unregister_all(conn: &mut Connection, names: &[&str]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.pragma_update(None, "defer_foreign_keys", "ON")?;
    {
        let mut stmt = tx.prepare("DELETE FROM valid_paths WHERE name = ?1")?;
        for name in names {
            stmt.execute([name])?;
        }
    }
    tx.commit()
}

/// Delete a path's registration; fails (foreign key) if another path or a root references it.
pub fn unregister(conn: &Connection, name: &str) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM valid_paths WHERE name = ?1", [name])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> PathRecord {
        PathRecord {
            id: 0,
            name: name.into(),
            kind: "tree".into(),
            tree_hash: format!("hash-{name}"),
            size: 1,
            file_count: 1,
            registered_at: 0,
        }
    }

    #[test]
    fn schema_enforces_closure() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open(&dir.path().join("db.sqlite"), Journal::Wal).unwrap();
        // A reference to an unregistered path is refused and nothing is registered.
        let err = register(&mut conn, &record("a"), &["b".into()]).unwrap_err();
        assert!(
            matches!(err, RegisterError::MissingReference { .. }),
            "{err}"
        );
        assert!(query(&conn, "a").unwrap().is_none());

        register(&mut conn, &record("b"), &[]).unwrap();
        register(&mut conn, &record("a"), &["b".into()]).unwrap();
        // b is referenced by a, so the db refuses to delete it.
        assert!(unregister(&conn, "b").is_err());
        let a = query(&conn, "a").unwrap().unwrap();
        let names: Vec<_> = closure(&conn, a.id)
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        // Deleting the referrer first releases the reference.
        assert_eq!(unregister(&conn, "a").unwrap(), 1);
        assert_eq!(unregister(&conn, "b").unwrap(), 1);
    }

    #[test]
    fn migrations_are_recorded_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        drop(open(&path, Journal::Wal).unwrap());
        let conn = open(&path, Journal::Wal).unwrap();
        assert_eq!(recorded_version(&conn).unwrap(), schema_version() as i64);
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM migrations", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, schema_version() as i64);
    }
}
