//! A recording sealed in chunks with AES-256-GCM in the STREAM construction
//! (each chunk's nonce holds its position and whether it is the last), so
//! a byte range opens by reading only its chunks, and chunks reordered,
//! dropped or cut short do not open.
//!
//! File: `PKR1`, then the chunks, each [`CHUNK`] plaintext bytes (the last
//! fewer) followed by its 16-byte tag. Every file has its own random key,
//! so the nonce prefix can be fixed.

use aes_gcm::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use aes_gcm::aead::KeyInit;
use aes_gcm::Aes256Gcm;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::StorageError;

const MAGIC: &[u8; 4] = b"PKR1";
/// Plaintext bytes per chunk.
pub const CHUNK: u64 = 64 * 1024;
const TAG: u64 = 16;

/// A recording's own key.
#[derive(Clone)]
pub struct FileKey([u8; 32]);

impl FileKey {
    pub fn random() -> FileKey {
        let mut k = [0u8; 32];
        OsRng.fill_bytes(&mut k);
        FileKey(k)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<FileKey> {
        Some(FileKey(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn stream(&self) -> StreamBE32<Aes256Gcm> {
        let aead = Aes256Gcm::new(&self.0.into());
        StreamBE32::from_aead(aead, &Default::default())
    }
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileKey(..)")
    }
}

/// How many chunks `size` plaintext bytes take (at least one: an empty
/// recording is one empty last chunk).
fn chunks(size: u64) -> u64 {
    size.div_ceil(CHUNK).max(1)
}

/// Seals the whole plaintext.
pub fn seal(key: &FileKey, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let stream = key.stream();
    let n = chunks(plain.len() as u64);
    let mut out = Vec::with_capacity(MAGIC.len() + plain.len() + (n * TAG) as usize);
    out.extend_from_slice(MAGIC);
    for i in 0..n {
        let start = (i * CHUNK) as usize;
        let end = (start + CHUNK as usize).min(plain.len());
        let mut buf = plain[start..end].to_vec();
        let position = u32::try_from(i).expect("a recording holds fewer than 2^32 chunks");
        stream.encrypt_in_place(position, i + 1 == n, aad, &mut buf).expect("sealing a chunk cannot fail");
        out.extend_from_slice(&buf);
    }
    out
}

/// The part of a sealed file that holds a plaintext range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Where to read in the file, and how much.
    pub offset: u64,
    pub len: u64,
    pub first_chunk: u64,
    /// The plaintext offset the first chunk starts at.
    pub first_plain: u64,
}

/// The chunks holding `range` (within `0..size`, not empty) of a file of
/// `size` plaintext bytes.
pub fn span(size: u64, range: std::ops::Range<u64>) -> Span {
    let first = range.start / CHUNK;
    let last = (range.end.max(range.start + 1) - 1) / CHUNK;
    let last = last.min(chunks(size) - 1);
    let first = first.min(last);
    let offset = MAGIC.len() as u64 + first * (CHUNK + TAG);
    let end_plain = ((last + 1) * CHUNK).min(size);
    let len = (end_plain - first * CHUNK) + (last - first + 1) * TAG;
    Span { offset, len, first_chunk: first, first_plain: first * CHUNK }
}

/// Opens the chunks of `span` read from a file of `size` plaintext bytes.
pub fn open_span(key: &FileKey, aad: &[u8], size: u64, span: &Span, bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    // Cut short (or grown): the file is not what was sealed.
    if bytes.len() as u64 != span.len {
        return Err(StorageError::Damaged);
    }
    let stream = key.stream();
    let n = chunks(size);
    let mut plain = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    let mut i = span.first_chunk;
    while !rest.is_empty() {
        let want = (((i + 1) * CHUNK).min(size) - (i * CHUNK).min(size) + TAG) as usize;
        if rest.len() < want || i >= n {
            return Err(StorageError::Damaged);
        }
        let mut buf = rest[..want].to_vec();
        let position = u32::try_from(i).map_err(|_| StorageError::Damaged)?;
        stream.decrypt_in_place(position, i + 1 == n, aad, &mut buf).map_err(|_| StorageError::Damaged)?;
        plain.extend_from_slice(&buf);
        rest = &rest[want..];
        i += 1;
    }
    Ok(plain)
}

/// Whether `bytes` start as a sealed recording does.
pub fn looks_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}
