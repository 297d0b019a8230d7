//! The S3 store against a real S3-compatible server (moto's server mode) on a
//! free loopback port: puts with verification, no clobber between two nodes,
//! reruns, listing, verified downloads, and the store cut mid-put.

// Test code: a failed unwrap is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
mod s3;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::{BackoffConfig, RetryConfig};
use proto::upload::PUT_VERSION;
use s3::{create_bucket, settings, CutProxy, S3Server};
use sha2::{Digest as _, Sha256};
use up_srv::store::{Outcome, State, Store, StoreError, StoreOptions, PART_SIZE};

/// Every test await is bounded by this, so a hang fails fast.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("test step timed out")
}

/// Retries kept short so a cut store fails the put within seconds.
fn quick() -> StoreOptions {
    StoreOptions {
        retry: RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(200),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: Duration::from_secs(3),
        },
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(30),
        ..StoreOptions::default()
    }
}

async fn open(endpoint: &str, url: &str) -> Store {
    within(Store::connect_with(url, settings(endpoint), quick()))
        .await
        .expect("connecting to the store")
}

/// A file of `len` pseudo-random bytes (seeded) and its digest.
fn make_file(dir: &Path, name: &str, len: usize, seed: u8) -> (PathBuf, [u8; 32]) {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, &bytes).expect("writing a test file");
    (path, Sha256::digest(&bytes).into())
}

fn fopen(path: &Path) -> std::fs::File {
    std::fs::File::open(path).expect("opening a test file")
}

async fn downloaded(store: &Store, name: &str) -> Vec<u8> {
    let d = within(store.download(name, 0)).await.expect("download");
    within(collect(d.bytes)).await.expect("download bytes")
}

/// All bytes of a download stream, or its first error.
async fn collect(
    mut bytes: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, StoreError>>,
) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::new();
    while let Some(chunk) = bytes.try_next().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test]
async fn put_lands_verified_with_its_record_and_lists() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads/pre/fix").await;
    let tmp = tempfile::tempdir().unwrap();
    let (file, digest) = make_file(tmp.path(), "a", 100 * 1024, 1);
    let (empty, empty_digest) = make_file(tmp.path(), "e", 0, 0);

    let put = within(store.put_file(fopen(&file), "dir/photo.jpg", digest, 100 * 1024, false))
        .await
        .unwrap();
    assert_eq!(
        (put.name.as_str(), put.outcome),
        ("dir/photo.jpg", Outcome::Stored)
    );
    let put = within(store.put_file(fopen(&empty), "empty", empty_digest, 0, false))
        .await
        .unwrap();
    assert_eq!(put.outcome, Outcome::Stored);

    assert_eq!(
        downloaded(&store, "dir/photo.jpg").await,
        std::fs::read(&file).unwrap()
    );
    assert_eq!(downloaded(&store, "empty").await, Vec::<u8>::new());
    let rec = within(store.stored("dir/photo.jpg"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.sha256, rec.size, rec.state),
        (digest, 100 * 1024, State::Stored)
    );

    let listed = within(store.list("")).await.unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|l| (l.name.as_str(), l.sha256, l.size))
        .collect();
    assert_eq!(
        names,
        [
            ("dir/photo.jpg", digest, 100 * 1024),
            ("empty", empty_digest, 0)
        ]
    );
    assert_eq!(within(store.list("dir/")).await.unwrap().len(), 1);
    assert!(within(store.list("nothing")).await.unwrap().is_empty());

    // A second node (another Store on the same bucket) answers for the same files.
    let other = open(&server.endpoint(), "s3://uploads/pre/fix/").await;
    assert_eq!(within(other.list("")).await.unwrap(), listed);
    assert!(within(other.stored("missing")).await.unwrap().is_none());
}

#[tokio::test]
async fn rerun_of_the_same_bytes_stores_nothing_new() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads").await;
    let tmp = tempfile::tempdir().unwrap();
    let (a, da) = make_file(tmp.path(), "a", 4096, 2);
    let (b, db) = make_file(tmp.path(), "b", 4096, 3);

    let first = within(store.put_file(fopen(&a), "x.txt", da, 4096, false))
        .await
        .unwrap();
    let again = within(store.put_file(fopen(&a), "x.txt", da, 4096, false))
        .await
        .unwrap();
    assert_eq!(
        (first.outcome, again.outcome),
        (Outcome::Stored, Outcome::AlreadyStored)
    );
    assert_eq!(again.name, "x.txt");

    // Different bytes under a taken name get the next free name; their rerun finds it.
    let other = within(store.put_file(fopen(&b), "x.txt", db, 4096, false))
        .await
        .unwrap();
    assert_eq!(
        (other.name.as_str(), other.outcome),
        ("x (1).txt", Outcome::Stored)
    );
    let other_again = within(store.put_file(fopen(&b), "x.txt", db, 4096, false))
        .await
        .unwrap();
    assert_eq!(
        (other_again.name.as_str(), other_again.outcome),
        ("x (1).txt", Outcome::AlreadyStored)
    );
    let names: Vec<_> = within(store.list(""))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.name)
        .collect();
    assert_eq!(names, ["x (1).txt", "x.txt"]);

    // --overwrite replaces in place.
    let over = within(store.put_file(fopen(&b), "x.txt", db, 4096, true))
        .await
        .unwrap();
    assert_eq!(
        (over.name.as_str(), over.outcome),
        ("x.txt", Outcome::Stored)
    );
    assert_eq!(
        downloaded(&store, "x.txt").await,
        std::fs::read(&b).unwrap()
    );
}

#[tokio::test]
async fn two_nodes_putting_one_name_at_once_never_clobber() {
    let server = S3Server::start();
    create_bucket(server.addr, "shared").await;
    let node_a = open(&server.endpoint(), "s3://shared/up").await;
    let node_b = open(&server.endpoint(), "s3://shared/up").await;
    let tmp = tempfile::tempdir().unwrap();
    let mut puts = Vec::new();
    for i in 0..6u8 {
        let (file, digest) = make_file(tmp.path(), &format!("f{i}"), 50_000, 10 + i);
        let node = if i % 2 == 0 {
            node_a.clone()
        } else {
            node_b.clone()
        };
        puts.push(tokio::spawn(async move {
            let put = node
                .put_file(fopen(&file), "same.bin", digest, 50_000, false)
                .await;
            (put, digest)
        }));
    }
    let mut names = Vec::new();
    for p in puts {
        let (put, digest) = within(p).await.unwrap();
        let put = put.expect("every concurrent put succeeds under some name");
        assert_eq!(put.outcome, Outcome::Stored);
        let rec = within(node_a.stored(&put.name)).await.unwrap().unwrap();
        assert_eq!(rec.sha256, digest, "{} holds another put's bytes", put.name);
        assert_eq!(
            within(node_b.verify(&put.name)).await.unwrap().sha256,
            digest
        );
        names.push(put.name);
    }
    names.sort();
    let mut expected: Vec<String> = std::iter::once("same.bin".to_string())
        .chain((1..6).map(|n| format!("same ({n}).bin")))
        .collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn large_file_goes_up_in_parts_and_verifies() {
    let server = S3Server::start();
    create_bucket(server.addr, "big").await;
    let store = open(&server.endpoint(), "s3://big").await;
    let tmp = tempfile::tempdir().unwrap();
    let len = 2 * PART_SIZE + 12_345;
    let (file, digest) = make_file(tmp.path(), "big", len, 4);
    let put = within(store.put_file(fopen(&file), "big.iso", digest, len as u64, false))
        .await
        .unwrap();
    assert_eq!(put.outcome, Outcome::Stored);
    assert_eq!(
        within(store.verify("big.iso")).await.unwrap().sha256,
        digest
    );

    // A download resumed at an offset still checks the whole object.
    let d = within(store.download("big.iso", PART_SIZE as u64 + 7))
        .await
        .unwrap();
    let tail = within(collect(d.bytes)).await.unwrap();
    assert_eq!(&tail[..], &std::fs::read(&file).unwrap()[PART_SIZE + 7..]);
}

#[tokio::test]
async fn a_local_file_that_changed_after_verification_is_not_stored() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads").await;
    let tmp = tempfile::tempdir().unwrap();
    let (small, _) = make_file(tmp.path(), "s", 1000, 5);
    let (big, _) = make_file(tmp.path(), "b", PART_SIZE + 1, 6);
    for (file, len) in [(small, 1000u64), (big, PART_SIZE as u64 + 1)] {
        let err = within(store.put_file(fopen(&file), "f", [9; 32], len, false))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::LocalChanged { .. }), "{err}");
        assert!(!err.is_unavailable());
    }
    assert!(within(store.list("")).await.unwrap().is_empty());
    // The claims were released: the name is free for the right bytes.
    assert!(within(store.record("f")).await.unwrap().is_none());
}

#[tokio::test]
async fn store_cut_mid_put_is_unavailable_and_the_rerun_completes() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let proxy = CutProxy::start(server.addr).await;
    let store = open(&proxy.endpoint(), "s3://uploads").await;
    let tmp = tempfile::tempdir().unwrap();
    let len = 3 * PART_SIZE;
    let (file, digest) = make_file(tmp.path(), "f", len, 7);

    proxy.cut_after(PART_SIZE as u64 + 1000);
    let err = within(store.put_file(fopen(&file), "cut.bin", digest, len as u64, false))
        .await
        .unwrap_err();
    within(proxy.wait_cut()).await;
    assert!(err.is_unavailable(), "{err}");
    proxy.restore();
    // Nothing reported stored that the store does not hold.
    assert!(within(store.stored("cut.bin")).await.unwrap().is_none());
    assert!(within(store.list("")).await.unwrap().is_empty());

    let rerun = within(store.put_file(fopen(&file), "cut.bin", digest, len as u64, false))
        .await
        .unwrap();
    assert_eq!(
        (rerun.name.as_str(), rerun.outcome),
        ("cut.bin", Outcome::Stored)
    );
    assert_eq!(
        downloaded(&store, "cut.bin").await,
        std::fs::read(&file).unwrap()
    );
}

#[tokio::test]
async fn a_pending_claim_left_by_a_cut_is_completed_by_the_same_bytes_only() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let proxy = CutProxy::start(server.addr).await;
    let store = open(&proxy.endpoint(), "s3://uploads").await;
    let direct = open(&server.endpoint(), "s3://uploads").await;
    let tmp = tempfile::tempdir().unwrap();
    let (file, digest) = make_file(tmp.path(), "f", 3000, 8);
    let (other, other_digest) = make_file(tmp.path(), "o", 3000, 9);

    // Let the claim (a small record PUT) through, cut the data PUT after it, so
    // the release fails too and a pending record is left behind.
    proxy.cut_after(1500);
    let err = within(store.put_file(fopen(&file), "p.txt", digest, 3000, false))
        .await
        .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    within(proxy.wait_cut()).await;
    proxy.restore();
    let left = within(direct.record("p.txt")).await.unwrap();
    assert_eq!(left.map(|r| r.state), Some(State::Pending));
    assert!(within(direct.stored("p.txt")).await.unwrap().is_none());
    let put = within(direct.put_file(fopen(&other), "p.txt", other_digest, 3000, false))
        .await
        .unwrap();
    let rerun = within(direct.put_file(fopen(&file), "p.txt", digest, 3000, false))
        .await
        .unwrap();
    // Other bytes may not take the pending name; the same bytes complete it.
    assert_eq!(
        (put.name.as_str(), rerun.name.as_str()),
        ("p (1).txt", "p.txt")
    );
    assert_eq!(
        within(direct.verify(&rerun.name)).await.unwrap().sha256,
        digest
    );
}

#[tokio::test]
async fn a_flipped_byte_in_the_store_fails_the_download() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads/p").await;
    let tmp = tempfile::tempdir().unwrap();
    let (file, digest) = make_file(tmp.path(), "f", 10_000, 11);
    within(store.put_file(fopen(&file), "rot.bin", digest, 10_000, false))
        .await
        .unwrap();

    // Edit the object behind up-srv's back.
    let mut bytes = std::fs::read(&file).unwrap();
    bytes[5000] ^= 1;
    let raw = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(server.endpoint())
        .with_allow_http(true)
        .with_bucket_name("uploads")
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    let key = object_store::path::Path::parse("p/rot.bin").unwrap();
    object_store::ObjectStore::put(&raw, &key, bytes.into())
        .await
        .unwrap();

    let err = within(store.verify("rot.bin")).await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    let d = within(store.download("rot.bin", 0)).await.unwrap();
    let err = within(collect(d.bytes)).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its record"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_store_is_a_clear_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let err = within(Store::connect_with(
        "s3://uploads",
        settings(&endpoint),
        quick(),
    ))
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    assert!(err.to_string().contains("store unavailable"), "{err}");
}

#[tokio::test]
async fn a_missing_bucket_or_bad_location_is_refused_at_connect() {
    let server = S3Server::start();
    let err = within(Store::connect_with(
        "s3://nope",
        settings(&server.endpoint()),
        quick(),
    ))
    .await
    .unwrap_err();
    assert!(err.is_unavailable(), "{err}");
    let err = within(Store::connect_with(
        "up",
        settings(&server.endpoint()),
        quick(),
    ))
    .await
    .unwrap_err();
    assert!(matches!(err, StoreError::Location { .. }), "{err}");
}

#[tokio::test]
async fn a_store_that_ignores_conditional_writes_is_refused_at_connect() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let proxy = CutProxy::start_ignoring_conditions(server.addr).await;
    let err = within(Store::connect_with(
        "s3://uploads",
        settings(&proxy.endpoint()),
        quick(),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err, StoreError::NoConditionalWrites { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("If-None-Match"), "{err}");
}

#[tokio::test]
async fn the_probe_finds_how_puts_are_verified() {
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads").await;
    // moto 5 accepts a wrong x-amz-checksum-sha256, so every put is read back.
    assert_eq!(store.verification(), up_srv::store::Verification::ReadBack);
}

/// An in-process up-srv whose finished files go into `store`.
async fn up_srv_on(store: &Store) -> common::TestServer {
    let store = store.clone();
    common::start_server_with(move |c| {
        c.store = Some(store);
        c.allow_get = true;
    })
    .await
}

#[tokio::test]
async fn up_srv_reports_stored_only_once_the_store_holds_the_file() {
    use proto::upload::ServerMessage;
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads/node").await;
    let srv = up_srv_on(&store).await;
    let data = common::data(300_000, 21);

    let mut client = common::Client::connect_welcomed_as(srv.addr, PUT_VERSION - 1).await;
    let answer = within(client.upload("pics/a.jpg", &data)).await;
    assert!(
        matches!(&answer, ServerMessage::Stored { name, .. } if name == "pics/a.jpg"),
        "{answer:?}"
    );
    // Nothing under the upload dir: no final file, no partial left.
    assert!(srv.stored().is_empty(), "{:?}", srv.stored());
    assert!(srv.partials().is_empty(), "{:?}", srv.partials());
    assert_eq!(
        within(store.verify("pics/a.jpg")).await.unwrap().sha256,
        common::sha256(&data)
    );

    // A rerun hears the recorded digest from the store before sending anything.
    let mut again = common::Client::connect_welcomed_as(srv.addr, PUT_VERSION - 1).await;
    let answer = within(again.offer("pics/a.jpg", data.len() as u64)).await;
    assert!(
        matches!(answer, ServerMessage::Present { sha256 } if sha256 == common::sha256(&data)),
        "{answer:?}"
    );
    srv.stop().await;
}

#[tokio::test]
async fn up_srv_with_a_store_serves_no_puts_and_refuses_blake3_saying_why() {
    use proto::upload::{ClientMessage, RefusalCode, ServerMessage};
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let store = open(&server.endpoint(), "s3://uploads").await;
    let srv = up_srv_on(&store).await;
    // The hello is answered below version 4, so a client offers every file.
    let mut client = common::Client::connect_welcomed_as(srv.addr, PUT_VERSION - 1).await;
    client
        .send(ClientMessage::Hash {
            algorithm: "blake3".into(),
        })
        .await;
    let answer = within(client.recv()).await;
    assert!(
        matches!(
            &answer,
            Some(ServerMessage::Refuse { code: RefusalCode::BadMessage, reason })
                if reason.contains("verifies SHA-256 only; upload without --hash blake3")
        ),
        "{answer:?}"
    );
    assert_eq!(within(client.recv()).await, None, "the connection closes");
    srv.stop().await;
}

#[tokio::test]
async fn up_srv_keeps_the_partial_while_the_store_is_cut_and_the_rerun_finishes() {
    use proto::upload::{RefusalCode, ServerMessage};
    let server = S3Server::start();
    create_bucket(server.addr, "uploads").await;
    let proxy = CutProxy::start(server.addr).await;
    let store = open(&proxy.endpoint(), "s3://uploads").await;
    let srv = up_srv_on(&store).await;
    let data = common::data(PART_SIZE * 2 + 99, 22);

    proxy.cut_after(PART_SIZE as u64 / 2);
    let mut client = common::Client::connect_welcomed_as(srv.addr, PUT_VERSION - 1).await;
    let answer = within(client.upload("big.bin", &data)).await;
    assert!(
        matches!(
            answer,
            ServerMessage::Refuse {
                code: RefusalCode::StoreUnavailable,
                ..
            }
        ),
        "{answer:?}"
    );
    within(proxy.wait_cut()).await;
    assert!(!srv.partials().is_empty(), "the complete partial is kept");
    proxy.restore();
    assert!(within(store.stored("big.bin")).await.unwrap().is_none());

    let answer = within(client.offer("big.bin", data.len() as u64)).await;
    let ServerMessage::Accept { offset, .. } = answer else {
        panic!("expected a resume, got {answer:?}");
    };
    assert_eq!(offset, data.len() as u64, "the server held every byte");
    let answer = within(client.body_and_finish(&data, offset, common::sha256(&data))).await;
    assert!(
        matches!(&answer, ServerMessage::Stored { name, .. } if name == "big.bin"),
        "{answer:?}"
    );
    assert!(srv.partials().is_empty());
    assert_eq!(
        within(store.verify("big.bin")).await.unwrap().sha256,
        common::sha256(&data)
    );
    srv.stop().await;
}
