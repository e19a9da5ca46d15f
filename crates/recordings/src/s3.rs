//! Recordings in an S3-compatible bucket: `<prefix>/<tenant>/<recording>.pkr`,
//! each object put whole in one request (S3 never shows half an object).

use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use palisade_core::TenantId;

use crate::{BoxFut, ObjectKey, Storage, StorageError};

/// Where the bucket is and how to sign in to it.
#[derive(Clone)]
pub struct S3Settings {
    /// For S3-compatible servers (MinIO, Ceph, ...); `None` is AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Folder inside the bucket the recordings go under; may be empty.
    pub prefix: String,
    /// Allows a plain `http://` endpoint (a server on the same host, tests).
    pub allow_http: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"[redacted]")
            .field("prefix", &self.prefix)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

pub struct S3Storage {
    store: AmazonS3,
    bucket: String,
    prefix: Path,
    /// Kept only to scrub it from error messages, should one ever hold it.
    secret: String,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage").field("bucket", &self.bucket).field("prefix", &self.prefix.as_ref()).finish()
    }
}

impl S3Storage {
    pub fn new(settings: S3Settings) -> Result<S3Storage, StorageError> {
        // object_store's reqwest takes its TLS crypto from the process's
        // rustls provider; ring, as everywhere else here. One already
        // installed stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let secret = settings.secret_access_key;
        let prefix = Path::parse(&settings.prefix)
            .map_err(|e| StorageError::Io(std::io::Error::other(format!("s3: bad prefix: {e}"))))?;
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(settings.region)
            .with_access_key_id(settings.access_key_id)
            .with_secret_access_key(&secret)
            .with_allow_http(settings.allow_http);
        if let Some(endpoint) = settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| io_error(&secret, e))?;
        Ok(S3Storage { store, bucket: settings.bucket, prefix, secret })
    }

    fn location(&self, key: &ObjectKey) -> Path {
        let mut path = self.prefix.clone();
        path.extend(key.path().split('/'));
        path
    }

    async fn size(&self, path: &Path) -> Result<u64, StorageError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(meta.size),
            Err(e) if missing(&e) => Err(StorageError::Missing),
            Err(e) => Err(self.error(e)),
        }
    }

    fn error(&self, e: object_store::Error) -> StorageError {
        io_error(&self.secret, e)
    }
}

fn io_error(secret: &str, e: object_store::Error) -> StorageError {
    let mut message = format!("s3: {e}");
    if !secret.is_empty() {
        message = message.replace(secret, "[redacted]");
    }
    StorageError::Io(std::io::Error::other(message))
}

fn missing(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl Storage for S3Storage {
    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Vec<u8>) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            self.store.put(&self.location(key), PutPayload::from(bytes)).await.map_err(|e| self.error(e))?;
            Ok(())
        })
    }

    fn read<'a>(&'a self, key: &'a ObjectKey, offset: u64, len: u64) -> BoxFut<'a, Result<Vec<u8>, StorageError>> {
        Box::pin(async move {
            let path = self.location(key);
            if len == 0 {
                return self.size(&path).await.map(|_| Vec::new());
            }
            let failed = match self.store.get_range(&path, offset..offset.saturating_add(len)).await {
                Ok(bytes) => return Ok(Vec::from(bytes)),
                Err(e) if missing(&e) => return Err(StorageError::Missing),
                Err(e) => e,
            };
            // S3 answers a range starting at or past the end with 416: an
            // empty read, as from a file.
            match self.size(&path).await {
                Ok(size) if offset >= size => Ok(Vec::new()),
                _ => Err(self.error(failed)),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            match self.store.delete(&self.location(key)).await {
                Err(e) if !missing(&e) => Err(self.error(e)),
                _ => Ok(()),
            }
        })
    }

    fn delete_tenant<'a>(&'a self, tenant: TenantId) -> BoxFut<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let dir = self.prefix.clone().join(tenant.to_string());
            // object_store lists `<dir>/`, so tenant `abc` never takes `abcd`'s
            // objects; checked again here, segment by segment, all the same.
            let mut listed = self.store.list(Some(&dir));
            let mut under = Vec::new();
            while let Some(meta) = listed.next().await {
                let location = meta.map_err(|e| self.error(e))?.location;
                if location.prefix_match(&dir).is_some_and(|mut rest| rest.next().is_some()) {
                    under.push(Ok(location));
                }
            }
            let mut deleted = self.store.delete_stream(futures_util::stream::iter(under).boxed());
            let mut n = 0;
            while let Some(done) = deleted.next().await {
                match done {
                    Ok(_) => n += 1,
                    Err(e) if missing(&e) => {}
                    Err(e) => return Err(self.error(e)),
                }
            }
            Ok(n)
        })
    }
}
