//! SIP trunks over the operator API: master key only, strict validation,
//! the password sealed and never shown or audited.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

backend_tests!(
    trunk_lifecycle_never_shows_the_password,
    trunk_input_is_refused_field_by_field,
    tenant_credentials_cannot_touch_trunks,
    the_document_holds_the_trunk_rules,
);

const SECRET: &str = "carrier-secret-8c1f";

fn carrier(name: &str) -> Value {
    json!({
        "name": name,
        "uri": "sip:carrier.example:5060",
        "transport": "udp",
        "source_cidrs": ["192.0.2.77/24", "2001:db8::/32"],
        "auth": {"username": "palisade", "password": SECRET},
    })
}

fn fields(r: &crate::common::Resp) -> Vec<String> {
    assert_eq!(r.body["reason"], "validation_failed", "{}", r.text);
    r.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect()
}

async fn trunk_events(srv: &TestServer) -> Vec<Value> {
    let r = srv.admin(Method::GET, "/sysadmin/v1/events?resource_type=sip_trunk", None).await.expect(200);
    assert!(!r.text.contains(SECRET), "the password is in the audit trail");
    r.body["data"].as_array().unwrap().clone()
}

async fn trunk_lifecycle_never_shows_the_password(b: Backend) {
    let srv = TestServer::start(b).await;
    let made = srv.admin(Method::POST, "/sysadmin/v1/trunks", Some(carrier("Carrier One"))).await.expect(201);
    assert!(!made.text.contains(SECRET));
    let id = made.body["id"].as_str().unwrap().to_owned();
    let b = &made.body;
    assert_eq!(b["name"], "Carrier One");
    assert_eq!(b["uri"], "sip:carrier.example:5060");
    assert_eq!(b["transport"], "udp");
    // Stored canonical.
    assert_eq!(b["source_cidrs"], json!(["192.0.2.0/24", "2001:db8::/32"]));
    assert_eq!((b["enabled"].clone(), b["has_auth"].clone()), (json!(true), json!(true)));
    assert_eq!(b["auth_username"], "palisade");
    assert!(b.get("password").is_none() && b.get("auth_password").is_none());

    let one = format!("/sysadmin/v1/trunks/{id}");
    let got = srv.admin(Method::GET, &one, None).await.expect(200);
    assert_eq!(got.body, made.body);
    let list = srv.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200);
    assert!(!list.text.contains(SECRET));
    assert_eq!(list.body["data"], json!([made.body]));

    // Sealed in the row, not in clear.
    let row = palisade_store::sip_trunks::get(
        srv.state().db.reader(),
        &palisade_core::principal::SysadminProof::verified(),
        &id,
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!row.auth_password_sealed.as_deref().unwrap().contains(SECRET));
    let trunk = palisade_voice::trunks::get(&srv.state().db, &palisade_core::principal::SysadminProof::verified(), &id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(palisade_voice::trunks::open_password(&srv.state().sealer, &trunk).unwrap().as_deref(), Some(SECRET));

    let patch = json!({"enabled": false, "source_cidrs": ["203.0.113.9"], "uri": "sips:carrier.example",
        "transport": "tls"});
    let changed = srv.admin(Method::PATCH, &one, Some(patch)).await.expect(200);
    assert_eq!(changed.body["enabled"], false);
    assert_eq!(changed.body["source_cidrs"], json!(["203.0.113.9/32"]));
    assert_eq!(
        (changed.body["uri"].as_str(), changed.body["transport"].as_str()),
        (Some("sips:carrier.example"), Some("tls"))
    );
    assert_eq!(changed.body["has_auth"], true, "credentials stay unless changed");
    // New credentials, then none.
    let creds = json!({"auth": {"username": "other", "password": "another-secret-1"}});
    let changed = srv.admin(Method::PATCH, &one, Some(creds)).await.expect(200);
    assert!(!changed.text.contains("another-secret-1"));
    assert_eq!(changed.body["auth_username"], "other");
    let changed = srv.admin(Method::PATCH, &one, Some(json!({"auth": null}))).await.expect(200);
    assert_eq!((changed.body["has_auth"].clone(), changed.body["auth_username"].clone()), (json!(false), Value::Null));

    srv.admin(Method::DELETE, &one, None).await.expect(204);
    srv.admin(Method::GET, &one, None).await.expect(404);
    srv.admin(Method::DELETE, &one, None).await.expect(404);
    assert_eq!(srv.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200).body["data"], json!([]));

    let events = trunk_events(&srv).await;
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("another-secret-1"));
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for action in ["trunk.created", "trunk.read", "trunk.updated", "trunk.deleted"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let listed = srv.admin(Method::GET, "/sysadmin/v1/events?action=sysadmin.trunks_listed", None).await.expect(200);
    assert!(!listed.body["data"].as_array().unwrap().is_empty(), "listing is audited");
    let created = events.iter().find(|e| e["action"] == "trunk.created").unwrap();
    assert_eq!(created["resource_id"], id.as_str(), "{created}");
    assert_eq!(created["resource_type"], "sip_trunk");
    assert_eq!(created["details"]["has_auth"], true);
    assert_eq!(created["actor"]["type"], "sysadmin");
    srv.stop().await;
}

async fn trunk_input_is_refused_field_by_field(b: Backend) {
    let srv = TestServer::start(b).await;
    let post = |body: Value| srv.admin(Method::POST, "/sysadmin/v1/trunks", Some(body));
    let bad = json!({"name": "no/slash", "uri": "sip:user:pw@carrier.example", "transport": "sctp",
        "source_cidrs": ["0.0.0.0/0"], "auth": {"username": "a b", "password": "short"}});
    let r = post(bad).await.expect(400);
    assert_eq!(fields(&r), ["name", "uri", "transport", "source_cidrs", "auth.username", "auth.password"]);
    assert!(!r.text.contains("pw@"), "the refused password is not echoed");

    let with = |k: &str, v: Value| {
        let mut body = carrier("Fine");
        body[k] = v;
        body
    };
    for (body, field) in [
        (with("uri", json!("sips:carrier.example")), "transport"),
        (with("uri", json!("sip:carrier.example;transport=tcp")), "uri"),
        (with("uri", json!(format!("sip:{}.example", "a".repeat(250)))), "uri"),
        (with("source_cidrs", json!(["::/0"])), "source_cidrs"),
        (with("source_cidrs", json!(["::ffff:0.0.0.0/96"])), "source_cidrs"),
        (with("source_cidrs", json!([])), "source_cidrs"),
        (with("source_cidrs", json!(["carrier.example"])), "source_cidrs"),
        (with("name", json!("x".repeat(65))), "name"),
        (with("auth", json!({"username": "u", "password": "p".repeat(129)})), "auth.password"),
    ] {
        let r = post(body.clone()).await.expect(400);
        assert_eq!(fields(&r), [field], "{body}");
    }
    // Both or neither, and nothing unknown.
    post(with("auth", json!({"username": "u"}))).await.expect(400);
    post(with("auth_password", json!(SECRET))).await.expect(400);
    post(with("transport", json!("TLS"))).await.expect(400);
    assert_eq!(srv.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200).body["data"], json!([]));

    let made = post(carrier("Fine")).await.expect(201);
    let dup = post(carrier("Fine")).await.expect(409);
    assert_eq!(dup.body["reason"], "conflict");
    let one = format!("/sysadmin/v1/trunks/{}", made.body["id"].as_str().unwrap());
    // A change that breaks the whole is refused, and nothing changes.
    let r = srv.admin(Method::PATCH, &one, Some(json!({"uri": "sips:carrier.example"}))).await.expect(400);
    assert_eq!(fields(&r), ["transport"]);
    let r = srv.admin(Method::PATCH, &one, Some(json!({"source_cidrs": ["0.0.0.0/0"]}))).await.expect(400);
    assert_eq!(fields(&r), ["source_cidrs"]);
    srv.admin(Method::PATCH, &one, Some(json!({"name": "Renamed"}))).await.expect(400);
    assert_eq!(srv.admin(Method::GET, &one, None).await.expect(200).body, made.body);

    let unknown = format!("/sysadmin/v1/trunks/{}", uuid::Uuid::now_v7());
    srv.admin(Method::GET, &unknown, None).await.expect(404);
    srv.admin(Method::PATCH, &unknown, Some(json!({"enabled": false}))).await.expect(404);
    srv.admin(Method::DELETE, &unknown, None).await.expect(404);
    srv.admin(Method::GET, "/sysadmin/v1/trunks/not-a-uuid", None).await.expect(404);
    srv.stop().await;
}

async fn tenant_credentials_cannot_touch_trunks(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Tenant").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "owner key", "role": "owner"})).await;
    let made = srv.admin(Method::POST, "/sysadmin/v1/trunks", Some(carrier("Carrier"))).await.expect(201);
    let one = format!("/sysadmin/v1/trunks/{}", made.body["id"].as_str().unwrap());
    for cred in [Some(t.token.as_str()), Some(key.as_str()), None] {
        for (method, path, body) in [
            (Method::POST, "/sysadmin/v1/trunks", Some(carrier("Mine"))),
            (Method::GET, "/sysadmin/v1/trunks", None),
            (Method::GET, one.as_str(), None),
            (Method::PATCH, one.as_str(), Some(json!({"enabled": false}))),
            (Method::DELETE, one.as_str(), None),
        ] {
            let r = srv.call(method.clone(), path, cred, body).await;
            assert_eq!(r.status, 401, "{method} {path}: {}", r.text);
            assert!(!r.text.contains(SECRET));
        }
    }
    let list = srv.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200);
    assert_eq!(list.body["data"], json!([made.body]), "nothing changed");
    srv.stop().await;
}

/// The schemas are as strict as the validation (Schemathesis judges the
/// rest against them, .ci/schemathesis_hooks.py).
async fn the_document_holds_the_trunk_rules(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = srv.call(Method::GET, "/v1/openapi.json", None, None).await.expect(200).body;
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    let create = schema("CreateTrunkRequest");
    let p = &create["properties"];
    assert_eq!(create["required"], json!(["name", "uri", "transport", "source_cidrs"]));
    assert_eq!(
        (p["name"]["maxLength"].as_u64(), p["name"]["pattern"].as_str()),
        (Some(64), Some("^[A-Za-z0-9 _.-]{1,64}$"))
    );
    assert_eq!(p["uri"]["maxLength"], 255);
    assert!(p["uri"]["pattern"].as_str().unwrap().starts_with("^sips?:"));
    assert_eq!((p["source_cidrs"]["minItems"].as_u64(), p["source_cidrs"]["maxItems"].as_u64()), (Some(1), Some(32)));
    assert_eq!(p["source_cidrs"]["items"]["maxLength"], 49);
    assert_eq!(schema("TrunkTransport")["enum"], json!(["udp", "tcp", "tls"]));
    let auth = schema("TrunkAuthInput");
    assert_eq!(auth["required"], json!(["username", "password"]));
    assert_eq!(
        (auth["properties"]["password"]["minLength"].as_u64(), auth["properties"]["password"]["maxLength"].as_u64()),
        (Some(8), Some(128))
    );
    // In a change, `auth` may be null (removes the credentials).
    let patch_auth = schema("UpdateTrunkRequest")["properties"]["auth"].to_string();
    assert!(patch_auth.contains("null") && patch_auth.contains("TrunkAuthInput"), "{patch_auth}");
    let view = schema("TrunkView");
    assert!(view["properties"].get("password").is_none() && view["properties"].get("auth_password").is_none());
    for (path, methods) in
        [("/sysadmin/v1/trunks", &["get", "post"][..]), ("/sysadmin/v1/trunks/{id}", &["get", "patch", "delete"])]
    {
        for m in methods {
            let op = &doc["paths"][path][m];
            assert_eq!(op["security"], json!([{"operator": []}, {"master_key": []}]), "{m} {path}");
            assert!(op["responses"].get("401").is_some(), "{m} {path}");
        }
    }
    srv.stop().await;
}
