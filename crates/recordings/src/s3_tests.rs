//! `S3Storage` against a real S3-compatible server (`PALISADE_TEST_S3_URL`,
//! e.g. moto); without it these are built as ignored (build.rs). Each test
//! makes a bucket of its own.

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use palisade_core::TenantId;
use uuid::Uuid;

use crate::s3::{S3Settings, S3Storage};
use crate::sealed::{self, CHUNK};
use crate::{keep, read_range, wav, ObjectKey, Storage, StorageError};

const SECRET: &str = "test-secret-5c0f1e9a";

fn settings(bucket: &str, prefix: &str) -> S3Settings {
    S3Settings {
        endpoint: std::env::var("PALISADE_TEST_S3_URL").ok(),
        bucket: bucket.into(),
        region: "us-east-1".into(),
        access_key_id: "test-key".into(),
        secret_access_key: SECRET.into(),
        prefix: prefix.into(),
        allow_http: true,
    }
}

fn new_bucket() -> String {
    format!("palisade-test-{}", Uuid::new_v4().simple())
}

/// A storage over a new bucket, and the same bucket seen whole, around it.
async fn fresh(prefix: &str) -> (S3Storage, AmazonS3) {
    let bucket = new_bucket();
    let s = settings(&bucket, prefix);
    let endpoint = s.endpoint.clone().expect("PALISADE_TEST_S3_URL");
    let store = S3Storage::new(s).unwrap();
    // moto takes any credentials, but the bucket has to exist.
    let made = reqwest13::Client::new().put(format!("{endpoint}/{bucket}")).send().await.unwrap();
    assert!(made.status().is_success(), "creating the bucket: {}", made.status());
    let raw = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test-key")
        .with_secret_access_key(SECRET)
        .with_allow_http(true)
        .build()
        .unwrap();
    (store, raw)
}

async fn all_keys(raw: &AmazonS3) -> Vec<String> {
    let mut keys: Vec<String> = raw.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
    keys.sort();
    keys
}

fn audio(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn s3_any_range_reads_back_what_was_kept() {
    let (store, raw) = fresh("recordings").await;
    for size in [1usize, 100, CHUNK as usize, CHUNK as usize + 1, 3 * CHUNK as usize + 17] {
        let plain = audio(size);
        let key = ObjectKey::new(TenantId::new(), Uuid::now_v7());
        let (file_key, n) = keep(&store, &key, &plain).await.unwrap();
        assert_eq!(n, size as u64);
        let s = size as u64;
        for (a, b) in [(0, s), (0, 1), (s - 1, s), (s / 2, s), (s / 3, s / 3 + 1), (CHUNK.min(s - 1), s)] {
            let got = read_range(&store, &key, &file_key, s, a..b).await.unwrap();
            assert_eq!(got, plain[a as usize..b as usize], "size {size} range {a}..{b}");
        }
        // Raw reads at and past the end of the sealed object: fewer bytes, then none.
        let sealed_len = raw.head(&Path::from(format!("recordings/{}", key.path()))).await.unwrap().size;
        assert_eq!(store.read(&key, sealed_len - 3, 100).await.unwrap().len(), 3);
        assert!(store.read(&key, sealed_len, 10).await.unwrap().is_empty());
        assert!(store.read(&key, sealed_len + 1000, 10).await.unwrap().is_empty());
        assert!(store.read(&key, 0, 0).await.unwrap().is_empty());
    }
}

#[tokio::test]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn s3_the_object_holds_no_plaintext_and_sits_under_its_tenant() {
    for prefix in ["", "env/recordings"] {
        let (store, raw) = fresh(prefix).await;
        let plain = wav::from_ulaw(&[0x55u8; 3000]);
        let (tenant, id) = (TenantId::new(), Uuid::now_v7());
        let key = ObjectKey::new(tenant, id);
        let (file_key, size) = keep(&store, &key, &plain).await.unwrap();
        let folder = if prefix.is_empty() { tenant.to_string() } else { format!("{prefix}/{tenant}") };
        let expected = format!("{folder}/{id}.pkr");
        assert_eq!(all_keys(&raw).await, std::slice::from_ref(&expected));
        let stored = raw.get(&Path::from(expected)).await.unwrap().bytes().await.unwrap();
        assert!(sealed::looks_sealed(&stored));
        assert!(!stored.windows(4).any(|w| w == b"RIFF"), "the WAV header is sealed too");
        assert!(!stored.windows(16).any(|w| w == &plain[100..116]));
        assert_eq!(read_range(&store, &key, &file_key, size, 0..size).await.unwrap(), plain);
    }
}

#[tokio::test]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn s3_a_missing_object_is_missing_and_delete_is_idempotent() {
    let (store, raw) = fresh("recordings").await;
    let key = ObjectKey::new(TenantId::new(), Uuid::now_v7());
    for (offset, len) in [(0, 10), (0, 0), (1000, 10)] {
        assert!(matches!(store.read(&key, offset, len).await, Err(StorageError::Missing)));
    }
    store.delete(&key).await.unwrap();
    let (file_key, size) = keep(&store, &key, b"hello").await.unwrap();
    store.delete(&key).await.unwrap();
    store.delete(&key).await.unwrap();
    assert!(all_keys(&raw).await.is_empty());
    assert!(matches!(read_range(&store, &key, &file_key, size, 0..size).await, Err(StorageError::Missing)));
}

#[tokio::test]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn s3_a_tenants_erasure_removes_its_prefix_only() {
    let (store, raw) = fresh("recordings").await;
    let (a, b) = (TenantId::new(), TenantId::new());
    for t in [a, a, b] {
        keep(&store, &ObjectKey::new(t, Uuid::now_v7()), b"x").await.unwrap();
    }
    // Keys that start with a's id as a string without being under its
    // folder, and a's folder outside the storage's prefix.
    let near = [
        format!("recordings/{a}0/x.pkr"),
        format!("recordings/{a}.pkr"),
        format!("recordings/{a}"),
        format!("{a}/x.pkr"),
        format!("other/recordings/{a}/x.pkr"),
    ];
    for k in &near {
        raw.put(&Path::from(k.as_str()), b"y".to_vec().into()).await.unwrap();
    }
    // A tenant with nothing stored: nothing goes.
    assert_eq!(store.delete_tenant(TenantId::new()).await.unwrap(), 0);
    assert_eq!(all_keys(&raw).await.len(), 3 + near.len());

    assert_eq!(store.delete_tenant(a).await.unwrap(), 2);
    let left = all_keys(&raw).await;
    assert_eq!(left.len(), 1 + near.len(), "{left:?}");
    assert!(!left.iter().any(|k| k.starts_with(&format!("recordings/{a}/"))));
    assert!(near.iter().all(|k| left.contains(k)), "{left:?}");
    assert_eq!(left.iter().filter(|k| k.starts_with(&format!("recordings/{b}/"))).count(), 1);
    assert_eq!(store.delete_tenant(a).await.unwrap(), 0);
}

#[tokio::test]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn s3_errors_never_show_the_secret() {
    // A bucket nobody made: the server refuses.
    let store = S3Storage::new(settings(&new_bucket(), "recordings")).unwrap();
    let key = ObjectKey::new(TenantId::new(), Uuid::now_v7());
    let err = store.put(&key, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(err, StorageError::Io(_)), "{err:?}");
    let text = format!("{err} {err:?}");
    assert!(!text.contains(SECRET), "{text}");
}

#[test]
fn s3_settings_and_storage_never_show_the_secret() {
    let s = settings("bucket", "recordings");
    assert!(!format!("{s:?}").contains(SECRET));
    let store = S3Storage::new(s).unwrap();
    assert!(!format!("{store:?}").contains(SECRET));
    for bad in ["a//b", "a/../b", "./a"] {
        assert!(S3Storage::new(settings("bucket", bad)).is_err(), "{bad}");
    }
}
