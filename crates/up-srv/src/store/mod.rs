//! Finished uploads kept in S3-compatible object storage instead of the upload dir.
//!
//! With `--store s3://BUCKET/PREFIX` the session still receives into a local
//! partial (so resume works as on disk) and, once the file is complete and its
//! SHA-256 verified, hands it to [`Store::put_file`]; the client hears `stored`
//! only after the store acknowledged and the store copy was verified. The
//! endpoint, region and credentials come from the standard `AWS_*` environment
//! variables (`AWS_ENDPOINT_URL` for an S3-compatible server), never from the
//! command line, through the `object_store` crate.
//!
//! Layout in the bucket, below `PREFIX`:
//!
//! ```text
//! <name>                       the file's bytes (x-amz-meta-sha256 carries the digest)
//! .up-srv/records/<name>       its record: digest, size, pending|stored (record.rs)
//! ```
//!
//! The record is created with `If-None-Match: *` before the data goes up, so it is
//! the claim that keeps several up-srv nodes sharing one bucket from clobbering
//! each other (the loser takes `name (1).ext`), and it is what any node reads to
//! answer reruns, `ls` and `get`.
//!
//! [`Store::connect`] probes the server once: a store that ignores
//! `If-None-Match: *` is refused (two nodes could overwrite each other), and a
//! store that accepts a wrong `x-amz-checksum-sha256` gets every put verified by
//! reading the object back instead.
//!
//! - [`record`]: the record format.
//! - [`put`]: claim, single or multipart put, verification, record.
//! - [`read`]: record lookup, listing, verified download.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, Checksum, S3ConditionalPut};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, PutMode, RetryConfig};
use tokio::sync::Semaphore;

pub mod put;
pub mod read;
pub mod record;

pub use put::{Outcome, Put};
pub use read::{Download, Listed};
pub use record::{Record, State};

/// First path component reserved for up-srv's own objects below the prefix.
pub const RESERVED_DIR: &str = ".up-srv";

/// Where records live below the prefix.
const RECORDS_DIR: &str = ".up-srv/records";

/// Where the capability probe writes its throw-away objects.
const PROBES_DIR: &str = ".up-srv/probes";

/// Files up to this size go up in one PUT; larger ones as multipart uploads in
/// parts of this size (S3 needs at least 5 MiB per part but the last).
pub const PART_SIZE: usize = 8 << 20;

/// Parts of one multipart upload in flight at once.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Default for [`StoreOptions::max_buffered_parts`]: at most this many part
/// buffers ([`PART_SIZE`] each) are held by all uploads of one up-srv together,
/// so 64 concurrent uploads cannot take gigabytes of memory.
pub const DEFAULT_MAX_BUFFERED_PARTS: usize = 16;

/// Tuning that is not configuration of the store itself (that is `AWS_*`).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Retries with exponential backoff for each request that may be retried.
    pub retry: RetryConfig,
    /// Deadline for the TCP (and TLS) connect to the store.
    pub connect_timeout: Duration,
    /// Deadline for one request, a part of up to [`PART_SIZE`] included.
    pub request_timeout: Duration,
    /// Part buffers held by all uploads together.
    pub max_buffered_parts: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retry: RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
            },
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(120),
            max_buffered_parts: DEFAULT_MAX_BUFFERED_PARTS,
        }
    }
}

/// How a put is proven to have landed intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// The store checks the `x-amz-checksum-sha256` sent with every PUT and part.
    ServerChecksum,
    /// The store ignores checksums, so each object is read back and hashed.
    ReadBack,
}

/// Store failures. [`StoreError::is_unavailable`] tells the session which ones
/// mean "try again later" (the partial is kept for resume).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `--store` is not `s3://BUCKET[/PREFIX]`.
    #[error("bad store location '{url}': {reason} (expected s3://BUCKET/PREFIX)")]
    Location {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `AWS_*` settings do not make a usable client.
    #[error(
        "cannot set up the S3 client for {url}: {source} (check the AWS_* environment variables)"
    )]
    Config {
        /// The store location.
        url: String,
        /// The client's complaint.
        source: object_store::Error,
    },
    /// The store accepted a second `If-None-Match: *` create of one key.
    #[error("store {url} ignores If-None-Match: *, so up-srv nodes sharing it could overwrite each other's files (use a store with conditional writes: AWS S3, MinIO, Ceph RGW, R2)")]
    NoConditionalWrites {
        /// The store location.
        url: String,
    },
    /// The store could not be reached, refused, or failed the request after retries.
    #[error("store unavailable while {op} '{key}': {source}")]
    Unavailable {
        /// What was being done (`"putting"`, `"reading"`, ...).
        op: &'static str,
        /// The object key involved.
        key: String,
        /// The client's error, with the retries it made.
        source: object_store::Error,
    },
    /// The name is not stored.
    #[error("'{name}' is not in the store")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The store's copy does not match its recorded digest or size.
    #[error("store copy of '{name}' does not match its record: {detail}")]
    Corrupt {
        /// The name involved.
        name: String,
        /// Expected and actual digest or size.
        detail: String,
    },
    /// The record of a name cannot be parsed.
    #[error("record of '{name}' in the store is unreadable: {source}")]
    BadRecord {
        /// The name involved.
        name: String,
        /// What is wrong with it.
        source: record::RecordError,
    },
    /// The local file no longer matches the digest it was verified with.
    #[error("local file {path} changed after it was verified ({detail}); nothing was stored")]
    LocalChanged {
        /// The local file.
        path: String,
        /// Size or digest difference.
        detail: String,
    },
    /// The local file could not be read.
    #[error("cannot read {path}: {source}")]
    Local {
        /// The local file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The name is not acceptable as an object key.
    #[error("name '{name}' cannot be stored: {reason}")]
    Name {
        /// The name given.
        name: String,
        /// Why not.
        reason: String,
    },
    /// Every `name (n).ext` up to the limit is taken.
    #[error("no free name for '{name}' after {tries} tries")]
    NoFreeName {
        /// The name given.
        name: String,
        /// How many variants were tried.
        tries: u32,
    },
}

impl StoreError {
    /// True when the store itself failed (unreachable, refusing, timing out): the
    /// upload should be refused as "try again later" and its partial kept.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }
}

/// Shorthand for a failed store request.
pub(crate) fn unavailable(op: &'static str, key: &Path, source: object_store::Error) -> StoreError {
    StoreError::Unavailable {
        op,
        key: key.to_string(),
        source,
    }
}

/// A bucket (and prefix) of an S3-compatible store; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Store {
    s3: Arc<AmazonS3>,
    prefix: String,
    url: String,
    verification: Verification,
    parts: Arc<Semaphore>,
}

impl Store {
    /// Connects to `url` (`s3://BUCKET[/PREFIX]`) with the `AWS_*` variables of
    /// this process and probes what the store checks (see the module docs).
    pub async fn connect(url: &str, options: StoreOptions) -> Result<Self, StoreError> {
        let settings = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
        Self::connect_with(url, settings, options).await
    }

    /// [`Store::connect`] with explicit `AWS_*` settings instead of the
    /// environment (tests run many stores in one process).
    pub async fn connect_with(
        url: &str,
        settings: impl IntoIterator<Item = (String, String)>,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        let (bucket, prefix) = parse_location(url)?;
        let settings: Vec<(AmazonS3ConfigKey, String)> = settings
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_ascii_lowercase().parse().ok()?, v)))
            .collect();
        let config_error = |source| StoreError::Config {
            url: url.to_string(),
            source,
        };
        let s3 = builder(&bucket, &settings, &options, None)
            .build()
            .map_err(config_error)?;
        let mut store = Store {
            s3: Arc::new(s3),
            prefix,
            url: url.to_string(),
            verification: Verification::ReadBack,
            parts: Arc::new(Semaphore::new(options.max_buffered_parts.max(1))),
        };
        let liar = builder(&bucket, &settings, &options, Some(wrong_checksum_headers()))
            .build()
            .map_err(config_error)?;
        store.verification = store.probe(&liar).await?;
        Ok(store)
    }

    /// The location this store was opened with, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How puts are verified on this store (found by the probe).
    pub fn verification(&self) -> Verification {
        self.verification
    }

    /// Key of the data object for `name` (a name [`validate_store_name`] accepted,
    /// kept literally: no percent-encoding, so other S3 tools see the same name).
    fn data_key(&self, name: &str) -> Result<Path, StoreError> {
        let joined = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        };
        Path::parse(&joined).map_err(|e| StoreError::Name {
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    /// Key of the record for `name`.
    fn record_key(&self, name: &str) -> Result<Path, StoreError> {
        self.data_key(&format!("{RECORDS_DIR}/{name}"))
    }

    /// Writes a probe object twice with `If-None-Match: *`, then once with a
    /// wrong checksum through `liar`, and removes what it wrote.
    async fn probe(&self, liar: &AmazonS3) -> Result<Verification, StoreError> {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let key = self.data_key(&format!("{PROBES_DIR}/{unique}"))?;
        let sum_key = self.data_key(&format!("{PROBES_DIR}/{unique}-sum"))?;
        let create = || {
            self.s3
                .put_opts(&key, "probe".into(), PutMode::Create.into())
        };
        create()
            .await
            .map_err(|e| unavailable("probing", &key, e))?;
        let second = create().await;
        let lied = liar.put(&sum_key, "probe".into()).await;
        let _ = self.s3.delete(&key).await;
        let _ = self.s3.delete(&sum_key).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => {}
            Ok(_) => {
                return Err(StoreError::NoConditionalWrites {
                    url: self.url.clone(),
                })
            }
            Err(e) => return Err(unavailable("probing", &key, e)),
        }
        Ok(match lied {
            Ok(_) => Verification::ReadBack,
            Err(_) => Verification::ServerChecksum,
        })
    }
}

/// Splits `s3://BUCKET[/PREFIX]` into the bucket and a prefix without the
/// leading or trailing `/`.
fn parse_location(url: &str) -> Result<(String, String), StoreError> {
    let bad = |reason| StoreError::Location {
        url: url.to_string(),
        reason,
    };
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| bad("not an s3:// URL"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(bad("no bucket name"));
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad("bucket names hold only a-z, 0-9, '-' and '.'"));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        Path::parse(prefix).map_err(|_| {
            bad("the prefix holds an empty, '.' or '..' component or a control character")
        })?;
        if prefix.split('/').any(|c| c == RESERVED_DIR) {
            return Err(bad("'.up-srv' is reserved for up-srv's records"));
        }
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

/// The S3 client: `AWS_*` settings, then what up-srv relies on (conditional
/// creates, SHA-256 checksums, retries) on top.
fn builder(
    bucket: &str,
    settings: &[(AmazonS3ConfigKey, String)],
    options: &StoreOptions,
    default_headers: Option<object_store::HeaderMap>,
) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::new();
    let mut plain_http = false;
    for (key, value) in settings {
        if *key == AmazonS3ConfigKey::Endpoint && value.starts_with("http://") {
            plain_http = true;
        }
        b = b.with_config(*key, value.clone());
    }
    let mut client = ClientOptions::new()
        .with_connect_timeout(options.connect_timeout)
        .with_timeout(options.request_timeout)
        // An http:// endpoint was asked for explicitly in AWS_ENDPOINT_URL.
        .with_allow_http(plain_http);
    b = b.with_bucket_name(bucket).with_retry(options.retry.clone());
    b = match default_headers {
        Some(headers) => {
            client = client.with_default_headers(headers);
            b
        }
        None => b.with_checksum_algorithm(Checksum::SHA256),
    };
    b.with_client_options(client)
        .with_conditional_put(S3ConditionalPut::ETagMatch)
}

/// Headers announcing a SHA-256 that no probe body has: a store that checks
/// checksums refuses the put.
fn wrong_checksum_headers() -> object_store::HeaderMap {
    let mut headers = object_store::HeaderMap::new();
    // base64 of 32 zero bytes.
    let zero =
        object_store::HeaderValue::from_static("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
    headers.insert("x-amz-checksum-sha256", zero);
    headers.insert(
        "x-amz-sdk-checksum-algorithm",
        object_store::HeaderValue::from_static("SHA256"),
    );
    headers
}

/// Refuses names the store cannot hold or that land in up-srv's own objects.
pub fn validate_store_name(name: &str) -> Result<(), StoreError> {
    let refuse = |reason: String| StoreError::Name {
        name: name.to_string(),
        reason,
    };
    crate::storage::validate_name(name).map_err(|e| refuse(e.to_string()))?;
    if name.split('/').next() == Some(RESERVED_DIR) {
        return Err(refuse(format!(
            "names starting with '{RESERVED_DIR}' are reserved for up-srv's records"
        )));
    }
    Path::parse(name).map_err(|e| refuse(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_into_bucket_and_prefix() {
        assert_eq!(parse_location("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_location("s3://b/").unwrap(), ("b".into(), "".into()));
        assert_eq!(
            parse_location("s3://my-bucket/up/loads/").unwrap(),
            ("my-bucket".into(), "up/loads".into())
        );
        for bad in [
            "b/x",
            "s3://",
            "s3:///x",
            "s3://B",
            "s3://b/x//y",
            "s3://b/../x",
            "s3://b/.up-srv",
            "http://b",
        ] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_and_unsafe_names_are_refused() {
        assert!(validate_store_name("a/b (1).jpg").is_ok());
        for bad in [".up-srv/records/x", ".up-srv", "../x", "a//b", "", "x\n"] {
            assert!(validate_store_name(bad).is_err(), "{bad:?}");
        }
        assert!(validate_store_name("x/.up-srv").is_ok());
    }
}
