//! Recordings kept, deleted and expired through the service: the WAV opens
//! with the key in its row, the quota holds to the byte, a deletion happens
//! once, retention goes by age in batches, and a recorded call's life
//! leaves its recording.

use std::sync::Arc;
use std::time::Duration;

use palisade_comms::{Carrier, OutboundCall, SandboxCarrier};
use palisade_core::principal::Actor;
use palisade_recordings::{FileKey, ObjectKey};

use super::{admitted, word, world, world_quota, World, US};

/// A second of µ-law audio: a WAV of 44 + 16,000 bytes.
const SECOND: [u8; 8000] = [0x55; 8000];
const WAV_OF_A_SECOND: u64 = 44 + 16_000;

async fn placed(w: &World) -> String {
    let id = w.identity(Default::default()).await;
    admitted(w.call(&id, US, None).await).id
}

async fn audio_of(w: &World, row: &palisade_store::recordings::RecordingRow) -> Vec<u8> {
    let keys = w.svc.keys.of(&w.scope).await.unwrap();
    let key = FileKey::from_bytes(&row.file_key(&w.scope, &keys).unwrap()).unwrap();
    let object = ObjectKey::new(w.scope.tenant_id(), row.id.parse().unwrap());
    let size = row.size as u64;
    palisade_recordings::read_range(&*w.svc.recordings, &object, &key, size, 0..size).await.unwrap()
}

#[tokio::test]
async fn a_kept_recording_opens_with_the_key_in_its_row() {
    let w = world().await;
    let call = placed(&w).await;
    let row = w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().expect("kept");
    assert_eq!((row.call_id.as_str(), row.size as u64, row.duration_ms), (call.as_str(), WAV_OF_A_SECOND, 1000));
    let wav = audio_of(&w, &row).await;
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(wav.len() as u64, WAV_OF_A_SECOND);
    assert_eq!(w.count("audit_events", "action = 'recording.created'").await, 1);
    // Another tenant's call, or none: nothing kept.
    assert!(w.svc.keep_recording(&w.scope, &uuid::Uuid::now_v7().to_string(), &SECOND).await.unwrap().is_none());
    assert_eq!(w.count("recordings", "1 = 1").await, 1);
}

#[tokio::test]
async fn the_quota_holds_to_the_byte() {
    let w = world_quota(2 * WAV_OF_A_SECOND).await;
    let call = placed(&w).await;
    assert!(w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().is_some());
    // Exactly at the quota: kept.
    assert!(w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().is_some());
    // One byte over: refused, audited, no file.
    assert!(w.svc.keep_recording(&w.scope, &call, &[0x55]).await.unwrap().is_none());
    assert_eq!(w.count("recordings", "1 = 1").await, 2);
    assert_eq!(w.count("audit_events", "action = 'recording.refused'").await, 1);
}

#[tokio::test]
async fn a_recording_is_deleted_once_with_its_file() {
    let w = world().await;
    let call = placed(&w).await;
    let row = w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().unwrap();
    let object = ObjectKey::new(w.scope.tenant_id(), row.id.parse().unwrap());
    assert!(w.svc.recordings.read(&object, 0, 4).await.is_ok());
    let ctx = palisade_audit::Context::default();
    assert!(w.svc.remove_recording(&w.scope, &row, Actor::system(), &ctx).await.unwrap());
    assert!(!w.svc.remove_recording(&w.scope, &row, Actor::system(), &ctx).await.unwrap(), "gone already");
    assert!(matches!(w.svc.recordings.read(&object, 0, 4).await, Err(palisade_recordings::StorageError::Missing)));
    assert_eq!(w.count("audit_events", "action = 'recording.deleted'").await, 1);
    assert_eq!(w.count("recordings", "1 = 1").await, 0);
}

#[tokio::test]
async fn retention_takes_the_oldest_first_in_batches() {
    let w = world().await;
    let call = placed(&w).await;
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().unwrap());
        w.clock.advance_ms(1000);
    }
    // Before the third was made: the first two, one batch at a time.
    let cutoff = made[2].created_at;
    assert_eq!(w.svc.expire_recordings(&w.scope, cutoff, 1).await.unwrap(), 1);
    assert_eq!(w.svc.expire_recordings(&w.scope, cutoff, 5).await.unwrap(), 1);
    assert_eq!(w.svc.expire_recordings(&w.scope, cutoff, 5).await.unwrap(), 0);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT id FROM recordings ORDER BY id").fetch_all(w.svc.db.reader()).await.unwrap();
    assert_eq!(left, vec![made[2].id.clone(), made[3].id.clone()]);
    // The tenant's erasure: every file under its prefix.
    assert_eq!(w.svc.erase_recording_files(&w.scope).await, 2);
    assert_eq!(w.svc.erase_recording_files(&w.scope).await, 0);
}

/// A recorded call through the sandbox: answered, over after its length,
/// its recording kept; an unrecorded one leaves none.
#[tokio::test]
async fn a_recorded_calls_life_leaves_its_recording() {
    let w = world().await;
    let carrier: Arc<dyn Carrier> =
        Arc::new(SandboxCarrier::new(Duration::from_millis(5), Duration::from_millis(300), None));
    let id = w.identity(Default::default()).await;
    for record in [true, false] {
        let c = admitted(w.call(&id, US, None).await);
        let call = OutboundCall {
            id: c.id.clone(),
            from: c.from_number.clone(),
            to: c.to_number.clone(),
            offer: None,
            attestation: None,
            record,
        };
        w.svc.run_call(carrier.clone(), w.scope.clone(), call, Arc::new(()));
        let mut ended = false;
        for _ in 0..300 {
            if w.count("cdrs", &format!("call_id = '{}'", c.id)).await == 1 {
                ended = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ended, "the call ended");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let kept = w.count("recordings", &format!("call_id = '{}'", c.id)).await;
        assert_eq!(kept, i64::from(record), "record: {record}");
    }
}

/// A recorded call and an unrecorded one are different requests: one
/// Idempotency-Key cannot stand for both.
#[tokio::test]
async fn record_is_part_of_what_a_key_stands_for() {
    let w = world().await;
    let id = w.identity(Default::default()).await;
    let call = |record| crate::calls::Call { from: id.clone(), to: US.into(), key: Some("k".into()), record };
    let answer = |r: &palisade_store::calls::CallRow| crate::Answer { status: 201, body: r.id.clone() };
    let first = w.svc.place_call(&w.caller(), call(true), async { Ok::<(), ()>(()) }, answer).await.unwrap();
    assert!(admitted(first).record == 1);
    let again = w.svc.place_call(&w.caller(), call(true), async { Ok::<(), ()>(()) }, answer).await.unwrap();
    assert_eq!(word(&again), "replayed");
    let other = w.svc.place_call(&w.caller(), call(false), async { Ok::<(), ()>(()) }, answer).await.unwrap();
    assert_eq!(word(&other), "idempotency_key_reused");
}

/// A call whose number was erased while its audio was being stored keeps
/// no recording: the erasure came first, and found nothing to remove.
#[tokio::test]
async fn no_recording_is_kept_of_a_call_whose_number_was_erased() {
    let w = world().await;
    let call = placed(&w).await;
    let mut tx = w.svc.db.begin().await.unwrap();
    assert_eq!(
        palisade_store::erasure::mask(&mut tx, &w.scope, palisade_store::erasure::Masked::Calls, US, "…0123", 10)
            .await
            .unwrap(),
        1
    );
    tx.commit().await.unwrap();
    assert!(w.svc.keep_recording(&w.scope, &call, &SECOND).await.unwrap().is_none());
    assert_eq!(w.count("recordings", "1 = 1").await, 0);
    assert_eq!(w.count("audit_events", "action = 'recording.refused'").await, 1);
    // Nor its file.
    let dir = std::fs::read_dir(w.svc_dir().join("recordings").join(w.scope.tenant_id().to_string()));
    assert!(dir.map(|d| d.count()).unwrap_or(0) == 0);
}
