//! A recorded call's audio once the call is over: made a WAV, sealed under
//! a key of its own and stored under the tenant's prefix; then its row
//! (with that key sealed under the tenant's data key), the audit event and
//! the `recording.completed` webhook in one transaction. A file whose row
//! could not be written is removed, so storage holds no recording the API
//! cannot see or delete.

use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::TenantScope;
use palisade_recordings::{wav, ObjectKey};
use palisade_store::recordings::{NewRecording, RecordingRow};
use palisade_store::StoreError;

use crate::Service;

/// Recordings' own keys, for the re-sealing job (moved to the tenant's
/// newest data key; the audio is not sealed again).
pub const SEALED_COLUMNS: palisade_keys::reseal::SealedColumn = palisade_keys::reseal::SealedColumn {
    column: palisade_store::static_sealed::Column { table: "recordings", id: "id", column: "file_key" },
    place: palisade_store::recordings::key_place,
    legacy_aad: None,
};

impl Service {
    /// Keeps the audio (8 kHz µ-law) of the tenant's call `call_id`.
    /// `None` when the call is unknown, the tenant's recordings are at
    /// their quota, or the call's number was erased (`recording.refused`).
    pub async fn keep_recording(
        &self,
        scope: &TenantScope,
        call_id: &str,
        ulaw: &[u8],
    ) -> Result<Option<RecordingRow>, StoreError> {
        let Some(call) = palisade_store::calls::get(self.db.reader(), scope, call_id).await? else {
            return Ok(None);
        };
        // Before the transaction: a tenant's first key is written.
        let keys = self.keys.of(scope).await?;
        let id = uuid::Uuid::now_v7();
        let object = ObjectKey::new(scope.tenant_id(), id);
        let audio = wav::from_ulaw(ulaw);
        // Storage is shared: one tenant's recordings must not fill it.
        let held = palisade_store::recordings::total_size(self.db.reader(), scope).await?;
        if u64::try_from(held).unwrap_or(0).saturating_add(audio.len() as u64) > self.recording_quota {
            tracing::warn!(
                call = call_id,
                held,
                "a recording was not kept: the tenant's recordings are at their quota"
            );
            let event = Event::new("recording.refused", Some(scope.tenant_id()), Actor::system())
                .resource("call", call_id)
                .details(serde_json::json!({ "reason": "quota", "held": held, "size": audio.len() }));
            palisade_audit::record(&self.db, &event, &Context::default(), self.now_ms()).await?;
            return Ok(None);
        }
        let (file_key, size) = palisade_recordings::keep(&*self.recordings, &object, &audio)
            .await
            .map_err(|e| StoreError::Setup(format!("storing a recording: {e}")))?;
        let duration_ms = wav::duration_ms(size) as i64;
        let now = self.now_ms();
        let id = id.to_string();
        let new = NewRecording {
            id: &id,
            call_id,
            identity_id: &call.identity_id,
            now,
            duration_ms,
            size: size as i64,
            file_key: file_key.as_bytes(),
        };
        let event = Event::new("recording.created", Some(scope.tenant_id()), Actor::system())
            .resource("recording", &id)
            .details(serde_json::json!({ "call_id": call_id, "duration_ms": duration_ms, "size": size }));
        let data = serde_json::json!({
            "id": id, "call_id": call_id, "identity_id": call.identity_id, "duration_ms": duration_ms, "size": size,
        });
        let written = palisade_store::locks::retrying(|| async {
            let mut tx = self.db.begin().await?;
            if !palisade_store::recordings::insert_unless_erased(&mut tx, scope, &keys, &new).await? {
                return Ok(false);
            }
            palisade_audit::append(&mut *tx, &event, &Context::default(), now).await?;
            let completed =
                palisade_webhooks::events::event(scope.tenant_id(), "recording.completed", data.clone(), now);
            tx.run(&palisade_store::webhooks::enqueue_stmts(&[completed])).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await;
        if !matches!(written, Ok(true)) {
            if let Err(d) = self.recordings.delete(&object).await {
                tracing::error!(error = %d, recording = id, "removing an unrecorded recording's file failed");
            }
        }
        match written {
            Err(e) => return Err(e),
            // The call's number was erased while the audio was stored.
            Ok(false) => {
                let event = Event::new("recording.refused", Some(scope.tenant_id()), Actor::system())
                    .resource("call", call_id)
                    .details(serde_json::json!({ "reason": "erased" }));
                palisade_audit::record(&self.db, &event, &Context::default(), self.now_ms()).await?;
                return Ok(None);
            }
            Ok(true) => {}
        }
        self.webhook_wake.notify_one();
        palisade_store::recordings::get(self.db.reader(), scope, &id).await
    }
}

impl Service {
    /// Deletes a recording: its row (and with it the audio's only key) and
    /// the audit event in one transaction, then its file. False when
    /// another deletion was first.
    pub async fn remove_recording(
        &self,
        scope: &TenantScope,
        row: &RecordingRow,
        actor: Actor,
        ctx: &Context,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let event = Event::new("recording.deleted", Some(scope.tenant_id()), actor)
            .resource("recording", &row.id)
            .details(serde_json::json!({ "call_id": row.call_id }));
        let removed = palisade_store::locks::retrying(|| async {
            let mut tx = self.db.begin().await?;
            if !palisade_store::recordings::delete(&mut *tx, scope, &row.id).await? {
                return Ok(false);
            }
            palisade_audit::append(&mut *tx, &event, ctx, now).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await?;
        if removed {
            self.remove_file(scope, &row.id).await;
        }
        Ok(removed)
    }

    /// Removes a recording's file whose row is gone. A file left behind
    /// (storage failed) cannot be opened: its key went with the row.
    pub(crate) async fn remove_file(&self, scope: &TenantScope, id: &str) {
        let Ok(uuid) = id.parse() else { return };
        if let Err(e) = self.recordings.delete(&ObjectKey::new(scope.tenant_id(), uuid)).await {
            tracing::warn!(error = %e, recording = id, "removing a deleted recording's file failed; it stays sealed");
        }
    }

    /// Retention: removes up to `batch` of the tenant's recordings made
    /// before `before` (rows in one short transaction, then their files).
    /// How many went.
    pub async fn expire_recordings(&self, scope: &TenantScope, before: i64, batch: i64) -> Result<u64, StoreError> {
        let due = palisade_store::recordings::older_than(self.db.reader(), scope, before, batch).await?;
        if due.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = due.iter().map(|r| r.id.as_str()).collect();
        let mut tx = self.db.begin().await?;
        let mut gone = Vec::with_capacity(ids.len());
        for id in ids {
            if palisade_store::recordings::delete(&mut *tx, scope, id).await? {
                gone.push(id);
            }
        }
        tx.commit().await?;
        for id in &gone {
            self.remove_file(scope, id).await;
        }
        Ok(gone.len() as u64)
    }

    /// After a tenant's erasure (which removed its recordings' rows and
    /// keys): the files under its prefix. How many went.
    pub async fn erase_recording_files(&self, scope: &TenantScope) -> u64 {
        self.recordings.delete_tenant(scope.tenant_id()).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "removing an erased tenant's recordings failed; their keys are destroyed");
            0
        })
    }
}
