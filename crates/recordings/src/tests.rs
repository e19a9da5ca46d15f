use palisade_core::TenantId;
use uuid::Uuid;

use crate::local::LocalStorage;
use crate::sealed::{self, CHUNK};
use crate::{keep, read_range, wav, ObjectKey, Storage, StorageError};

fn audio(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[tokio::test]
async fn any_range_reads_back_what_was_kept() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::new(dir.path());
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
    }
}

#[tokio::test]
async fn the_file_holds_no_plaintext_and_opens_only_as_itself() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::new(dir.path());
    let plain = wav::from_ulaw(&[0x55u8; 3000]);
    let (tenant, id) = (TenantId::new(), Uuid::now_v7());
    let key = ObjectKey::new(tenant, id);
    let (file_key, size) = keep(&store, &key, &plain).await.unwrap();
    let on_disk = std::fs::read(dir.path().join(key.path())).unwrap();
    assert!(sealed::looks_sealed(&on_disk));
    assert!(!on_disk.windows(4).any(|w| w == b"RIFF"), "the WAV header is sealed too");
    assert!(!on_disk.windows(16).any(|w| w == &plain[100..116]));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(key.path())).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Another key, or the same file as another recording or tenant: nothing.
    let wrong = crate::FileKey::random();
    assert!(matches!(read_range(&store, &key, &wrong, size, 0..size).await, Err(StorageError::Damaged)));
    let elsewhere = ObjectKey::new(TenantId::new(), id);
    store.put(&elsewhere, on_disk.clone()).await.unwrap();
    let r = read_range(&store, &elsewhere, &file_key, size, 0..size).await;
    assert!(matches!(r, Err(StorageError::Damaged)), "a file copied to another tenant does not open");
}

#[tokio::test]
async fn a_cut_or_reordered_file_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::new(dir.path());
    let plain = audio(2 * CHUNK as usize + 10);
    let key = ObjectKey::new(TenantId::new(), Uuid::now_v7());
    let (file_key, size) = keep(&store, &key, &plain).await.unwrap();
    let path = dir.path().join(key.path());
    let whole = std::fs::read(&path).unwrap();
    // Cut after the second chunk: the second is not the last one.
    let cut = &whole[..4 + 2 * (CHUNK as usize + 16)];
    std::fs::write(&path, cut).unwrap();
    assert!(read_range(&store, &key, &file_key, size, 0..size).await.is_err());
    assert!(read_range(&store, &key, &file_key, 2 * CHUNK, 0..2 * CHUNK).await.is_err(), "told a shorter size");
    // The first two chunks swapped.
    let c = CHUNK as usize + 16;
    let mut swapped = whole[..4].to_vec();
    swapped.extend_from_slice(&whole[4 + c..4 + 2 * c]);
    swapped.extend_from_slice(&whole[4..4 + c]);
    swapped.extend_from_slice(&whole[4 + 2 * c..]);
    std::fs::write(&path, swapped).unwrap();
    assert!(read_range(&store, &key, &file_key, size, 0..10).await.is_err());
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(read_range(&store, &key, &file_key, size, 0..10).await, Err(StorageError::Missing)));
}

#[tokio::test]
async fn a_tenants_erasure_removes_its_prefix_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStorage::new(dir.path());
    let (a, b) = (TenantId::new(), TenantId::new());
    for t in [a, a, b] {
        keep(&store, &ObjectKey::new(t, Uuid::now_v7()), b"x").await.unwrap();
    }
    assert_eq!(store.delete_tenant(a).await.unwrap(), 2);
    assert!(!dir.path().join(a.to_string()).exists());
    assert_eq!(std::fs::read_dir(dir.path().join(b.to_string())).unwrap().count(), 1);
    assert_eq!(store.delete_tenant(a).await.unwrap(), 0);
}

#[test]
fn ulaw_decodes_what_the_media_path_encodes() {
    for s in [-32000i16, -1000, -1, 0, 1, 500, 8000, 32000] {
        let back = wav::linear(palisade_comms::media::ulaw(s));
        let err = (i32::from(back) - i32::from(s)).abs();
        assert!(err <= (i32::from(s).abs() / 16).max(8), "{s} came back as {back}");
    }
}

#[test]
fn a_wav_says_what_it_holds() {
    let w = wav::from_ulaw(&[0xFF; 8000]);
    assert_eq!(&w[..4], b"RIFF");
    assert_eq!(&w[8..16], b"WAVEfmt ");
    assert_eq!(u32::from_le_bytes(w[24..28].try_into().unwrap()), 8000);
    assert_eq!(u32::from_le_bytes(w[40..44].try_into().unwrap()), 16000);
    assert_eq!(w.len(), 44 + 16000);
    assert_eq!(wav::duration_ms(w.len() as u64), 1000);
}
