//! Durable, atomic file storage under the upload dir; no sockets here.
//!
//! Data arrives in a partial file inside the hidden [`PARTIAL_DIR`] of the
//! upload dir, keyed by (name, size) so that re-running the same upload finds
//! it and resumes. Completion fsyncs the file, renames it into place without
//! clobbering (unless `--overwrite`) and fsyncs the directory, so a file under
//! its final name is always complete. Every path below the upload dir is
//! walked with `openat(O_NOFOLLOW)` from the dir's own descriptor, so a
//! symlink planted inside the upload dir is never followed. Every stored
//! file has a digest record (in [`PARTIAL_DIR`]/[`SUMS_DIR`]) that `ls`,
//! `get` and the already-stored check read. All functions here block: the
//! session calls each of them through `tokio::task::spawn_blocking`.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fstatat, mkdirat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};
use proto::digest::{Algorithm, Hasher};
use proto::upload::name::{self, NameError};
use proto::upload::Digest;

/// Hidden directory inside the upload dir that holds partial uploads.
/// Names starting with it are refused so no upload can land there.
pub const PARTIAL_DIR: &str = ".partial";

/// Hidden directory inside [`PARTIAL_DIR`] holding one digest record per
/// stored file: its SHA-256 with the size and mtime it was taken at, so a
/// file changed behind the server's back is noticed and re-hashed.
pub const SUMS_DIR: &str = "sums";

/// How many ` (n)` suffixes are tried before giving up on a unique name.
pub const MAX_UNIQUE_TRIES: u32 = 10_000;

/// Most files one listing returns; a larger upload dir is cut (and logged).
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// Buffer size for hashing a stored prefix or file.
const HASH_BUF: usize = 256 * 1024;

/// Why a name is refused: the shared policy of [`proto::upload::name`], or
/// the one name this server keeps for itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    /// The name breaks the shared policy.
    #[error(transparent)]
    Policy(#[from] NameError),
    /// The name would land in the partial-upload directory.
    #[error("names starting with '{PARTIAL_DIR}' are reserved for partial uploads")]
    PartialDir,
}

/// Checks `name` (already in NFC) against the shared policy and the
/// server's reserved partial dir.
pub fn validate_name(name: &str) -> Result<(), BadName> {
    name::validate(name)?;
    if name.starts_with(PARTIAL_DIR) {
        return Err(BadName::PartialDir);
    }
    Ok(())
}

/// Storage failures, each naming the path involved.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The upload dir cannot be created or opened.
    #[error("cannot open upload dir {path}: {cause} (check the path and its permissions, or pass --dir)")]
    OpenDir {
        /// The upload dir.
        path: PathBuf,
        /// The cause (not a `source`, so the one-line message is not repeated).
        cause: io::Error,
    },
    /// An operation on a path below the upload dir failed.
    #[error("cannot {action} {path}: {cause}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Path relative to the upload dir.
        path: String,
        /// The cause.
        cause: io::Error,
    },
    /// A directory component of the name is a symlink or not a directory.
    #[error("cannot store {path}: '{component}' is a symlink or not a directory")]
    NotADirectory {
        /// The name being stored.
        path: String,
        /// The offending component.
        component: String,
    },
    /// The upload dir path names something that is not a directory.
    #[error("upload dir {0} exists and is not a directory (pass --dir with a directory)")]
    NotADir(PathBuf),
    /// Every ` (n)` suffix up to [`MAX_UNIQUE_TRIES`] is taken.
    #[error("cannot find a free name for {0} (too many copies)")]
    NoUniqueName(String),
}

fn io_err(
    action: &'static str,
    path: impl Into<String>,
    source: impl Into<io::Error>,
) -> StorageError {
    StorageError::Io {
        action,
        path: path.into(),
        cause: source.into(),
    }
}

/// What the start-up scan of the partial dir found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PartialScan {
    /// Resumable partials kept, as (name, declared size, bytes held).
    pub kept: Vec<(String, u64, u64)>,
    /// Partials removed because they were older than the max age or not resumable.
    pub removed: usize,
}

/// The upload dir, opened once; all later paths are resolved from its descriptor.
#[derive(Debug)]
pub struct Storage {
    root: PathBuf,
    root_fd: OwnedFd,
    partial_fd: OwnedFd,
    sums_fd: OwnedFd,
    overwrite: bool,
    fsync: bool,
    /// Held by [`Storage::commit`], so that its check for an identical
    /// stored file and its renames are one step against other commits.
    commit_lock: std::sync::Mutex<()>,
}

/// Data of one upload in progress, kept in the partial dir.
#[derive(Debug)]
pub struct PartialUpload {
    key: String,
    file: File,
    len: u64,
}

impl PartialUpload {
    /// Bytes already held.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when no byte is held yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hashes the held prefix with `algorithm`; the returned state continues
    /// with the body.
    pub fn hash_prefix(&mut self, algorithm: Algorithm) -> Result<Hasher, StorageError> {
        let mut hasher = Hasher::new(algorithm);
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(|e| io_err("read", self.data_name(), e))?;
        let mut buf = vec![0u8; HASH_BUF];
        let mut left = self.len;
        while left > 0 {
            let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
            let n = self
                .file
                .read(&mut buf[..want])
                .map_err(|e| io_err("read", self.data_name(), e))?;
            if n == 0 {
                // The file shrank under us; resume from what is really there.
                self.len -= left;
                self.file
                    .set_len(self.len)
                    .map_err(|e| io_err("truncate", self.data_name(), e))?;
                break;
            }
            hasher.update(&buf[..n]);
            left -= n as u64;
        }
        Ok(hasher)
    }

    /// Drops the held bytes so the upload restarts at 0.
    pub fn restart(&mut self) -> Result<(), StorageError> {
        self.file
            .set_len(0)
            .map_err(|e| io_err("truncate", self.data_name(), e))?;
        self.len = 0;
        Ok(())
    }

    /// Positions the file at its end and hands it out for appending the body.
    pub fn append_handle(&mut self) -> Result<File, StorageError> {
        self.file
            .seek(SeekFrom::Start(self.len))
            .map_err(|e| io_err("seek", self.data_name(), e))?;
        self.file
            .try_clone()
            .map_err(|e| io_err("open", self.data_name(), e))
    }

    /// Appends `data` (a small file's whole body, written in one go).
    pub fn write_all(&mut self, data: &[u8]) -> Result<(), StorageError> {
        self.file
            .write_all(data)
            .map_err(|e| io_err("write", self.data_name(), e))?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Records bytes appended through [`PartialUpload::append_handle`].
    pub fn add_len(&mut self, n: u64) {
        self.len += n;
    }

    fn data_name(&self) -> String {
        format!("{PARTIAL_DIR}/{}.data", self.key)
    }
}

/// A verified small file waiting for [`Storage::commit`].
#[derive(Debug)]
pub struct Staged {
    /// Its data, complete and verified, not yet fsynced.
    pub partial: PartialUpload,
    /// The name it is stored under (or a unique variant of it).
    pub name: String,
    /// Its digest, recorded once it is stored.
    pub digest: Digest,
    /// The algorithm of `digest`.
    pub algorithm: Algorithm,
}

/// What [`Storage::commit`] did with one file: the name it is stored
/// under, or `None` when its name already held the same bytes.
pub type Committed = Result<Option<String>, StorageError>;

/// Where [`Storage::place`] put a file.
struct Placed {
    /// Name relative to the upload dir.
    stored: String,
    /// Its directory relative to the upload dir (empty for the dir itself).
    dir: String,
    /// That directory, open; `None` for the upload dir.
    dir_fd: Option<OwnedFd>,
}

impl Placed {
    fn dir_fd<'a>(&'a self, storage: &'a Storage) -> std::os::fd::BorrowedFd<'a> {
        self.dir_fd
            .as_ref()
            .map_or(storage.root_fd.as_fd(), |f| f.as_fd())
    }
}

/// Most threads fsyncing one batch at once.
pub const FSYNC_THREADS: usize = 8;

/// Fsyncs `files` from up to [`FSYNC_THREADS`] threads at once. Journaling
/// filesystems commit fsyncs that wait together in one journal commit, so a
/// batch costs a few commits instead of one per file. One result per file.
fn sync_all_parallel(files: &[&File]) -> Vec<io::Result<()>> {
    let threads = files.len().min(FSYNC_THREADS);
    if threads <= 1 {
        return files.iter().map(|f| f.sync_all()).collect();
    }
    let per = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(per)
            .map(|group| {
                scope.spawn(move || group.iter().map(|f| f.sync_all()).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .zip(files.chunks(per))
            .flat_map(|(h, group)| {
                h.join().unwrap_or_else(|_| {
                    group
                        .iter()
                        .map(|_| Err(io::Error::other("fsync thread panicked")))
                        .collect()
                })
            })
            .collect()
    })
}

/// Size and modification time of a stored file, what its digest record is
/// checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: u128,
}

impl Stamp {
    fn of(file: &File) -> io::Result<Stamp> {
        let meta = file.metadata()?;
        let mtime_ns = meta
            .modified()?
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        Ok(Stamp {
            size: meta.len(),
            mtime_ns,
        })
    }
}

/// What [`Storage::fetch`] found.
#[derive(Debug)]
pub enum Fetch {
    /// No regular file of that name is stored.
    NotFound,
    /// The file changed since its digest was recorded.
    Changed,
    /// The file, its size and its recorded digest.
    Found {
        /// Open for reading.
        file: File,
        /// Size in bytes.
        size: u64,
        /// Recorded SHA-256.
        sha256: Digest,
    },
}

/// One stored file of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Name relative to the upload dir.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: u64,
    /// SHA-256 of the content.
    pub sha256: Digest,
}

/// Hashes the first `len` bytes of `file` from its start with `algorithm`.
fn hash_file(mut file: File, len: u64, algorithm: Algorithm) -> io::Result<Digest> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; HASH_BUF];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        let n = file.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(hasher.finalize().into())
}

fn parse_hex(s: &str) -> Option<Digest> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Unique suffix source for non-resumable temp files.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl Storage {
    /// Creates (if missing) and opens the upload dir and its partial dir.
    pub fn open(root: &Path, overwrite: bool, fsync: bool) -> Result<Self, StorageError> {
        let open_err = |cause: io::Error| StorageError::OpenDir {
            path: root.to_path_buf(),
            cause,
        };
        if root.exists() && !root.is_dir() {
            return Err(StorageError::NotADir(root.to_path_buf()));
        }
        std::fs::create_dir_all(root).map_err(open_err)?;
        let root_fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| open_err(e.into()))?;
        let partial_fd = open_or_create_dir(&root_fd, PARTIAL_DIR, fsync)
            .map_err(|e| open_err(e.into()))?
            .0;
        let sums_fd = open_or_create_dir(&partial_fd, SUMS_DIR, fsync)
            .map_err(|e| open_err(e.into()))?
            .0;
        Ok(Storage {
            root: root.to_path_buf(),
            root_fd,
            partial_fd,
            sums_fd,
            overwrite,
            fsync,
            commit_lock: std::sync::Mutex::new(()),
        })
    }

    /// The upload dir as given.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes available to this process on the upload dir's filesystem.
    pub fn free_space(&self) -> Result<u64, StorageError> {
        let st =
            nix::sys::statvfs::fstatvfs(&self.root_fd).map_err(|e| io_err("statvfs", ".", e))?;
        #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
        Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
    }

    /// The partial key of (name, size): a hash, so nested names stay flat
    /// and the same upload always finds the same partial.
    fn key(name: &str, size: u64) -> String {
        let mut h = Hasher::new(Algorithm::Sha256);
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(&size.to_be_bytes());
        let d: [u8; 32] = h.finalize().into();
        proto::upload::hex(&d)[..32].to_string()
    }

    /// Bytes already held for (name, size), without creating anything
    /// (0 when there is no partial, or one that cannot belong to this size).
    pub fn held(&self, name: &str, size: u64) -> u64 {
        let data = format!("{}.data", Self::key(name, size));
        match fstatat(
            &self.partial_fd,
            data.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => u64::try_from(st.st_size)
                .ok()
                .filter(|&n| n <= size)
                .unwrap_or(0),
            Err(_) => 0,
        }
    }

    /// Opens (or creates) the resumable partial of (name, size).
    /// The name must have passed [`validate_name`].
    pub fn open_partial(&self, name: &str, size: u64) -> Result<PartialUpload, StorageError> {
        let key = Self::key(name, size);
        let meta = format!("up-srv partial v1\nsize={size}\nname={name}\n");
        self.write_small(&format!("{key}.meta"), meta.as_bytes())?;
        let mut partial = self.open_data(key)?;
        if partial.len > size {
            // Cannot belong to this upload: start over.
            partial.restart()?;
        }
        Ok(partial)
    }

    /// Opens a fresh non-resumable partial (legacy uploads carry no name to resume by).
    pub fn open_temp(&self) -> Result<PartialUpload, StorageError> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let key = format!("tmp-{}-{nanos}-{n}", std::process::id());
        let mut p = self.open_data(key)?;
        p.restart()?;
        Ok(p)
    }

    fn open_data(&self, key: String) -> Result<PartialUpload, StorageError> {
        let name = format!("{key}.data");
        let fd = openat(
            &self.partial_fd,
            name.as_str(),
            OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| io_err("open", format!("{PARTIAL_DIR}/{name}"), e))?;
        let file = File::from(fd);
        let len = file
            .metadata()
            .map_err(|e| io_err("stat", format!("{PARTIAL_DIR}/{name}"), e))?
            .len();
        Ok(PartialUpload { key, file, len })
    }

    fn write_small(&self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let fd = openat(
            &self.partial_fd,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| io_err("open", format!("{PARTIAL_DIR}/{name}"), e))?;
        File::from(fd)
            .write_all(data)
            .map_err(|e| io_err("write", format!("{PARTIAL_DIR}/{name}"), e))
    }

    /// Removes a partial and its meta (digest mismatch, failed legacy upload).
    pub fn discard(&self, partial: PartialUpload) -> Result<(), StorageError> {
        let key = partial.key.clone();
        drop(partial);
        self.remove_key(&key)
    }

    fn remove_key(&self, key: &str) -> Result<(), StorageError> {
        for ext in ["data", "meta"] {
            let name = format!("{key}.{ext}");
            match unlinkat(&self.partial_fd, name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(io_err("remove", format!("{PARTIAL_DIR}/{name}"), e)),
            }
        }
        Ok(())
    }

    /// Makes a complete, verified partial durable under `name` (or a unique
    /// variant of it), records its digest, and returns the stored name
    /// relative to the upload dir.
    pub fn finish(
        &self,
        partial: PartialUpload,
        name: &str,
        sha256: &Digest,
    ) -> Result<String, StorageError> {
        self.finish_with(partial, name, sha256, Algorithm::Sha256)
    }

    /// [`Storage::finish`] for a file verified with `algorithm`: the record
    /// kept is of that algorithm.
    pub fn finish_with(
        &self,
        partial: PartialUpload,
        name: &str,
        sha256: &Digest,
        algorithm: Algorithm,
    ) -> Result<String, StorageError> {
        let stamp = Stamp::of(&partial.file).map_err(|e| io_err("stat", partial.data_name(), e))?;
        if self.fsync {
            partial
                .file
                .sync_all()
                .map_err(|e| io_err("fsync", partial.data_name(), e))?;
        }
        let placed = self.place(partial, name)?;
        if self.fsync {
            nix::unistd::fsync(placed.dir_fd(self))
                .map_err(|e| io_err("fsync directory of", name, e))?;
        }
        self.write_record(&placed.stored, stamp, sha256, algorithm)?;
        Ok(placed.stored)
    }

    /// Stores a batch of verified files at once (group commit): every file's
    /// data is fsynced (in parallel, so the filesystem commits them together),
    /// then each is renamed into place, then each directory that received one
    /// is fsynced once. Every result is known only once all of that is done,
    /// so no file is reported stored before it is durable. One result per
    /// file, in order: the stored name, or `None` when its name already held
    /// the same bytes (another connection stored them first); a failure of
    /// one file does not fail the others.
    pub fn commit(&self, batch: Vec<Staged>) -> Vec<Committed> {
        let _serial = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut results: Vec<Option<Committed>> = Vec::new();
        let mut fresh = Vec::with_capacity(batch.len());
        for staged in batch {
            let size = staged.partial.len();
            let same = self
                .stored_digest_with(&staged.name, size, staged.algorithm)
                .is_ok_and(|d| d == Some(staged.digest));
            if same {
                let _ = self.discard(staged.partial);
                results.push(Some(Ok(None)));
            } else {
                results.push(None);
                fresh.push(staged);
            }
        }
        let mut stored = self.commit_fresh(fresh).into_iter();
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r,
                None => match stored.next() {
                    Some(r) => r.map(Some),
                    None => Err(StorageError::NoUniqueName("a committed file".into())),
                },
            })
            .collect()
    }

    /// [`Storage::commit`] of files whose names do not hold them yet.
    fn commit_fresh(&self, batch: Vec<Staged>) -> Vec<Result<String, StorageError>> {
        let synced: Vec<io::Result<()>> = if self.fsync {
            let files: Vec<&File> = batch.iter().map(|s| &s.partial.file).collect();
            sync_all_parallel(&files)
        } else {
            batch.iter().map(|_| Ok(())).collect()
        };
        let mut placed: Vec<Result<(Placed, Stamp, Digest, Algorithm), StorageError>> =
            Vec::with_capacity(batch.len());
        for (staged, synced) in batch.into_iter().zip(synced) {
            let data = staged.partial.data_name();
            let step = synced
                .map_err(|e| io_err("fsync", data.clone(), e))
                .and_then(|()| Stamp::of(&staged.partial.file).map_err(|e| io_err("stat", data, e)))
                .and_then(|stamp| {
                    let key = staged.partial.key.clone();
                    let placed = self.place(staged.partial, &staged.name);
                    if placed.is_err() {
                        let _ = self.remove_key(&key);
                    }
                    Ok((placed?, stamp, staged.digest, staged.algorithm))
                });
            placed.push(step);
        }
        if self.fsync {
            // One fsync per directory that received a file.
            let mut done: Vec<(&str, Result<(), Errno>)> = Vec::new();
            for (p, ..) in placed.iter().flatten() {
                if !done.iter().any(|(dir, _)| *dir == p.dir.as_str()) {
                    done.push((p.dir.as_str(), nix::unistd::fsync(p.dir_fd(self))));
                }
            }
            let failed: Vec<(String, Errno)> = done
                .into_iter()
                .filter_map(|(dir, r)| r.err().map(|e| (dir.to_string(), e)))
                .collect();
            for step in &mut placed {
                let bad = match step {
                    Ok((p, ..)) => failed.iter().find(|(dir, _)| *dir == p.dir).cloned(),
                    Err(_) => None,
                };
                if let (Some((_, e)), Ok((p, ..))) = (bad, &step) {
                    *step = Err(io_err("fsync directory of", p.stored.clone(), e));
                }
            }
        }
        placed
            .into_iter()
            .map(|step| {
                let (p, stamp, digest, algorithm) = step?;
                self.write_record(&p.stored, stamp, &digest, algorithm)?;
                Ok(p.stored)
            })
            .collect()
    }

    /// Renames a partial into place under `name` (or a unique variant of it
    /// unless `--overwrite`), creating its directories; no fsync here.
    fn place(&self, partial: PartialUpload, name: &str) -> Result<Placed, StorageError> {
        let key = partial.key.clone();
        let data_name = partial.data_name();
        drop(partial);
        let src = format!("{key}.data");

        let (dirs, leaf) = match name.rsplit_once('/') {
            Some((d, l)) => (Some(d), l),
            None => (None, name),
        };
        let mut dir_fd: Option<OwnedFd> = None;
        for component in dirs.into_iter().flat_map(|d| d.split('/')) {
            let parent = dir_fd.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
            let (fd, _) =
                open_or_create_dir(&parent, component, self.fsync).map_err(|e| match e {
                    Errno::ENOTDIR | Errno::ELOOP => StorageError::NotADirectory {
                        path: name.to_string(),
                        component: component.to_string(),
                    },
                    e => io_err("create directory for", name, e),
                })?;
            dir_fd = Some(fd);
        }
        let leaf_dir = dir_fd.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
        let stored_leaf = if self.overwrite {
            renameat(&self.partial_fd, src.as_str(), leaf_dir, leaf)
                .map_err(|e| io_err("rename into place", name, e))?;
            leaf.to_string()
        } else {
            self.rename_unique(&src, leaf_dir, leaf, name, &data_name)?
        };
        // The data is safe under its final name; the meta is now garbage.
        let _ = unlinkat(
            &self.partial_fd,
            format!("{key}.meta").as_str(),
            UnlinkatFlags::NoRemoveDir,
        );
        let dir = dirs.unwrap_or_default().to_string();
        let stored = if dir.is_empty() {
            stored_leaf
        } else {
            format!("{dir}/{stored_leaf}")
        };
        Ok(Placed {
            stored,
            dir,
            dir_fd,
        })
    }

    /// Renames `src` to `leaf` in `leaf_dir`, or to the first free
    /// `leaf (n)`, never replacing an existing file; the leaf it got.
    fn rename_unique(
        &self,
        src: &str,
        leaf_dir: std::os::fd::BorrowedFd<'_>,
        leaf: &str,
        name: &str,
        data_name: &str,
    ) -> Result<String, StorageError> {
        for n in 0..MAX_UNIQUE_TRIES {
            let candidate = if n == 0 {
                leaf.to_string()
            } else {
                unique_variant(leaf, n)
            };
            if candidate.len() > name::MAX_COMPONENT_LEN {
                break;
            }
            match renameat2(
                &self.partial_fd,
                src,
                leaf_dir,
                candidate.as_str(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => return Ok(candidate),
                Err(Errno::EEXIST) => continue,
                Err(Errno::EINVAL) => {
                    // The filesystem lacks RENAME_NOREPLACE: a hard link is
                    // just as atomic at refusing an existing name.
                    match nix::unistd::linkat(
                        &self.partial_fd,
                        src,
                        leaf_dir,
                        candidate.as_str(),
                        nix::fcntl::AtFlags::empty(),
                    ) {
                        Ok(()) => {
                            let _ = unlinkat(&self.partial_fd, src, UnlinkatFlags::NoRemoveDir);
                            return Ok(candidate);
                        }
                        Err(Errno::EEXIST) => continue,
                        Err(e) => return Err(io_err("link into place", data_name, e)),
                    }
                }
                Err(e) => return Err(io_err("rename into place", name, e)),
            }
        }
        Err(StorageError::NoUniqueName(name.to_string()))
    }

    /// The record file of a stored name, flat like the partial keys; one per
    /// algorithm (SHA-256 records keep their original, suffix-less names).
    fn record_name(name: &str, algorithm: Algorithm) -> String {
        let d: Digest = proto::digest::digest(Algorithm::Sha256, name.as_bytes()).into();
        match algorithm {
            Algorithm::Sha256 => proto::upload::hex(&d[..16]),
            other => format!("{}.{other}", proto::upload::hex(&d[..16])),
        }
    }

    /// Writes the digest record of `name` (temp file, then rename), without fsync.
    ///
    /// A record is a cache, never the only copy of anything: it is trusted only
    /// while the stored file's size and mtime match it, and one that is missing,
    /// empty or cut short by a crash fails to parse (its last line must name the
    /// file), so the file is hashed again. Skipping its two fsyncs halves the
    /// fsyncs of a small upload, and the file itself is still durable before
    /// its verdict is sent. After a crash in `--overwrite` mode an older record
    /// may outlive its file's replacement; its stamp then no longer matches, so
    /// `ls` rehashes and `get` reports the file as changed rather than trust it.
    fn write_record(
        &self,
        name: &str,
        stamp: Stamp,
        sha256: &Digest,
        algorithm: Algorithm,
    ) -> Result<(), StorageError> {
        let file = Self::record_name(name, algorithm);
        let tmp = format!("{file}.tmp");
        let body = format!(
            "up-srv digest v1\n{algorithm}={}\nsize={}\nmtime_ns={}\nname={name}\n",
            proto::upload::hex(sha256),
            stamp.size,
            stamp.mtime_ns
        );
        let fd = openat(
            &self.sums_fd,
            tmp.as_str(),
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| io_err("open", format!("{PARTIAL_DIR}/{SUMS_DIR}/{tmp}"), e))?;
        let mut f = File::from(fd);
        f.write_all(body.as_bytes())
            .map_err(|e| io_err("write", format!("{PARTIAL_DIR}/{SUMS_DIR}/{tmp}"), e))?;
        renameat(&self.sums_fd, tmp.as_str(), &self.sums_fd, file.as_str())
            .map_err(|e| io_err("rename", format!("{PARTIAL_DIR}/{SUMS_DIR}/{file}"), e))?;
        Ok(())
    }

    /// The recorded `algorithm` digest of `name` and the stamp it was taken at.
    fn read_record(&self, name: &str, algorithm: Algorithm) -> Option<(Digest, Stamp)> {
        let fd = openat(
            &self.sums_fd,
            Self::record_name(name, algorithm).as_str(),
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()?;
        let mut text = String::new();
        File::from(fd).take(8192).read_to_string(&mut text).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "up-srv digest v1" {
            return None;
        }
        let hex = lines
            .next()?
            .strip_prefix(algorithm.name())?
            .strip_prefix('=')?;
        let size = lines.next()?.strip_prefix("size=")?.parse().ok()?;
        let mtime_ns = lines.next()?.strip_prefix("mtime_ns=")?.parse().ok()?;
        if lines.next()?.strip_prefix("name=")? != name {
            return None;
        }
        Some((parse_hex(hex)?, Stamp { size, mtime_ns }))
    }

    /// Opens the stored file `name` for reading without following symlinks;
    /// `None` when there is no regular file of that name.
    pub fn open_stored(&self, name: &str) -> Result<Option<(File, Stamp)>, StorageError> {
        let mut dir: Option<OwnedFd> = None;
        let (dirs, leaf) = match name.rsplit_once('/') {
            Some((d, l)) => (Some(d), l),
            None => (None, name),
        };
        for component in dirs.into_iter().flat_map(|d| d.split('/')) {
            let parent = dir.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
            match openat(
                parent,
                component,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => dir = Some(fd),
                Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
                Err(e) => return Err(io_err("open", name, e)),
            }
        }
        let parent = dir.as_ref().map_or(self.root_fd.as_fd(), |f| f.as_fd());
        let file = match openat(
            parent,
            leaf,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => File::from(fd),
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(None),
            Err(e) => return Err(io_err("open", name, e)),
        };
        let meta = file.metadata().map_err(|e| io_err("stat", name, e))?;
        if !meta.is_file() {
            return Ok(None);
        }
        let stamp = Stamp::of(&file).map_err(|e| io_err("stat", name, e))?;
        Ok(Some((file, stamp)))
    }

    /// The digest of the stored file `name` when it has `size` bytes: the
    /// recorded one while size and mtime still match, else the file is
    /// hashed again and the record renewed. `None` when no such file is stored.
    pub fn stored_digest(&self, name: &str, size: u64) -> Result<Option<Digest>, StorageError> {
        self.stored_digest_with(name, size, Algorithm::Sha256)
    }

    /// [`Storage::stored_digest`] in `algorithm`.
    pub fn stored_digest_with(
        &self,
        name: &str,
        size: u64,
        algorithm: Algorithm,
    ) -> Result<Option<Digest>, StorageError> {
        let Some((file, stamp)) = self.open_stored(name)? else {
            return Ok(None);
        };
        if stamp.size != size {
            return Ok(None);
        }
        self.digest_of(name, file, stamp, true, algorithm).map(Some)
    }

    /// The recorded digest while it matches `stamp`; otherwise the file is
    /// hashed, and the record written when there was none (or `renew`).
    fn digest_of(
        &self,
        name: &str,
        file: File,
        stamp: Stamp,
        renew: bool,
        algorithm: Algorithm,
    ) -> Result<Digest, StorageError> {
        let record = self.read_record(name, algorithm);
        if let Some((digest, recorded)) = record {
            if recorded == stamp {
                return Ok(digest);
            }
        }
        let digest = hash_file(file, stamp.size, algorithm).map_err(|e| io_err("read", name, e))?;
        if record.is_none() || renew {
            self.write_record(name, stamp, &digest, algorithm)?;
        }
        Ok(digest)
    }

    /// Opens a stored file for `get`: its size and recorded digest. A file
    /// stored before digests were kept is hashed and recorded now; a file
    /// whose size or mtime no longer match its record is [`Fetch::Changed`],
    /// since the record can no longer vouch for its bytes.
    pub fn fetch(&self, name: &str) -> Result<Fetch, StorageError> {
        let Some((file, stamp)) = self.open_stored(name)? else {
            return Ok(Fetch::NotFound);
        };
        let sha256 = match self.read_record(name, Algorithm::Sha256) {
            Some((digest, recorded)) if recorded == stamp => digest,
            Some(_) => return Ok(Fetch::Changed),
            None => {
                let copy = file.try_clone().map_err(|e| io_err("open", name, e))?;
                let digest = hash_file(copy, stamp.size, Algorithm::Sha256)
                    .map_err(|e| io_err("read", name, e))?;
                self.write_record(name, stamp, &digest, Algorithm::Sha256)?;
                digest
            }
        };
        Ok(Fetch::Found {
            file,
            size: stamp.size,
            sha256,
        })
    }

    /// The stored files whose names start with `prefix`, sorted by name,
    /// with the digests of their current bytes. A stale record is not
    /// renewed here, so `get` still refuses a file changed behind the server's back.
    /// Symlinks are not followed; the partial dir is not listed.
    pub fn list(&self, prefix: &str) -> Result<Vec<Listed>, StorageError> {
        let mut names = Vec::new();
        self.walk(&self.root, "", prefix, &mut names)?;
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let Some((file, stamp)) = self.open_stored(&name)? else {
                continue;
            };
            let sha256 = self.digest_of(&name, file, stamp, false, Algorithm::Sha256)?;
            out.push(Listed {
                mtime: u64::try_from(stamp.mtime_ns / 1_000_000_000).unwrap_or(u64::MAX),
                size: stamp.size,
                name,
                sha256,
            });
        }
        Ok(out)
    }

    fn walk(
        &self,
        dir: &Path,
        rel: &str,
        prefix: &str,
        out: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        let entries = std::fs::read_dir(dir).map_err(|e| io_err("list", rel.to_string(), e))?;
        for entry in entries.flatten() {
            if out.len() >= MAX_LIST_ENTRIES {
                return Ok(());
            }
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            if rel.is_empty() && file_name == PARTIAL_DIR {
                continue;
            }
            let name = if rel.is_empty() {
                file_name
            } else {
                format!("{rel}/{file_name}")
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            // A directory is entered only if a name below it can match.
            let could_match = name.starts_with(prefix) || prefix.starts_with(&format!("{name}/"));
            if kind.is_dir() && could_match {
                self.walk(&entry.path(), &name, prefix, out)?;
            } else if kind.is_file() && name.starts_with(prefix) {
                out.push(name);
            }
        }
        Ok(())
    }

    /// Lists the partial dir at start: removes partials older than `max_age`
    /// and non-resumable temp files, and reports the resumable rest.
    pub fn scan_partials(&self, max_age: Duration) -> Result<PartialScan, StorageError> {
        let dir = self.root.join(PARTIAL_DIR);
        let entries = std::fs::read_dir(&dir).map_err(|e| io_err("list", PARTIAL_DIR, e))?;
        let now = SystemTime::now();
        let mut scan = PartialScan::default();
        for entry in entries.flatten() {
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                continue;
            };
            let Some(key) = file_name.strip_suffix(".data") else {
                // Orphan metas are removed with their data, or below if stale.
                if let Some(key) = file_name.strip_suffix(".meta") {
                    if fstatat(
                        &self.partial_fd,
                        format!("{key}.data").as_str(),
                        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .is_err()
                    {
                        let _ = self.remove_key(key);
                    }
                }
                continue;
            };
            let meta = std::fs::read_to_string(dir.join(format!("{key}.meta"))).ok();
            let parsed = meta.as_deref().and_then(parse_meta);
            let held = entry.metadata().map(|m| m.len()).unwrap_or(0);
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| now.duration_since(t).ok())
                .unwrap_or_default();
            match parsed {
                Some((name, size)) if age <= max_age && key == Self::key(&name, size) => {
                    scan.kept.push((name, size, held));
                }
                _ => {
                    self.remove_key(key)?;
                    scan.removed += 1;
                }
            }
        }
        scan.kept.sort();
        Ok(scan)
    }
}

fn parse_meta(meta: &str) -> Option<(String, u64)> {
    let mut lines = meta.lines();
    if lines.next()? != "up-srv partial v1" {
        return None;
    }
    let size = lines.next()?.strip_prefix("size=")?.parse().ok()?;
    let name = lines.next()?.strip_prefix("name=")?.to_string();
    Some((name, size))
}

/// `photo.jpg` → `photo (n).jpg`; names without an extension get the suffix at the end.
pub fn unique_variant(leaf: &str, n: u32) -> String {
    match leaf.rfind('.') {
        Some(dot) if dot > 0 => format!("{} ({n}){}", &leaf[..dot], &leaf[dot..]),
        _ => format!("{leaf} ({n})"),
    }
}

/// Opens the directory `name` under `parent` without following symlinks,
/// creating it first if missing (and fsyncing the parent so the new entry is
/// durable). Returns the descriptor and whether it was created.
fn open_or_create_dir(
    parent: &impl AsFd,
    name: &str,
    fsync: bool,
) -> Result<(OwnedFd, bool), Errno> {
    let created = match mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(0o755)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(e),
    };
    let fd = openat(
        parent.as_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if created && fsync {
        nix::unistd::fsync(parent.as_fd())?;
    }
    Ok((fd, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dir_is_reserved_and_the_shared_policy_applies() {
        assert_eq!(validate_name(".partial/x"), Err(BadName::PartialDir));
        assert!(matches!(validate_name("a:b"), Err(BadName::Policy(_))));
        assert_eq!(validate_name("photos/a.jpg"), Ok(()));
    }

    #[test]
    fn a_file_as_upload_dir_is_named_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").expect("write");
        let err = Storage::open(&file, false, false).unwrap_err();
        assert!(err.to_string().contains("is not a directory"), "{err}");
        assert!(!err.to_string().contains("os error"), "{err}");
    }

    #[test]
    fn unique_variant_inserts_before_the_extension() {
        assert_eq!(unique_variant("photo.jpg", 1), "photo (1).jpg");
        assert_eq!(unique_variant("README", 2), "README (2)");
        assert_eq!(unique_variant(".bashrc", 1), ".bashrc (1)");
    }

    #[test]
    fn finish_makes_unique_names_and_overwrite_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), false, true).expect("open");
        for expected in ["x/y.txt", "x/y (1).txt"] {
            let mut p = s.open_partial("x/y.txt", 2).expect("partial");
            p.append_handle()
                .expect("handle")
                .write_all(b"hi")
                .expect("write");
            assert_eq!(s.finish(p, "x/y.txt", &[0; 32]).expect("finish"), expected);
        }
        let s = Storage::open(dir.path(), true, true).expect("open");
        let mut p = s.open_partial("x/y.txt", 2).expect("partial");
        p.append_handle()
            .expect("handle")
            .write_all(b"yo")
            .expect("write");
        assert_eq!(s.finish(p, "x/y.txt", &[0; 32]).expect("finish"), "x/y.txt");
        assert_eq!(
            std::fs::read(dir.path().join("x/y.txt")).expect("read"),
            b"yo"
        );
        assert_eq!(
            s.scan_partials(Duration::from_secs(60)).expect("scan"),
            PartialScan::default()
        );
    }

    #[test]
    fn symlinked_directory_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).expect("symlink");
        let s = Storage::open(dir.path(), false, false).expect("open");
        let p = s.open_partial("link/f", 0).expect("partial");
        let err = s.finish(p, "link/f", &[0; 32]).unwrap_err();
        assert!(matches!(err, StorageError::NotADirectory { .. }), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).expect("list").count(), 0);
    }

    #[test]
    fn scan_keeps_resumable_partials_and_drops_temps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), false, false).expect("open");
        let mut p = s.open_partial("big.bin", 10).expect("partial");
        p.append_handle()
            .expect("handle")
            .write_all(b"abc")
            .expect("write");
        let _t = s.open_temp().expect("temp");
        let scan = s.scan_partials(Duration::from_secs(3600)).expect("scan");
        assert_eq!(scan.kept, vec![("big.bin".to_string(), 10, 3)]);
        assert_eq!(scan.removed, 1);
    }

    fn store(s: &Storage, name: &str, data: &[u8]) -> (String, Digest) {
        let mut p = s.open_partial(name, data.len() as u64).expect("partial");
        p.append_handle()
            .expect("handle")
            .write_all(data)
            .expect("write");
        let digest: Digest = proto::digest::digest(Algorithm::Sha256, data).into();
        (s.finish(p, name, &digest).expect("finish"), digest)
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_never_trusted_wrongly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), false, false).expect("open");
        let (name, digest) = store(&s, "cut.txt", b"gamma");
        let path = dir
            .path()
            .join(PARTIAL_DIR)
            .join(SUMS_DIR)
            .join(Storage::record_name(&name, Algorithm::Sha256));
        let full = std::fs::read(&path).expect("record");
        let mut ignored = 0;
        for cut in 0..full.len() {
            std::fs::write(&path, &full[..cut]).expect("cut");
            match s.read_record(&name, Algorithm::Sha256) {
                Some((d, _)) => assert_eq!(d, digest, "cut at {cut}"),
                None => ignored += 1,
            }
            // Whatever the record's state, the answer is the file's digest.
            assert_eq!(s.stored_digest(&name, 5).expect("digest"), Some(digest));
        }
        assert!(ignored >= full.len() - 1, "only the final newline may go");
        std::fs::write(&path, vec![0u8; full.len()]).expect("zeros");
        assert_eq!(
            s.read_record(&name, Algorithm::Sha256),
            None,
            "a zero-filled record is ignored"
        );
    }

    #[test]
    fn digests_are_recorded_listed_and_changes_noticed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Storage::open(dir.path(), false, false).expect("open");
        let (a, da) = store(&s, "a.txt", b"alpha");
        let (b, db) = store(&s, "sub/b.txt", b"beta");
        assert_eq!(s.stored_digest("a.txt", 5).expect("digest"), Some(da));
        assert_eq!(
            s.stored_digest("a.txt", 6).expect("digest"),
            None,
            "size differs"
        );
        assert_eq!(s.stored_digest("nope", 5).expect("digest"), None);
        let listed = s.list("").expect("list");
        let names: Vec<_> = listed.iter().map(|l| (l.name.clone(), l.sha256)).collect();
        assert_eq!(names, [(a.clone(), da), (b, db)]);
        assert_eq!(s.list("sub/").expect("list").len(), 1);
        assert!(matches!(
            s.fetch("a.txt").expect("fetch"),
            Fetch::Found { size: 5, .. }
        ));
        assert!(matches!(
            s.fetch("missing").expect("fetch"),
            Fetch::NotFound
        ));

        // An edit behind the server's back: get refuses, the check re-hashes.
        let path = dir.path().join("a.txt");
        std::fs::write(&path, b"ALPHA").expect("edit");
        let later = SystemTime::now() + Duration::from_secs(5);
        File::options()
            .write(true)
            .open(&path)
            .expect("open")
            .set_modified(later)
            .expect("touch");
        assert!(matches!(s.fetch("a.txt").expect("fetch"), Fetch::Changed));
        let fresh: Digest = proto::digest::digest(Algorithm::Sha256, b"ALPHA").into();
        assert_eq!(s.stored_digest("a.txt", 5).expect("digest"), Some(fresh));
    }
}
