//! Putting a finished, verified local file into the store without clobbering.
//!
//! For each candidate name (`name`, then `name (1).ext`, ...):
//! 1. claim it by creating its record (`pending`, with the digest) using
//!    `If-None-Match: *`; if a record is already there, the name is free for us
//!    only when the record is for the very same bytes (digest and size): stored
//!    means "already stored", pending means an earlier put of these bytes was cut,
//!    and this put completes it (identical bytes, so overwriting them is harmless);
//! 2. put the data: one PUT up to [`PART_SIZE`], else a multipart upload with
//!    at most [`PARTS_IN_FLIGHT`] parts in flight and part buffers bounded for
//!    the whole store; every request carries `x-amz-checksum-sha256`; the file is
//!    hashed again as it is read and a multipart upload is completed only if that
//!    hash is the verified digest (else aborted);
//! 3. verify: the store's checksum check plus the object's size, or a full
//!    read-back where the store does not check (see [`Verification`]);
//! 4. mark the record `stored`. Only then does the caller hear success.
//!
//! On failure a fresh claim and its data are removed (best effort: a cut store
//! may leave a `pending` record, which the rerun of the same bytes completes).

use bytes::{Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, MultipartUpload, ObjectStore, PutMode, PutMultipartOptions, PutOptions,
    PutPayload,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::record::{hex, Record, State};
use super::{
    unavailable, validate_store_name, Store, StoreError, Verification, PARTS_IN_FLIGHT, PART_SIZE,
};
use crate::storage::{unique_variant, MAX_UNIQUE_TRIES};

/// User metadata key that carries the hex SHA-256 on each data object.
pub const SHA256_METADATA: &str = "sha256";

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The name the file is stored under (`name (1).ext` after a conflict).
    pub name: String,
    /// New object or the same bytes found already stored.
    pub outcome: Outcome,
}

/// Whether a put stored new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The bytes went up and were verified.
    Stored,
    /// The same bytes were already stored under this name; nothing was sent.
    AlreadyStored,
}

/// Whose data key a fill writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// A name this put just claimed: nothing may exist under it.
    Fresh,
    /// A name whose record holds these same bytes (or `--overwrite`).
    Replace,
}

/// Outcome of trying to claim one candidate name.
enum Claim {
    /// The record was created by this put.
    Won,
    /// A record exists; `None` if it cannot be parsed (treated as foreign).
    Held(Option<Record>),
    /// The record vanished between the create and the read; try again.
    Vanished,
}

impl Store {
    /// Puts the local `file` (read from its start; the session passes its
    /// finished partial), already verified to have `sha256` and `size`, under
    /// `name` or the first free `name (n).ext`; with `overwrite`, under `name`
    /// whatever was there. Returns only once the store holds the verified bytes.
    pub async fn put_file(
        &self,
        file: std::fs::File,
        name: &str,
        sha256: [u8; 32],
        size: u64,
        overwrite: bool,
    ) -> Result<Put, StoreError> {
        validate_store_name(name)?;
        let want = Record::pending(sha256, size);
        let file = &mut Local {
            file: tokio::fs::File::from_std(file),
            label: format!("the local copy of '{name}'"),
        };
        if overwrite {
            self.write_record(name, &want).await?;
            self.fill(name, file, &want, Fill::Replace).await?;
            return Ok(Put {
                name: name.to_string(),
                outcome: Outcome::Stored,
            });
        }
        let mut n = 0;
        // Each try either moves to the next variant or retries a vanished record,
        // so twice the variant limit bounds the loop.
        for _ in 0..2 * MAX_UNIQUE_TRIES {
            if n > MAX_UNIQUE_TRIES {
                break;
            }
            let candidate = if n == 0 {
                name.to_string()
            } else {
                unique_variant(name, n)
            };
            match self.claim(&candidate, &want).await? {
                Claim::Won => {
                    let existing = match self.object_size(&candidate).await {
                        Ok(existing) => existing,
                        Err(e) => {
                            self.release(&candidate).await;
                            return Err(e);
                        }
                    };
                    if existing.is_some() {
                        // Bytes put there by something other than up-srv: leave them.
                        self.release(&candidate).await;
                        n += 1;
                        continue;
                    }
                    self.fill(&candidate, file, &want, Fill::Fresh).await?;
                    return Ok(stored(candidate, Outcome::Stored));
                }
                Claim::Held(Some(rec)) if rec.same_content(&want) => {
                    if rec.state == State::Stored
                        && self.object_size(&candidate).await? == Some(size)
                    {
                        return Ok(stored(candidate, Outcome::AlreadyStored));
                    }
                    self.fill(&candidate, file, &want, Fill::Replace).await?;
                    return Ok(stored(candidate, Outcome::Stored));
                }
                Claim::Held(_) => n += 1,
                Claim::Vanished => {}
            }
        }
        Err(StoreError::NoFreeName {
            name: name.to_string(),
            tries: MAX_UNIQUE_TRIES,
        })
    }

    /// Creates the record of `name` unless one exists.
    async fn claim(&self, name: &str, want: &Record) -> Result<Claim, StoreError> {
        let key = self.record_key(name)?;
        let created = self
            .s3
            .put_opts(&key, want.to_bytes().into(), PutMode::Create.into())
            .await;
        match created {
            Ok(_) => Ok(Claim::Won),
            Err(object_store::Error::AlreadyExists { .. }) => match self.record(name).await {
                Ok(Some(rec)) => Ok(Claim::Held(Some(rec))),
                Ok(None) => Ok(Claim::Vanished),
                Err(StoreError::BadRecord { .. }) => Ok(Claim::Held(None)),
                Err(e) => Err(e),
            },
            Err(e) => Err(unavailable("claiming", &key, e)),
        }
    }

    /// Removes a record this put created (best effort).
    async fn release(&self, name: &str) {
        if let Ok(key) = self.record_key(name) {
            if let Err(e) = self.s3.delete(&key).await {
                tracing::warn!(%key, "cannot remove the claim after a failed put: {e}");
            }
        }
    }

    /// Overwrites the record of `name`.
    pub(super) async fn write_record(&self, name: &str, rec: &Record) -> Result<(), StoreError> {
        let key = self.record_key(name)?;
        self.s3
            .put(&key, rec.to_bytes().into())
            .await
            .map(drop)
            .map_err(|e| unavailable("recording", &key, e))
    }

    /// Puts the data, verifies it and marks the record stored; on failure of a
    /// fresh claim removes what this put created.
    async fn fill(
        &self,
        name: &str,
        file: &mut Local,
        want: &Record,
        mode: Fill,
    ) -> Result<(), StoreError> {
        let key = self.data_key(name)?;
        let result = async {
            if want.size <= PART_SIZE as u64 {
                self.put_single(&key, file, want, mode).await?;
            } else {
                self.put_multipart(&key, file, want).await?;
            }
            self.verify_object(&key, name, want).await?;
            self.write_record(name, &want.stored()).await
        }
        .await;
        if let Err(e) = &result {
            if mode == Fill::Fresh {
                // A foreign object that appeared under the name is not ours to remove.
                if !matches!(e, StoreError::Name { .. }) {
                    if let Err(e) = self.s3.delete(&key).await {
                        tracing::warn!(%key, "cannot remove the data after a failed put: {e}");
                    }
                }
                self.release(name).await;
            }
        }
        result
    }

    /// One PUT of a file of at most [`PART_SIZE`] bytes.
    async fn put_single(
        &self,
        key: &Path,
        file: &mut Local,
        want: &Record,
        mode: Fill,
    ) -> Result<(), StoreError> {
        let _buffer = self.parts.acquire().await;
        let mut bytes = Vec::with_capacity(want.size as usize);
        file.rewind().await?;
        let read = file.file.read_to_end(&mut bytes).await;
        read.map_err(|e| file.error(e))?;
        let digest = Sha256::digest(&bytes).into();
        check_local(&file.label, want, bytes.len() as u64, digest)?;
        let opts = PutOptions {
            mode: match mode {
                Fill::Fresh => PutMode::Create,
                Fill::Replace => PutMode::Overwrite,
            },
            attributes: digest_attributes(want),
            ..Default::default()
        };
        match self.s3.put_opts(key, Bytes::from(bytes).into(), opts).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::Name {
                name: key.to_string(),
                reason: "an object not written by up-srv appeared under this name".to_string(),
            }),
            Err(e) => Err(unavailable("putting", key, e)),
        }
    }

    /// A multipart upload; aborted on any failure.
    async fn put_multipart(
        &self,
        key: &Path,
        file: &mut Local,
        want: &Record,
    ) -> Result<(), StoreError> {
        let opts = PutMultipartOptions {
            attributes: digest_attributes(want),
            ..Default::default()
        };
        let mut upload = self
            .s3
            .put_multipart_opts(key, opts)
            .await
            .map_err(|e| unavailable("starting a multipart upload of", key, e))?;
        let mut result = self.send_parts(upload.as_mut(), key, file, want).await;
        if result.is_ok() {
            result = upload
                .complete()
                .await
                .map(drop)
                .map_err(|e| unavailable("completing the multipart upload of", key, e));
        }
        if result.is_err() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(%key, "cannot abort the multipart upload (a bucket lifecycle rule removes it later): {e}");
            }
        }
        result
    }

    /// Reads `file` in parts, hashing it again, and sends them with bounded
    /// buffers; fails unless the bytes read are exactly the verified ones.
    async fn send_parts(
        &self,
        upload: &mut dyn MultipartUpload,
        key: &Path,
        file: &mut Local,
        want: &Record,
    ) -> Result<(), StoreError> {
        file.rewind().await?;
        let mut hasher = Sha256::new();
        let mut read = 0u64;
        let mut in_flight = FuturesUnordered::new();
        loop {
            let permit = self
                .parts
                .clone()
                .acquire_owned()
                .await
                .expect("the part semaphore is never closed");
            let mut buf = BytesMut::with_capacity(PART_SIZE);
            while buf.len() < PART_SIZE {
                if file
                    .file
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| file.error(e))?
                    == 0
                {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            let full = buf.len() == PART_SIZE;
            read += buf.len() as u64;
            if read > want.size {
                return Err(changed(
                    &file.label,
                    format!("longer than the verified {} bytes", want.size),
                ));
            }
            hasher.update(&buf);
            let part = upload.put_part(PutPayload::from(buf.freeze()));
            in_flight.push(async move {
                let sent = part.await;
                drop(permit);
                sent
            });
            while in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(sent) = in_flight.next().await {
                    sent.map_err(|e| unavailable("putting a part of", key, e))?;
                }
            }
            if !full {
                break;
            }
        }
        while let Some(sent) = in_flight.next().await {
            sent.map_err(|e| unavailable("putting a part of", key, e))?;
        }
        check_local(&file.label, want, read, hasher.finalize().into())
    }

    /// Proves the object under `key` holds `want`'s bytes.
    async fn verify_object(&self, key: &Path, name: &str, want: &Record) -> Result<(), StoreError> {
        let (size, sha256) = match self.verification {
            // The store checked every request's SHA-256; the size proves no part is missing.
            Verification::ServerChecksum => (self.object_size(name).await?, None),
            Verification::ReadBack => {
                let (size, sha256) = self.hash_object(key).await?;
                (Some(size), Some(sha256))
            }
        };
        let corrupt = |detail| StoreError::Corrupt {
            name: name.to_string(),
            detail,
        };
        match size {
            None => return Err(corrupt("gone right after the put".to_string())),
            Some(s) if s != want.size => {
                return Err(corrupt(format!("{s} bytes, expected {}", want.size)))
            }
            Some(_) => {}
        }
        match sha256 {
            Some(d) if d != want.sha256 => Err(corrupt(format!(
                "sha256 {}, expected {}",
                hex(&d),
                want.sha256_hex()
            ))),
            _ => Ok(()),
        }
    }
}

/// A successful put.
fn stored(name: String, outcome: Outcome) -> Put {
    Put { name, outcome }
}

/// The digest as user metadata on the data object.
fn digest_attributes(want: &Record) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(
        Attribute::Metadata(SHA256_METADATA.into()),
        want.sha256_hex().into(),
    );
    attributes
}

/// The local file being put, read from its start by each attempt.
struct Local {
    file: tokio::fs::File,
    label: String,
}

impl Local {
    async fn rewind(&mut self) -> Result<(), StoreError> {
        match self.file.seek(std::io::SeekFrom::Start(0)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, source: std::io::Error) -> StoreError {
        StoreError::Local {
            path: self.label.clone(),
            source,
        }
    }
}

/// Fails unless what was read from `file` is the verified size and digest.
fn check_local(file: &str, want: &Record, size: u64, sha256: [u8; 32]) -> Result<(), StoreError> {
    if size != want.size {
        return Err(changed(
            file,
            format!("{size} bytes, verified {}", want.size),
        ));
    }
    if sha256 != want.sha256 {
        return Err(changed(
            file,
            format!("sha256 {}, verified {}", hex(&sha256), want.sha256_hex()),
        ));
    }
    Ok(())
}

fn changed(file: &str, detail: String) -> StoreError {
    StoreError::LocalChanged {
        path: file.to_string(),
        detail,
    }
}
