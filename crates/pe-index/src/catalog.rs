//! The catalog: every file seen (path, size, modification time, content hash, and the error that
//! made it unreadable, if any) and one embedding per distinct content, in SQLite. Each batch of
//! results is one transaction, so a crash or `kill -9` at any point leaves the catalog as of the
//! last whole batch, and a rerun carries on from there.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};

/// A file as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Absolute path.
    pub path: PathBuf,
    /// Size in bytes when indexed.
    pub size: u64,
    /// Modification time (ns since the epoch) when indexed.
    pub mtime_ns: i64,
    /// BLAKE3 of the contents (hex), when the file could be read.
    pub hash: Option<String>,
    /// Why the file could not be indexed; `None` when it was.
    pub error: Option<String>,
}

/// An embedding stored for one content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorRow {
    /// BLAKE3 of the contents (hex).
    pub hash: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The normalized embedding.
    pub embedding: Vec<f32>,
}

/// The SQLite catalog of an index.
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

/// Path bytes as stored: the OS's own bytes, so no file name is ever mangled.
pub(crate) fn path_key(p: &Path) -> Vec<u8> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        p.as_os_str().as_bytes().to_vec()
    }
    #[cfg(not(unix))]
    {
        p.to_string_lossy().into_owned().into_bytes()
    }
}

pub(crate) fn key_path(b: Vec<u8>) -> PathBuf {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        PathBuf::from(std::ffi::OsString::from_vec(b))
    }
    #[cfg(not(unix))]
    {
        PathBuf::from(String::from_utf8_lossy(&b).into_owned())
    }
}

fn to_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Catalog {
    /// Open (creating if needed) the catalog `catalog.sqlite` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("catalog.sqlite");
        let err = |source| Error::Catalog { path: path.clone(), source };
        let conn = Connection::open(&path).map_err(err)?;
        // WAL: a reader (search) never waits for a writer (index), and a crash loses at most
        // the transaction in progress. NORMAL sync is durable across a process crash.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS files (
                 path BLOB PRIMARY KEY,
                 size INTEGER NOT NULL,
                 mtime_ns INTEGER NOT NULL,
                 hash TEXT,
                 error TEXT
             );
             CREATE INDEX IF NOT EXISTS files_by_hash ON files (hash);
             CREATE TABLE IF NOT EXISTS vectors (
                 hash TEXT PRIMARY KEY,
                 width INTEGER NOT NULL,
                 height INTEGER NOT NULL,
                 embedding BLOB NOT NULL
             );
             CREATE TABLE IF NOT EXISTS roots (path BLOB PRIMARY KEY);
             CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0);",
        )
        .map_err(err)?;
        Ok(Catalog { conn, path })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> Error + '_ {
        move |source| Error::Catalog { path: self.path.clone(), source }
    }

    /// A counter bumped by every change; the vector matrix records the one it was built from.
    pub fn generation(&self) -> Result<i64> {
        self.conn.query_row("SELECT value FROM meta WHERE key = 'generation'", [], |r| r.get(0)).map_err(self.err())
    }

    /// Every file row whose path lies under one of `roots` (all rows when `roots` is empty).
    pub fn files_under(&self, roots: &[PathBuf]) -> Result<HashMap<PathBuf, FileRow>> {
        let mut stmt = self.conn.prepare("SELECT path, size, mtime_ns, hash, error FROM files").map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(FileRow {
                    path: key_path(r.get(0)?),
                    size: r.get::<_, i64>(1)? as u64,
                    mtime_ns: r.get(2)?,
                    hash: r.get(3)?,
                    error: r.get(4)?,
                })
            })
            .map_err(self.err())?;
        let mut out = HashMap::new();
        for row in rows {
            let row = row.map_err(self.err())?;
            if roots.is_empty() || roots.iter().any(|r| row.path.starts_with(r)) {
                out.insert(row.path.clone(), row);
            }
        }
        Ok(out)
    }

    /// The hashes that have an embedding.
    pub fn known_hashes(&self) -> Result<HashSet<String>> {
        let mut stmt = self.conn.prepare("SELECT hash FROM vectors").map_err(self.err())?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Record a batch in one transaction: new embeddings, then the files (inserted or
    /// replaced), then the generation.
    pub fn commit(&mut self, vectors: &[VectorRow], files: &[FileRow]) -> Result<()> {
        let path = self.path.clone();
        let err = |source| Error::Catalog { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut put_vec = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO vectors (hash, width, height, embedding) VALUES (?1, ?2, ?3, ?4)",
                )
                .map_err(err)?;
            for v in vectors {
                put_vec.execute(params![v.hash, v.width, v.height, to_bytes(&v.embedding)]).map_err(err)?;
            }
            let mut put_file = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO files (path, size, mtime_ns, hash, error) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(err)?;
            for f in files {
                put_file
                    .execute(params![path_key(&f.path), f.size as i64, f.mtime_ns, f.hash, f.error])
                    .map_err(err)?;
            }
            tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'", []).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Drop the rows of `paths` (files that are gone), in one transaction.
    pub fn remove(&mut self, paths: &[PathBuf]) -> Result<()> {
        if paths.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let err = |source| Error::Catalog { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        {
            let mut del = tx.prepare_cached("DELETE FROM files WHERE path = ?1").map_err(err)?;
            for p in paths {
                del.execute(params![path_key(p)]).map_err(err)?;
            }
            tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'", []).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// Remember `roots` as indexed (for `pe search --update`).
    pub fn add_roots(&mut self, roots: &[PathBuf]) -> Result<()> {
        for r in roots {
            self.conn
                .execute("INSERT OR IGNORE INTO roots (path) VALUES (?1)", params![path_key(r)])
                .map_err(self.err())?;
        }
        Ok(())
    }

    /// The roots indexed so far.
    pub fn roots(&self) -> Result<Vec<PathBuf>> {
        let mut stmt = self.conn.prepare("SELECT path FROM roots ORDER BY path").map_err(self.err())?;
        let rows = stmt.query_map([], |r| r.get::<_, Vec<u8>>(0)).map_err(self.err())?;
        rows.map(|r| r.map(key_path).map_err(self.err())).collect()
    }

    /// A remembered setting (see [`crate::UpdateOptions::remembered`]).
    pub fn setting(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM settings WHERE key = ?1", params![key], |r| r.get(0))
            .optional()
            .map_err(self.err())
    }

    /// Remember a setting, replacing the one before.
    pub fn set_setting(&mut self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?1, ?2)", params![key, value])
            .map_err(self.err())?;
        Ok(())
    }

    /// Drop embeddings no file points to any more; returns how many.
    pub fn collect_garbage(&mut self) -> Result<usize> {
        let n = self
            .conn
            .execute("DELETE FROM vectors WHERE hash NOT IN (SELECT hash FROM files WHERE hash IS NOT NULL)", [])
            .map_err(self.err())?;
        if n > 0 {
            self.conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'", []).map_err(self.err())?;
        }
        Ok(n)
    }

    /// Every searchable file (one whose content has an embedding), by path, with its
    /// embedding, in path order: `f(path, content hash, embedding)`.
    pub fn for_each_vector(&self, dim: usize, mut f: impl FnMut(PathBuf, &str, &[f32]) -> Result<()>) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT files.path, vectors.embedding, files.hash FROM files JOIN vectors ON files.hash = vectors.hash
                 WHERE files.error IS NULL ORDER BY files.path",
            )
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        let mut v = vec![0f32; dim];
        while let Some(r) = rows.next().map_err(self.err())? {
            let path = key_path(r.get(0).map_err(self.err())?);
            let blob = r.get_ref(1).map_err(self.err())?.as_blob().map_err(|e| Error::Catalog {
                path: self.path.clone(),
                source: rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Blob, Box::new(e)),
            })?;
            if blob.len() != dim * 4 {
                return Err(Error::corrupt(
                    &self.path,
                    format!("the embedding of {} has {} bytes, not {}", path.display(), blob.len(), dim * 4),
                ));
            }
            for (d, c) in v.iter_mut().zip(blob.chunks_exact(4)) {
                *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
            let hash: String = r.get(2).map_err(self.err())?;
            f(path, &hash, &v)?;
        }
        Ok(())
    }

    /// The content hash of each searchable file, in path order (the matrix's row order).
    pub fn searchable_hashes(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT files.hash FROM files JOIN vectors ON files.hash = vectors.hash
                 WHERE files.error IS NULL ORDER BY files.path",
            )
            .map_err(self.err())?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The embedding stored for a file, if it has one.
    pub fn vector_of(&self, path: &Path) -> Result<Option<Vec<f32>>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT vectors.embedding FROM files JOIN vectors ON files.hash = vectors.hash WHERE files.path = ?1",
                params![path_key(path)],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        Ok(blob.map(|b| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
    }

    /// Every stored embedding with its content hash (distinct contents, in hash order):
    /// `f(hash, embedding)`.
    pub fn for_each_embedding(&self, dim: usize, mut f: impl FnMut(&str, &[f32]) -> Result<()>) -> Result<()> {
        let mut stmt = self.conn.prepare("SELECT hash, embedding FROM vectors ORDER BY hash").map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        let mut v = vec![0f32; dim];
        while let Some(r) = rows.next().map_err(self.err())? {
            let hash: String = r.get(0).map_err(self.err())?;
            let blob: Vec<u8> = r.get(1).map_err(self.err())?;
            self.decode_into(&hash, &blob, &mut v)?;
            f(&hash, &v)?;
        }
        Ok(())
    }

    fn decode_into(&self, hash: &str, blob: &[u8], v: &mut [f32]) -> Result<()> {
        if blob.len() != v.len() * 4 {
            return Err(Error::corrupt(
                &self.path,
                format!("the embedding of content {hash} has {} bytes, not {}", blob.len(), v.len() * 4),
            ));
        }
        for (d, c) in v.iter_mut().zip(blob.chunks_exact(4)) {
            *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// The embedding stored for a content hash, if any.
    pub fn embedding_of(&self, hash: &str, dim: usize) -> Result<Option<Vec<f32>>> {
        let blob: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT embedding FROM vectors WHERE hash = ?1")
            .and_then(|mut s| s.query_row(params![hash], |r| r.get(0)).optional())
            .map_err(self.err())?;
        let Some(blob) = blob else { return Ok(None) };
        let mut v = vec![0f32; dim];
        self.decode_into(hash, &blob, &mut v)?;
        Ok(Some(v))
    }

    /// Every searchable file with its content's size and embedding, in path order:
    /// `f(file, width, height, embedding)` (what an export writes).
    pub fn for_each_record(
        &self,
        dim: usize,
        mut f: impl FnMut(&FileRow, u32, u32, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT files.path, files.size, files.mtime_ns, files.hash, vectors.width, vectors.height, vectors.embedding
                 FROM files JOIN vectors ON files.hash = vectors.hash WHERE files.error IS NULL ORDER BY files.path",
            )
            .map_err(self.err())?;
        let mut rows = stmt.query([]).map_err(self.err())?;
        let mut v = vec![0f32; dim];
        while let Some(r) = rows.next().map_err(self.err())? {
            let file = FileRow {
                path: key_path(r.get(0).map_err(self.err())?),
                size: r.get::<_, i64>(1).map_err(self.err())? as u64,
                mtime_ns: r.get(2).map_err(self.err())?,
                hash: r.get(3).map_err(self.err())?,
                error: None,
            };
            let (w, h): (u32, u32) = (r.get(4).map_err(self.err())?, r.get(5).map_err(self.err())?);
            let blob = r.get_ref(6).map_err(self.err())?.as_blob().map_err(|_| {
                Error::corrupt(&self.path, format!("the embedding of {} is not a blob", file.path.display()))
            })?;
            self.decode_into(file.hash.as_deref().unwrap_or_default(), blob, &mut v)?;
            f(&file, w, h, &v)?;
        }
        Ok(())
    }

    /// Counts: (files, searchable files, files with errors, distinct embeddings).
    pub fn counts(&self) -> Result<(usize, usize, usize, usize)> {
        let q = |sql: &str| -> Result<usize> {
            self.conn.query_row(sql, [], |r| r.get::<_, i64>(0)).map(|n| n as usize).map_err(self.err())
        };
        Ok((
            q("SELECT COUNT(*) FROM files")?,
            q("SELECT COUNT(*) FROM files JOIN vectors ON files.hash = vectors.hash WHERE files.error IS NULL")?,
            q("SELECT COUNT(*) FROM files WHERE error IS NOT NULL")?,
            q("SELECT COUNT(*) FROM vectors")?,
        ))
    }
}
