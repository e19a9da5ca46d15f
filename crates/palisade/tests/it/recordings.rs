//! Recordings (issue: data protection): a call placed with `record` keeps
//! its audio as WAV, sealed at rest under the tenant's prefix; metadata,
//! the audio with Range requests, deletion; agents confined to their
//! identity; downloads and deletions audited; retention removes them.

use palisade_config::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

backend_tests!(
    a_recorded_call_keeps_its_audio_sealed_at_rest,
    ranges_of_the_audio,
    agents_hear_their_own_identitys_recordings_only,
    deleting_a_recording_removes_its_audio,
    retention_removes_old_recordings,
    erasing_a_tenant_removes_its_recordings_only,
    what_a_stream_plays_is_recorded,
    a_tenant_at_its_quota_keeps_no_more_recordings,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(s3_tests), ignore = "PALISADE_TEST_S3_URL is not set")]
async fn recordings_can_live_in_an_s3_bucket() {
    let url = std::env::var("PALISADE_TEST_S3_URL").expect("PALISADE_TEST_S3_URL");
    let bucket = format!("palisade-it-{}", uuid::Uuid::new_v4().simple());
    let http = reqwest::Client::new();
    // moto takes any credentials; the bucket has to exist.
    assert!(http.put(format!("{url}/{bucket}")).send().await.unwrap().status().is_success());
    let (endpoint, b2) = (url.clone(), bucket.clone());
    let s = TestServer::start_with(Backend::Sqlite, move |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 1;
        c.recordings.s3 = Some(palisade_config::RecordingsS3 {
            endpoint: Some(endpoint),
            bucket: b2,
            region: "us-east-1".into(),
            access_key_id: "it".into(),
            secret_access_key: Some(palisade_config::Secret::new("it-secret".into())),
            secret_access_key_file: None,
            prefix: "rec".into(),
            allow_http: true,
        });
    })
    .await;
    let (token, tenant_id, _, _) = tenant(&s).await;
    let r = recorded(&s, &token, FROM).await;
    let id = r["id"].as_str().unwrap();
    let listing =
        || async { http.get(format!("{url}/{bucket}?list-type=2")).send().await.unwrap().text().await.unwrap() };
    let key = format!("rec/{tenant_id}/{id}.pkr");
    assert!(listing().await.contains(&key), "under the tenant's prefix in the bucket");
    assert!(!s.data_dir.join("recordings").exists(), "nothing in the local folder");
    let object = http.get(format!("{url}/{bucket}/{key}")).send().await.unwrap().bytes().await.unwrap();
    assert!(!contains(&object, b"RIFF"), "sealed in the bucket");
    let res = audio(&s, &token, id, Some("bytes=0-3")).await;
    assert_eq!(res.status(), 206);
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"RIFF");
    s.call(Method::DELETE, &format!("/v1/recordings/{id}"), Some(&token), None).await.expect(204);
    assert!(!listing().await.contains(&key), "deleted from the bucket");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sip_caller_asks_for_recording_with_a_header() {
    use crate::sip_edge::{invite_with, phone, server_with};
    let s = server_with(Backend::Sqlite, |c| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 1;
    })
    .await;
    let p = phone(&s, "Acme").await;
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", p.tenant), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let mut ua = crate::sip_ua::Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let bad = invite_with(&mut ua, "+34612000222", &p.password, &["Palisade-Record: maybe".into()]).await;
    assert_eq!(bad.status, 400, "{}", bad.raw);
    assert!(bad.warning().unwrap_or_default().contains("palisade_record"), "{}", bad.raw);
    let ok = invite_with(&mut ua, "+34612000222", &p.password, &["Palisade-Record: true".into()]).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000222", &to_tag, ua.cseq).await;
    // The callee hangs up after a second; the recording follows.
    let call = crate::sip_edge::calls(&s, &p.token).await[0].clone();
    assert_eq!(call["record"], true);
    let mut found = Value::Null;
    for _ in 0..300 {
        found = s.get("/v1/recordings", &p.token).await.expect(200).body["data"][0].clone();
        if !found.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(found["call_id"], call["id"]);
    assert_eq!(found["identity_id"], p.identity.as_str());
    s.stop().await;
}

const FROM: &str = "+34612345678";
const OTHER: &str = "+34612345679";
const TO: &str = "+34699000111";

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        // The callee hangs up after a second: a short recording.
        c.carrier.sandbox_call_secs = 1;
    })
    .await
}

/// A tenant with credit and two identities: (owner token, tenant id, identity, other identity).
async fn tenant(s: &TestServer) -> (String, String, String, String) {
    let t = s.tenant("Acme").await;
    let i = s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    let o = s.post("/v1/identities", &t.token, json!({"number": OTHER})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 1000})))
        .await
        .expect(200);
    let id = |r: &crate::common::Resp| r.body["id"].as_str().unwrap().to_owned();
    (t.token, t.id, id(&i), id(&o))
}

/// Places a recorded call from `from` and waits for its recording.
async fn recorded(s: &TestServer, cred: &str, from: &str) -> Value {
    let call = s.post("/v1/calls", cred, json!({"from": from, "to": TO, "record": true})).await.expect(201);
    assert_eq!(call.body["record"], true);
    let id = call.body["id"].as_str().unwrap();
    for _ in 0..300 {
        let list = s.get(&format!("/v1/recordings?call_id={id}"), cred).await.expect(200).body;
        if let Some(r) = list["data"].as_array().unwrap().first() {
            return r.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("call {id} has no recording");
}

async fn audio(s: &TestServer, cred: &str, id: &str, range: Option<&str>) -> reqwest::Response {
    let mut rb = s.request(Method::GET, &format!("/v1/recordings/{id}/audio")).bearer_auth(cred);
    if let Some(r) = range {
        rb = rb.header("Range", r);
    }
    rb.send().await.unwrap()
}

/// The sandbox's tone as the WAV holds it: one 20 ms frame of 16-bit PCM.
fn tone_pcm() -> Vec<u8> {
    palisade_comms::media::tone_frame()
        .iter()
        .flat_map(|&u| palisade_recordings::wav::linear(u).to_le_bytes())
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`, as bytes.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path.clone(), std::fs::read(path).unwrap()));
        }
    }
    out
}

async fn a_recorded_call_keeps_its_audio_sealed_at_rest(b: Backend) {
    let sqlite = matches!(b, Backend::Sqlite);
    let s = server(b).await;
    let (token, tenant_id, identity, _) = tenant(&s).await;
    // An unrecorded call has none.
    let plain = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO})).await.expect(201);
    assert_eq!(plain.body["record"], false);
    let r = recorded(&s, &token, FROM).await;
    assert_eq!(r["identity_id"], identity.as_str());
    let duration = r["duration_ms"].as_i64().unwrap();
    assert!((800..=2500).contains(&duration), "a call of about a second: {duration} ms");
    let size = r["size"].as_i64().unwrap();
    assert_eq!(size, 44 + duration * 16, "8 kHz 16-bit mono");
    let id = r["id"].as_str().unwrap().to_owned();
    assert_eq!(r["audio_url"], format!("/v1/recordings/{id}/audio"));
    assert_eq!(s.get(&format!("/v1/recordings/{id}"), &token).await.expect(200).body, r);
    let list = s.get("/v1/recordings", &token).await.expect(200).body;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "only the recorded call: {list}");

    let res = audio(&s, &token, &id, None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "audio/wav");
    assert_eq!(res.headers()["accept-ranges"], "bytes");
    assert_eq!(res.headers()["cache-control"], "no-store");
    let wav = res.bytes().await.unwrap().to_vec();
    assert_eq!(wav.len() as i64, size);
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(&wav[8..12], b"WAVE");
    // Real audio: the far end's tone, frame after frame.
    let tone = tone_pcm();
    assert_eq!(&wav[44..44 + tone.len()], tone.as_slice());

    // At rest: the file under the tenant's prefix holds neither the WAV
    // header nor the audio; nor does the database.
    let dir = s.data_dir.join("recordings").join(&tenant_id);
    let files = files_under(&dir);
    assert_eq!(files.len(), 1, "one file under the tenant's prefix");
    assert!(files[0].0.ends_with(format!("{id}.pkr")));
    assert!(!contains(&files[0].1, b"RIFF"));
    assert!(!contains(&files[0].1, &tone[..64]));
    assert!(!contains(&files[0].1, &palisade_comms::media::tone_frame()[..32]));
    if sqlite {
        let mut db = Vec::new();
        for (path, bytes) in files_under(&s.data_dir) {
            if path.to_string_lossy().contains(".db") {
                db.extend(bytes);
            }
        }
        assert!(!db.is_empty());
        assert!(!contains(&db, &tone[..64]));
    }
    let created = s.events(&token, "action=recording.created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["resource_id"], id.as_str());
    let downloaded = s.events(&token, "action=recording.downloaded").await;
    assert_eq!(downloaded.len(), 1);
    assert_eq!(downloaded[0]["details"]["to"], size);
    s.stop().await;
}

async fn ranges_of_the_audio(b: Backend) {
    let s = server(b).await;
    let (token, _, _, _) = tenant(&s).await;
    let r = recorded(&s, &token, FROM).await;
    let (id, size) = (r["id"].as_str().unwrap(), r["size"].as_u64().unwrap());
    let whole = audio(&s, &token, id, None).await.bytes().await.unwrap().to_vec();
    for (range, from, to) in [
        ("bytes=0-3", 0, 4),
        ("bytes=40-99", 40, 100),
        (&format!("bytes={}-", size - 7) as &str, size - 7, size),
        ("bytes=-10", size - 10, size),
        (&format!("bytes=100-{}", size + 50), 100, size),
    ] {
        let res = audio(&s, &token, id, Some(range)).await;
        assert_eq!(res.status(), 206, "{range}");
        assert_eq!(res.headers()["content-range"], format!("bytes {from}-{}/{size}", to - 1), "{range}");
        assert_eq!(res.bytes().await.unwrap().as_ref(), &whole[from as usize..to as usize], "{range}");
    }
    for bad in [format!("bytes={size}-"), format!("bytes={}-{}", size + 1, size + 9)] {
        let res = audio(&s, &token, id, Some(&bad)).await;
        assert_eq!(res.status(), 416, "{bad}");
        assert_eq!(res.headers()["content-range"], format!("bytes */{size}"), "{bad}");
    }
    // What is not one byte range (several, another unit, bad syntax) is
    // ignored, as HTTP says: the whole file.
    let long = format!("bytes=0-{}", "9".repeat(70));
    for ignored in ["bytes=0-1,10-11", "pages=1-2", "sJ_@E.|", long.as_str()] {
        let res = audio(&s, &token, id, Some(ignored)).await;
        assert_eq!(res.status(), 200, "{ignored}");
        assert_eq!(res.bytes().await.unwrap().len() as u64, size, "{ignored}");
    }
    // Every request for audio is audited, with its range.
    let downloaded = s.events(&token, "action=recording.downloaded").await;
    assert_eq!(downloaded.len(), 10, "one a request served");
    s.stop().await;
}

async fn agents_hear_their_own_identitys_recordings_only(b: Backend) {
    let s = server(b).await;
    let (token, _, identity, other) = tenant(&s).await;
    let agent = s.post(&format!("/v1/identities/{identity}/agent-token"), &token, json!({})).await.expect(201).body
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = recorded(&s, &agent, FROM).await;
    let theirs = recorded(&s, &token, &other).await;
    let theirs_id = theirs["id"].as_str().unwrap();
    let seen = s.get("/v1/recordings", &agent).await.expect(200).body["data"].as_array().unwrap().clone();
    assert_eq!(seen, vec![mine.clone()]);
    assert_eq!(s.get("/v1/recordings", &token).await.expect(200).body["data"].as_array().unwrap().len(), 2);
    s.get(&format!("/v1/recordings/{theirs_id}"), &agent).await.expect(404);
    assert_eq!(audio(&s, &agent, theirs_id, None).await.status(), 404);
    let mine_id = mine["id"].as_str().unwrap();
    assert_eq!(audio(&s, &agent, mine_id, None).await.status(), 200);
    // An agent never deletes a recording, not even its own: they are the
    // evidence of its calls.
    for id in [mine_id, theirs_id] {
        let r = s.call(Method::DELETE, &format!("/v1/recordings/{id}"), Some(&agent), None).await.expect(403);
        assert_eq!(r.body["reason"], "forbidden");
    }
    // A read-only person and an integration key can listen, not delete.
    let (_, reader) = s.member(&token, "reader@example.com", "read_only").await;
    let (_, integration) = s.api_key(&token, json!({"name": "crm", "role": "integration"})).await;
    for cred in [&reader, &integration] {
        assert_eq!(audio(&s, cred, theirs_id, None).await.status(), 200);
        s.call(Method::DELETE, &format!("/v1/recordings/{theirs_id}"), Some(cred), None).await.expect(403);
    }
    assert_eq!(audio(&s, &token, mine_id, None).await.status(), 200, "still there");
    assert_eq!(audio(&s, &token, theirs_id, None).await.status(), 200, "still there");
    s.stop().await;
}

async fn deleting_a_recording_removes_its_audio(b: Backend) {
    let s = server(b).await;
    let (token, tenant_id, _, _) = tenant(&s).await;
    let r = recorded(&s, &token, FROM).await;
    let id = r["id"].as_str().unwrap();
    let file = s.data_dir.join("recordings").join(&tenant_id).join(format!("{id}.pkr"));
    assert!(file.exists());
    s.call(Method::DELETE, &format!("/v1/recordings/{id}"), Some(&token), None).await.expect(204);
    assert!(!file.exists());
    s.get(&format!("/v1/recordings/{id}"), &token).await.expect(404);
    assert_eq!(audio(&s, &token, id, None).await.status(), 404);
    s.call(Method::DELETE, &format!("/v1/recordings/{id}"), Some(&token), None).await.expect(404);
    let deleted = s.events(&token, "action=recording.deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["actor"]["type"], "user");
    s.stop().await;
}

async fn retention_removes_old_recordings(b: Backend) {
    let s = server(b).await;
    let t = s.tenant("Keeper").await;
    s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 1000})))
        .await
        .expect(200);
    // An owner's API key: sessions end long before the days pass.
    let (_, key) = s.api_key(&t.token, json!({"name": "ops", "role": "owner"})).await;
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&key), Some(json!({"recordings_days": 2}))).await;
    let r = r.expect(200).body;
    assert_eq!((r["recordings_days"].as_i64(), r["recordings_chosen"].as_bool()), (Some(2), Some(true)));
    assert_eq!(r["messages_days"], 365, "messages unchanged");
    assert_eq!(r["recordings_bounds"]["default_days"], 90);
    let bad = s.call(Method::PUT, "/v1/tenant/retention", Some(&key), Some(json!({"recordings_days": 0}))).await;
    assert_eq!(bad.expect(400).body["errors"][0]["field"], "recordings_days");
    let old = recorded(&s, &key, FROM).await;
    s.clock.advance_ms(86_400_000 + 1);
    let young = recorded(&s, &key, FROM).await;
    assert_eq!(palisade::apply_recording_retention(s.state()).await.unwrap(), 0, "none is two days old yet");
    s.clock.advance_ms(86_400_000);
    assert_eq!(palisade::apply_recording_retention(s.state()).await.unwrap(), 1);
    let left: Vec<Value> = s.get("/v1/recordings", &key).await.expect(200).body["data"].as_array().unwrap().clone();
    assert_eq!(left, vec![young.clone()]);
    let old_id = old["id"].as_str().unwrap();
    assert!(!s.data_dir.join("recordings").join(&t.id).join(format!("{old_id}.pkr")).exists());
    let applied = s.events(&key, "action=retention.applied").await;
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["details"]["recordings"], json!({"removed": 1, "days": 2}));
    assert_eq!(palisade::apply_recording_retention(s.state()).await.unwrap(), 0, "nothing left to do");
    s.stop().await;
}

async fn erasing_a_tenant_removes_its_recordings_only(b: Backend) {
    let s = server(b).await;
    let (gone, gone_id, _, _) = tenant(&s).await;
    let (kept, kept_id, _, _) = tenant(&s).await;
    recorded(&s, &gone, FROM).await;
    let theirs = recorded(&s, &kept, FROM).await;
    let root = s.data_dir.join("recordings");
    assert_eq!(files_under(&root.join(&gone_id)).len(), 1);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{gone_id}/freeze"), None).await.expect(200);
    let path = format!("/sysadmin/v1/tenants/{gone_id}/erase");
    s.admin(Method::POST, &path, Some(json!({"confirm": gone_id}))).await.expect(200);
    assert!(!root.join(&gone_id).exists(), "the erased tenant's prefix is gone");
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar("SELECT id FROM recordings WHERE tenant_id = $1")
        .bind(&gone_id)
        .fetch_all(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    assert!(rows.is_empty(), "its recordings' keys are gone with its data keys");
    assert_eq!(files_under(&root.join(&kept_id)).len(), 1);
    let res = audio(&s, &kept, theirs["id"].as_str().unwrap(), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(&res.bytes().await.unwrap()[..4], b"RIFF");
    s.stop().await;
}

async fn what_a_stream_plays_is_recorded(b: Backend) {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = TestServer::start_with(b, |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await;
    let (token, _, _, _) = tenant(&s).await;
    let call = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO, "record": true})).await.expect(201);
    let id = call.body["id"].as_str().unwrap().to_owned();
    let mut ws = crate::streams::open(&s, &format!("/v1/calls/{id}/stream"), Some(&token)).await.expect("upgraded");
    // Until the call is answered and its audio flows.
    loop {
        let m = crate::streams::next(&mut ws, std::time::Duration::from_secs(10)).await.unwrap();
        if m["event"] == "media" {
            break;
        }
    }
    // Five frames of the agent's audio: the far end plays them back, and
    // the recording holds them.
    let payload = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, [0x11u8; 800]);
    ws.send(Message::Text(json!({"event": "media", "media": {"payload": payload}}).to_string().into())).await.unwrap();
    ws.send(Message::Text(json!({"event": "mark", "mark": {"name": "said"}}).to_string().into())).await.unwrap();
    loop {
        let m = crate::streams::next(&mut ws, std::time::Duration::from_secs(10)).await.unwrap();
        if m["event"] == "mark" {
            break;
        }
    }
    s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(200);
    let mut found = Value::Null;
    for _ in 0..300 {
        found = s.get(&format!("/v1/recordings?call_id={id}"), &token).await.expect(200).body["data"][0].clone();
        if !found.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let wav = audio(&s, &token, found["id"].as_str().unwrap(), None).await.bytes().await.unwrap().to_vec();
    let said: Vec<u8> = [0x11u8; 800].iter().flat_map(|&u| palisade_recordings::wav::linear(u).to_le_bytes()).collect();
    assert!(contains(&wav, &said), "the five frames the stream sent are in the recording");
    assert!(contains(&wav, &tone_pcm()), "and the tone around them");
    s.stop().await;
}

async fn a_tenant_at_its_quota_keeps_no_more_recordings(b: Backend) {
    let s = TestServer::start_with(b, |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 1;
        // Room for one recording of about a second (16 KB), not two.
        c.recordings.max_bytes_per_tenant = 30_000;
    })
    .await;
    let (token, _, _, _) = tenant(&s).await;
    recorded(&s, &token, FROM).await;
    let call = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO, "record": true})).await.expect(201);
    let id = call.body["id"].as_str().unwrap().to_owned();
    let mut refused = Vec::new();
    for _ in 0..300 {
        refused = s.events(&token, "action=recording.refused").await;
        if !refused.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(refused.len(), 1, "the second recording is refused");
    assert_eq!(refused[0]["resource_id"], id.as_str());
    assert_eq!(refused[0]["details"]["reason"], "quota");
    assert_eq!(s.get("/v1/recordings", &token).await.expect(200).body["data"].as_array().unwrap().len(), 1);
    s.stop().await;
}
