//! Tenant isolation, proven by walking EVERY `/v1` route in the OpenAPI
//! document (generated from the router) with a second tenant's
//! credentials. A route added later is walked automatically; one whose
//! path names a resource the walker has no fixture for fails the test.

use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::common::{Backend, Resp, TestServer};
use crate::mfa::enrol;

backend_tests!(every_v1_route_hides_other_tenants, a_step_up_proves_only_the_callers_own_factor);

/// What tenant A owns, for the walker to aim at.
struct Victim {
    tenant_id: String,
    token: String,
    key_id: String,
    key: String,
    user_id: String,
    owner_id: String,
    event_id: String,
    identity_id: String,
    message_id: String,
    call_id: String,
    cdr_id: String,
    webhook_id: String,
    delivery_id: String,
    sip_username: String,
    export_id: String,
    recording_id: String,
}

impl Victim {
    /// The id of A's resource for a path like `/v1/<collection>/{id}/...`.
    fn id_for(&self, path: &str) -> &str {
        let collection = path.trim_start_matches("/v1/").split('/').next().unwrap();
        match collection {
            "api-keys" => &self.key_id,
            "users" => &self.user_id,
            "events" => &self.event_id,
            "identities" => &self.identity_id,
            "messages" => &self.message_id,
            "calls" => &self.call_id,
            "cdrs" => &self.cdr_id,
            "webhooks" => &self.webhook_id,
            "exports" => &self.export_id,
            "recordings" => &self.recording_id,
            // `/v1/me/passkeys/{id}`: the caller's own only; any id of A's.
            "me" => &self.user_id,
            other => panic!("the isolation walker has no fixture for `/v1/{other}/{{id}}` ({path}): add one"),
        }
    }

    fn ids(&self) -> [&str; 14] {
        [
            &self.tenant_id,
            &self.key_id,
            &self.user_id,
            &self.owner_id,
            &self.event_id,
            &self.identity_id,
            &self.message_id,
            &self.call_id,
            &self.cdr_id,
            &self.webhook_id,
            &self.delivery_id,
            &self.sip_username,
            &self.export_id,
            &self.recording_id,
        ]
    }
}

/// A recorded call, answered then hung up: its recording's id.
async fn recording(srv: &TestServer, token: &str) -> String {
    let body = json!({"from": "+34612000111", "to": "+34612000222", "record": true});
    let call = srv.post("/v1/calls", token, body).await.expect(201).body["id"].as_str().unwrap().to_owned();
    for _ in 0..200 {
        if srv.get(&format!("/v1/calls/{call}"), token).await.expect(200).body["status"] == "in_progress" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    srv.post(&format!("/v1/calls/{call}/hangup"), token, json!({})).await.expect(200);
    for _ in 0..200 {
        let list = srv.get(&format!("/v1/recordings?call_id={call}"), token).await.expect(200).body;
        if let Some(id) = list["data"][0]["id"].as_str() {
            return id.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the recorded call has no recording");
}

async fn every_v1_route_hides_other_tenants(b: Backend) {
    let srv =
        TestServer::start_with(b, |c| c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()]).await;
    let a = srv.tenant("Victim").await;
    let (key_id, key) = srv.api_key(&a.token, json!({"name": "victim key", "role": "admin"})).await;
    let user = srv
        .post("/v1/users", &a.token, json!({"email": "victim-user@example.com", "role": "read_only"}))
        .await
        .expect(201);
    let identity = srv.post("/v1/identities", &a.token, json!({"number": "+34612000111"})).await.expect(201);
    let identity_id = identity.body["id"].as_str().unwrap().to_owned();
    let sip = srv.post(&format!("/v1/identities/{identity_id}/sip-credentials"), &a.token, json!({})).await.expect(201);
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", a.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let message = srv
        .post("/v1/messages", &a.token, json!({"from": "+34612000111", "to": "+34612000222", "body": "hello"}))
        .await
        .expect(201);
    let call = srv.post("/v1/calls", &a.token, json!({"from": "+34612000111", "to": "+34612000222"})).await.expect(201);
    let call_id = call.body["id"].as_str().unwrap().to_owned();
    srv.post(&format!("/v1/calls/{call_id}/hangup"), &a.token, json!({})).await.expect(200);
    let cdr = srv.get("/v1/cdrs", &a.token).await.expect(200);
    let recording_id = recording(&srv, &a.token).await;
    // An endpoint nobody listens on: its delivery stays queued.
    let webhook = srv
        .post("/v1/webhooks", &a.token, json!({"url": "http://127.0.0.1:9/hook", "events": ["webhook.test"]}))
        .await
        .expect(201);
    let webhook_id = webhook.body["id"].as_str().unwrap().to_owned();
    let test = srv.post(&format!("/v1/webhooks/{webhook_id}/test"), &a.token, json!({})).await.expect(202);
    let export = srv.post("/v1/exports", &a.token, json!({})).await.expect(202);
    let victim = Victim {
        tenant_id: a.id.clone(),
        token: a.token.clone(),
        key_id,
        key,
        user_id: user.body["id"].as_str().unwrap().to_owned(),
        owner_id: a.owner_id.clone(),
        event_id: srv.events(&a.token, "").await[0]["id"].as_str().unwrap().to_owned(),
        identity_id: identity.body["id"].as_str().unwrap().to_owned(),
        message_id: message.body["id"].as_str().unwrap().to_owned(),
        call_id,
        cdr_id: cdr.body["data"][0]["id"].as_str().unwrap().to_owned(),
        webhook_id,
        delivery_id: test.body["id"].as_str().unwrap().to_owned(),
        sip_username: sip.body["username"].as_str().unwrap().to_owned(),
        export_id: export.body["id"].as_str().unwrap().to_owned(),
        recording_id,
    };
    let b_tenant = srv.tenant("Attacker").await;
    let (_, b_key) = srv.api_key(&b_tenant.token, json!({"name": "attacker key", "role": "owner"})).await;

    let doc = srv.call(Method::GET, "/v1/openapi.json", None, None).await.expect(200).body;
    let (mut walked, mut walked_paths) = (0, std::collections::BTreeSet::new());
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let body = op.pointer("/requestBody/content/application~1json/schema").map(|s| example(s, &doc));
            for cred in [&b_tenant.token, &b_key] {
                if check_route(&srv, &victim, cred, &method, path, body.clone(), op).await {
                    walked += 1;
                    walked_paths.insert(path.as_str());
                }
            }
        }
    }
    assert!(walked >= 20, "the walker saw only {walked} route/credential pairs");
    // The session routes that act with the caller's token are among them.
    for path in ["/v1/auth/step-up", "/v1/auth/step-up/passkey"] {
        assert!(walked_paths.contains(path), "{path} was not walked");
    }

    // A's resources are untouched by everything B did.
    let k = srv.get(&format!("/v1/api-keys/{}", victim.key_id), &victim.token).await.expect(200);
    assert_eq!(k.body["status"], "active");
    srv.get("/v1/me", &victim.key).await.expect(200);
    let u = srv.get(&format!("/v1/users/{}", victim.user_id), &victim.token).await.expect(200);
    assert_eq!(u.body["role"], "read_only");
    srv.get("/v1/me", &victim.token).await.expect(200);
    let i = srv.get(&format!("/v1/identities/{}", victim.identity_id), &victim.token).await.expect(200);
    assert_eq!(i.body["number"], "+34612000111");
    assert!(i.body.get("agent_token_prefix").is_none());
    let sip = srv.get(&format!("/v1/identities/{}/sip-credentials", victim.identity_id), &victim.token).await;
    assert_eq!(sip.expect(200).body["data"][0]["username"], victim.sip_username.as_str());
    srv.stop().await;
}

/// A step-up acts on the caller's own person only: another tenant's
/// person cannot give the victim's factor through it, nor lock it.
async fn a_step_up_proves_only_the_callers_own_factor(b: Backend) {
    // Every failure here is from one client address: its own lockout
    // (tested elsewhere) is out of the way.
    let s = TestServer::start_with(b, |c| c.lockout.credential_failures_per_ip = 1000).await;
    let a = s.tenant("Victim").await;
    let (member, _) = s.member(&a.token, "victim-user@example.com", "read_only").await;
    let (a_app, a_codes, a_token) = enrol(&s, &a.token).await;
    let b_tenant = s.tenant("Attacker").await;
    let (b_app, _, _) = enrol(&s, &b_tenant.token).await;
    // A fresh step where the two apps' codes differ (they agree once in a
    // million steps).
    s.clock.advance_ms(30_000);
    while a_app.code(&s) == b_app.code(&s) {
        s.clock.advance_ms(30_000);
    }
    for theirs in [json!({"code": a_app.code(&s)}), json!({"recovery_code": a_codes[0]})] {
        s.post("/v1/auth/step-up", &b_tenant.token, theirs).await.expect(401);
    }
    // Stepped up with their own factor, the attacker still reaches none of
    // the victim's people.
    let r = s.post("/v1/auth/step-up", &b_tenant.token, json!({"code": b_app.code(&s)})).await.expect(200);
    let b_stepped = r.body["access_token"].as_str().unwrap().to_owned();
    let path = format!("/v1/users/{member}");
    s.call(Method::PATCH, &path, Some(&b_stepped), Some(json!({"role": "admin"}))).await.expect(404);
    assert_eq!(s.get(&path, &a_token).await.expect(200).body["role"], "read_only");
    // The attacker's wrong codes lock the attacker's factor, not the victim's.
    let wrong = format!("{:06}", (b_app.code(&s).parse::<u32>().unwrap() + 1) % 1_000_000);
    for _ in 0..5 {
        s.post("/v1/auth/step-up", &b_tenant.token, json!({"code": wrong})).await.expect(401);
    }
    s.clock.advance_ms(30_000);
    s.post("/v1/auth/step-up", &b_tenant.token, json!({"code": b_app.code(&s)})).await.expect(401);
    s.post("/v1/auth/step-up", &a_token, json!({"code": a_app.code(&s)})).await.expect(200);
    assert_eq!(s.get("/v1/me/mfa", &a_token).await.expect(200).body["recovery_codes_left"], 10);
}

/// Calls one route as the other tenant; whether it was walked (some are
/// not a tenant credential's to call).
async fn check_route(
    srv: &TestServer,
    v: &Victim,
    cred: &str,
    method: &Method,
    path: &str,
    body: Option<Value>,
    op: &Value,
) -> bool {
    // A WebSocket route answers a plain request 426 (its stream tests
    // check its scoping).
    let websocket = op.pointer("/responses/101").is_some();
    let bearer = op["security"].as_array().is_some_and(|s| s.iter().any(|r| r.get("bearer").is_some()));
    if path.starts_with("/v1/inbound/") {
        // Authenticated by the provider's signature, not a tenant's
        // credential; it names no tenant resource in its path.
        return false;
    } else if path.starts_with("/v1/auth/") && (!bearer || path == "/v1/auth/logout") {
        // Sign-in endpoints take no credential; their only path parameter
        // is a configured single sign-on provider's name. Those that take
        // the caller's token (step-up) are walked below; logout would end
        // the walker's own credential.
        return false;
    } else if path.contains('{') {
        let target = path
            .replace("{id}", v.id_for(path))
            .replace("{delivery_id}", &v.delivery_id)
            .replace("{username}", &v.sip_username);
        let random = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{delivery_id}", &v.delivery_id)
            .replace("{username}", &v.sip_username);
        let theirs = srv.call(method.clone(), &target, Some(cred), body.clone()).await;
        let missing = srv.call(method.clone(), &random, Some(cred), body).await;
        assert_eq!(theirs.status, 404, "{method} {path} on another tenant's id: {}", theirs.text);
        assert_eq!(theirs.problem_shape(), missing.problem_shape(), "{method} {path}: body differs from a random id");
        assert_no_leak(&theirs, v, method, path);
    } else {
        let r = srv.call(method.clone(), path, Some(cred), body).await;
        assert!(r.status < 500, "{method} {path}: {}", r.text);
        // A person's own second factors: a key has none (403).
        let person_only = (path == "/v1/me/mfa" || path == "/v1/me/passkeys") && cred.starts_with("ak_");
        if *method == Method::GET {
            let expected = if websocket {
                426
            } else if person_only {
                403
            } else {
                200
            };
            assert_eq!(r.status, expected, "{method} {path}: {}", r.text);
        }
        assert_no_leak(&r, v, method, path);
    }
    true
}

fn assert_no_leak(r: &Resp, v: &Victim, method: &Method, path: &str) {
    for id in v.ids() {
        assert!(!r.text.contains(id), "{method} {path} leaked another tenant's id {id}: {}", r.text);
    }
}

/// A minimal valid instance of a JSON schema: required properties only,
/// the first enum value, resolving `$ref`s into the document's components.
fn example(schema: &Value, doc: &Value) -> Value {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let pointer = r.trim_start_matches('#');
        return example(doc.pointer(pointer).unwrap_or(&Value::Null), doc);
    }
    for combo in ["oneOf", "anyOf", "allOf"] {
        if let Some(first) = schema
            .get(combo)
            .and_then(Value::as_array)
            .and_then(|v| v.iter().find(|s| s.get("type") != Some(&json!("null"))))
        {
            return example(first, doc);
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array).and_then(|e| e.first()) {
        return e.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::Array(types)) => types.iter().find(|t| *t != "null").cloned().unwrap_or(Value::Null),
        Some(t) => t.clone(),
        None => Value::Null,
    };
    match ty.as_str() {
        Some("object") => {
            let mut out = Map::new();
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for name in required {
                    if let Some(p) = props.get(name) {
                        out.insert(name.to_owned(), example(p, doc));
                    }
                }
            }
            Value::Object(out)
        }
        Some("array") => json!([]),
        Some("string") => {
            let name = schema.get("format").and_then(Value::as_str).unwrap_or("");
            match name {
                "email" => json!("walker@example.com"),
                _ => json!("walker-example"),
            }
        }
        Some("integer") | Some("number") => json!(1),
        Some("boolean") => json!(false),
        _ => Value::Null,
    }
}
