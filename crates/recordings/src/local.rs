//! Recordings in a folder: `<root>/<tenant>/<recording>.pkr`, folders 0700
//! and files 0600, each written whole (a temporary file renamed into place).

use std::io::SeekFrom;
use std::path::PathBuf;

use palisade_core::TenantId;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::{BoxFut, ObjectKey, Storage, StorageError};

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into() }
    }

    fn file(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.path())
    }
}

async fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut b = tokio::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    b.mode(0o700);
    b.create(path).await
}

impl Storage for LocalStorage {
    fn put<'a>(&'a self, key: &'a ObjectKey, bytes: Vec<u8>) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            let path = self.file(key);
            private_dir(&self.root.join(key.prefix())).await?;
            let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
            let mut opts = tokio::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            opts.mode(0o600);
            let written = async {
                let mut f = opts.open(&tmp).await?;
                f.write_all(&bytes).await?;
                f.sync_all().await?;
                tokio::fs::rename(&tmp, &path).await
            };
            if let Err(e) = written.await {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
            Ok(())
        })
    }

    fn read<'a>(&'a self, key: &'a ObjectKey, offset: u64, len: u64) -> BoxFut<'a, Result<Vec<u8>, StorageError>> {
        Box::pin(async move {
            let mut f = match tokio::fs::File::open(self.file(key)).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StorageError::Missing),
                Err(e) => return Err(e.into()),
            };
            f.seek(SeekFrom::Start(offset)).await?;
            let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(8 << 20));
            f.take(len).read_to_end(&mut out).await?;
            Ok(out)
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFut<'a, Result<(), StorageError>> {
        Box::pin(async move {
            match tokio::fs::remove_file(self.file(key)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            }
        })
    }

    fn delete_tenant<'a>(&'a self, tenant: TenantId) -> BoxFut<'a, Result<u64, StorageError>> {
        Box::pin(async move {
            let dir = self.root.join(tenant.to_string());
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e.into()),
            };
            let mut n = 0;
            while let Some(entry) = entries.next_entry().await? {
                tokio::fs::remove_file(entry.path()).await?;
                n += 1;
            }
            let _ = tokio::fs::remove_dir(&dir).await;
            Ok(n)
        })
    }
}
