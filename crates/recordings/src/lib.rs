//! Call recordings at rest.
//!
//! - The audio is a WAV file ([`wav`]), sealed in chunks ([`sealed`]) under
//!   a key of its own (a [`FileKey`]). That key is sealed under the tenant's
//!   data key and kept in the database, so destroying the tenant's keys
//!   leaves every copy of the file unreadable (crypto-shredding).
//! - A [`Storage`] backend keeps the sealed file under the tenant's own
//!   prefix ([`ObjectKey`]); [`local::LocalStorage`] (a folder) is the default.

pub mod local;
pub mod s3;
pub mod sealed;
pub mod wav;

#[cfg(test)]
mod s3_tests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

use palisade_core::TenantId;
use uuid::Uuid;

pub use sealed::FileKey;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where a recording's sealed file lives: `<tenant>/<recording>.pkr`. Made
/// only from typed ids, so no part of a path comes from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey {
    tenant: TenantId,
    recording: Uuid,
}

impl ObjectKey {
    pub fn new(tenant: TenantId, recording: Uuid) -> ObjectKey {
        ObjectKey { tenant, recording }
    }

    /// The tenant's prefix: every recording of it, and nothing else, is under it.
    pub fn prefix(&self) -> String {
        self.tenant.to_string()
    }

    /// The object's name relative to the storage's root.
    pub fn path(&self) -> String {
        format!("{}/{}.pkr", self.tenant, self.recording)
    }
}

/// Why storage failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the recording's file is missing")]
    Missing,
    #[error("the recording's file is damaged or was not sealed for it")]
    Damaged,
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
}

/// Where sealed recordings are kept: a folder, or an object store with a
/// prefix per tenant. Every call names its object by an [`ObjectKey`].
pub trait Storage: Send + Sync + 'static {
    /// Stores the object whole: readers see all of it or nothing.
    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Vec<u8>) -> BoxFut<'a, Result<(), StorageError>>;

    /// `len` bytes from `offset` (fewer at the end of the object).
    fn read<'a>(&'a self, key: &'a ObjectKey, offset: u64, len: u64) -> BoxFut<'a, Result<Vec<u8>, StorageError>>;

    /// Removes the object; one already gone is not an error.
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<(), StorageError>>;

    /// Removes every object under the tenant's prefix (its erasure);
    /// returns how many went.
    fn delete_tenant<'a>(&'a self, tenant: TenantId) -> BoxFut<'a, Result<u64, StorageError>>;
}

/// The associated data of a recording's chunks: it opens only as its own
/// tenant's recording with its own id.
pub fn aad(tenant: TenantId, recording: Uuid) -> Vec<u8> {
    format!("recordings\0audio\0{tenant}\0{recording}").into_bytes()
}

/// Seals `wav` for the recording and stores it; returns the file's key
/// (to be sealed under the tenant's data key) and the plaintext size.
pub async fn keep(storage: &dyn Storage, key: &ObjectKey, wav: &[u8]) -> Result<(FileKey, u64), StorageError> {
    let file_key = FileKey::random();
    let sealed = sealed::seal(&file_key, &aad(key.tenant, key.recording), wav);
    storage.put(key, sealed).await?;
    Ok((file_key, wav.len() as u64))
}

/// The plaintext bytes `range` of a recording of `size` bytes, reading and
/// opening only the chunks that hold them.
pub async fn read_range(
    storage: &dyn Storage,
    key: &ObjectKey,
    file_key: &FileKey,
    size: u64,
    range: std::ops::Range<u64>,
) -> Result<Vec<u8>, StorageError> {
    let span = sealed::span(size, range.clone());
    let bytes = storage.read(key, span.offset, span.len).await?;
    let plain = sealed::open_span(file_key, &aad(key.tenant, key.recording), size, &span, &bytes)?;
    let skip = (range.start - span.first_plain) as usize;
    let take = (range.end - range.start) as usize;
    plain.get(skip..skip + take).map(<[u8]>::to_vec).ok_or(StorageError::Damaged)
}
