//! Reading the store back: records, listings and verified downloads.
//!
//! Any node answers for any file because everything it needs is in the bucket:
//! [`Store::stored`] is what a rerun compares against, [`Store::list`] is `ls`
//! (digests from the records, never recomputed by a listing), and
//! [`Store::download`] is `get`: it hashes the whole object as it streams and
//! ends with an error instead of the last success when the bytes no longer
//! match the record (bit rot, an edit behind up-srv's back), so the caller can
//! refuse rather than vouch for them.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore};
use sha2::{Digest as _, Sha256};

use super::record::{hex, Record, State, MAX_RECORD_LEN};
use super::{unavailable, validate_store_name, Store, StoreError, RECORDS_DIR};

/// Most records one listing returns; a larger listing asks for a narrower prefix.
pub const MAX_LISTED: usize = 100_000;

/// Records fetched at once while listing.
const LIST_FETCHES: usize = 16;

/// One stored file as `ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The stored name.
    pub name: String,
    /// Recorded SHA-256.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u64,
    /// When it was recorded as stored.
    pub modified: SystemTime,
}

impl From<Listed> for crate::storage::Listed {
    /// The same entry as the upload dir's listing gives, for the `ls` reply.
    fn from(l: Listed) -> Self {
        crate::storage::Listed {
            name: l.name,
            size: l.size,
            mtime: l
                .modified
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            sha256: l.sha256,
        }
    }
}

/// A verified download in progress: the record, then the bytes from the
/// requested offset; the stream's last item is an error if the whole object
/// did not hash to the record.
pub struct Download {
    /// What the store recorded (the digest the client checks against).
    pub record: Record,
    /// The bytes from the offset on.
    pub bytes: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// The record of `name` in any state, `None` if there is none.
    pub async fn record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        let key = self.record_key(name)?;
        let got = match self.s3.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(unavailable("reading the record", &key, e)),
        };
        if got.meta.size > MAX_RECORD_LEN as u64 {
            return Err(StoreError::BadRecord {
                name: name.to_string(),
                source: super::record::RecordError::TooLong(got.meta.size as usize),
            });
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| unavailable("reading the record", &key, e))?;
        Record::from_bytes(&bytes)
            .map(Some)
            .map_err(|source| StoreError::BadRecord {
                name: name.to_string(),
                source,
            })
    }

    /// The record of `name` if it is stored (what a rerun compares against).
    pub async fn stored(&self, name: &str) -> Result<Option<Record>, StoreError> {
        validate_store_name(name)?;
        Ok(self
            .record(name)
            .await?
            .filter(|r| r.state == State::Stored))
    }

    /// Size of the data object of `name`, `None` if there is none.
    pub(super) async fn object_size(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let key = self.data_key(name)?;
        match self.s3.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(unavailable("looking up", &key, e)),
        }
    }

    /// Reads the object under `key` in full: its size and SHA-256.
    pub(super) async fn hash_object(&self, key: &Path) -> Result<(u64, [u8; 32]), StoreError> {
        let got = self
            .s3
            .get(key)
            .await
            .map_err(|e| unavailable("reading back", key, e))?;
        let mut body = got.into_stream();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| unavailable("reading back", key, e))?;
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Ok((size, hasher.finalize().into()))
    }

    /// Stored files whose names start with `prefix` (any string, `""` for all),
    /// sorted by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Listed>, StoreError> {
        let root = self.data_key(RECORDS_DIR)?;
        let skip = root.as_ref().len() + 1;
        let mut metas = Vec::new();
        let mut listing = self.s3.list(Some(&root));
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| unavailable("listing", &root, e))?;
            let name = meta
                .location
                .as_ref()
                .get(skip..)
                .unwrap_or_default()
                .to_string();
            if name.starts_with(prefix) {
                if metas.len() == MAX_LISTED {
                    return Err(StoreError::Name {
                        name: prefix.to_string(),
                        reason: format!(
                            "more than {MAX_LISTED} files match; list a narrower prefix"
                        ),
                    });
                }
                metas.push((name, meta.last_modified));
            }
        }
        let mut listed: Vec<Listed> = stream::iter(metas)
            .map(|(name, modified)| async move {
                Ok::<_, StoreError>(match self.record(&name).await {
                    Ok(Some(rec)) if rec.state == State::Stored => Some(Listed {
                        name,
                        sha256: rec.sha256,
                        size: rec.size,
                        modified: SystemTime::UNIX_EPOCH
                            + Duration::from_millis(modified.timestamp_millis().max(0) as u64),
                    }),
                    // Pending, removed meanwhile, or unreadable: not a stored file.
                    Ok(_) | Err(StoreError::BadRecord { .. }) => None,
                    Err(e) => return Err(e),
                })
            })
            .buffer_unordered(LIST_FETCHES)
            .try_filter_map(|l| async move { Ok(l) })
            .try_collect()
            .await?;
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }

    /// Starts a verified download of `name` from byte `offset` (an interrupted
    /// download resumes there; the bytes before it are read and hashed too, so
    /// the check always covers the whole object).
    pub async fn download(&self, name: &str, offset: u64) -> Result<Download, StoreError> {
        let record = self
            .stored(name)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                name: name.to_string(),
            })?;
        let key = self.data_key(name)?;
        let corrupt = |detail| StoreError::Corrupt {
            name: name.to_string(),
            detail,
        };
        if offset > record.size {
            return Err(corrupt(format!(
                "offset {offset} is past the recorded {} bytes",
                record.size
            )));
        }
        let got = match self.s3.get_opts(&key, GetOptions::default()).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(corrupt("recorded but its object is missing".to_string()))
            }
            Err(e) => return Err(unavailable("reading", &key, e)),
        };
        if got.meta.size != record.size {
            return Err(corrupt(format!(
                "{} bytes, recorded {}",
                got.meta.size, record.size
            )));
        }
        let state = Verifier {
            body: got.into_stream(),
            hasher: Sha256::new(),
            seen: 0,
            skip: offset,
            record: record.clone(),
            key,
            name: name.to_string(),
            done: false,
        };
        let bytes = stream::try_unfold(state, Verifier::next).boxed();
        Ok(Download { record, bytes })
    }

    /// Reads and hashes the stored copy of `name` against its record.
    pub async fn verify(&self, name: &str) -> Result<Record, StoreError> {
        let mut download = self.download(name, 0).await?;
        while download.bytes.try_next().await?.is_some() {}
        Ok(download.record)
    }
}

/// State of a download stream: hashes every byte, yields those past `skip`.
struct Verifier {
    body: BoxStream<'static, object_store::Result<Bytes>>,
    hasher: Sha256,
    seen: u64,
    skip: u64,
    record: Record,
    key: Path,
    name: String,
    done: bool,
}

impl Verifier {
    async fn next(mut self) -> Result<Option<(Bytes, Self)>, StoreError> {
        loop {
            if self.done {
                return Ok(None);
            }
            match self.body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(|e| unavailable("reading", &self.key, e))?;
                    self.hasher.update(&chunk);
                    let start = self.seen;
                    self.seen += chunk.len() as u64;
                    if self.seen > self.record.size {
                        return Err(self.corrupt(format!(
                            "more than the recorded {} bytes",
                            self.record.size
                        )));
                    }
                    if self.seen <= self.skip {
                        continue;
                    }
                    let from = self.skip.saturating_sub(start) as usize;
                    return Ok(Some((chunk.slice(from..), self)));
                }
                None => {
                    self.done = true;
                    let digest: [u8; 32] = self.hasher.clone().finalize().into();
                    if self.seen != self.record.size {
                        return Err(self.corrupt(format!(
                            "{} bytes, recorded {}",
                            self.seen, self.record.size
                        )));
                    }
                    if digest != self.record.sha256 {
                        return Err(self.corrupt(format!(
                            "sha256 {}, recorded {}",
                            hex(&digest),
                            self.record.sha256_hex()
                        )));
                    }
                }
            }
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            name: self.name.clone(),
            detail,
        }
    }
}
