//! The OpenAPI document describes the server exactly (SPEC §11): every
//! parameter where the server reads it, every problem response of every
//! operation, and bounds as strict as the server's validation. The
//! conformance run (.ci/steps/20-schemathesis.sh) checks the rest from
//! outside; these tests pin the rules and check the bounds against the
//! server itself.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

backend_tests!(
    parameters_are_where_the_server_reads_them,
    every_operation_documents_its_problems,
    refusals_are_documented_problems,
    request_numbers_are_bounded,
    bounds_are_the_servers,
    whole_numbers_are_integers,
    query_errors_are_problems,
);

const METHODS: [&str; 5] = ["get", "put", "post", "patch", "delete"];

async fn document(srv: &TestServer) -> Value {
    srv.call(Method::GET, "/v1/openapi.json", None, None).await.expect(200).body
}

/// (path, method, operation) for every operation.
fn operations(doc: &Value) -> Vec<(String, &'static str, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                out.push((path.clone(), method, op.clone()));
            }
        }
    }
    assert!(out.len() >= 60, "only {} operations", out.len());
    out
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => resolve(doc, doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("dangling {r}"))),
        None => v,
    }
}

async fn parameters_are_where_the_server_reads_them(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = document(&srv).await;
    let mut query = 0;
    for (path, method, op) in operations(&doc) {
        let template: Vec<&str> =
            path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        for p in &params {
            let name = p["name"].as_str().unwrap();
            if p["in"] == "path" {
                assert!(template.contains(&name), "{method} {path}: `{name}` is `in: path` but not in the path");
                assert_eq!(p["required"], true, "{method} {path}: path parameter `{name}`");
            }
            query += usize::from(p["in"] == "query");
        }
        for name in template {
            assert!(
                params.iter().any(|p| p["in"] == "path" && p["name"] == name),
                "{method} {path}: `{{{name}}}` is not described"
            );
        }
    }
    // The paging and filters of the lists, and the usage window.
    assert!(query >= 24, "only {query} query parameters");
    let events = &doc["paths"]["/v1/events"]["get"]["parameters"];
    assert!(events.as_array().unwrap().iter().all(|p| p["in"] == "query" && p["required"] == false));
    srv.stop().await;
}

async fn every_operation_documents_its_problems(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = document(&srv).await;
    for (path, method, op) in operations(&doc) {
        let responses = op["responses"].as_object().unwrap();
        let has = |s: &str| responses.contains_key(s);
        for (status, r) in responses {
            if status.as_str() < "400" {
                continue;
            }
            let content = resolve(&doc, r)["content"].as_object().unwrap_or_else(|| panic!("{method} {path} {status}"));
            let types: Vec<&String> = content.keys().collect();
            assert_eq!(types, ["application/problem+json"], "{method} {path} {status}");
            let schema = &content["application/problem+json"]["schema"];
            assert_eq!(schema["$ref"], "#/components/schemas/Problem", "{method} {path} {status}");
        }
        // What every request can meet on the way to its handler.
        for s in ["403", "429", "500"] {
            assert!(has(s), "{method} {path} documents no {s}");
        }
        let schemes = op["security"].to_string();
        if schemes.contains("bearer") || schemes.contains("master_key") {
            assert!(has("401"), "{method} {path} documents no 401");
        }
        if schemes.contains("bearer") {
            assert!(has("423"), "{method} {path} documents no 423 (frozen)");
        }
        if path.contains('{') {
            assert!(has("404"), "{method} {path} documents no 404");
        }
        if op.get("requestBody").is_some() {
            for s in ["400", "413"] {
                assert!(has(s), "{method} {path} documents no {s}");
            }
            if !path.starts_with("/v1/inbound/") {
                assert!(has("415"), "{method} {path} documents no 415");
            }
        }
    }
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail", "reason"] {
        assert!(problem["required"].as_array().unwrap().contains(&json!(field)), "Problem.{field}");
    }
    srv.stop().await;
}

/// Every operation, called without a credential or a body: whatever the
/// server answers is a documented problem.
async fn refusals_are_documented_problems(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = document(&srv).await;
    for (path, method, op) in operations(&doc) {
        let url = path
            .replace("{provider}", "nobody")
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{delivery_id}", &uuid::Uuid::new_v4().to_string());
        let r = srv.call(method.to_uppercase().parse().unwrap(), &url, None, None).await;
        if r.status < 400 {
            continue;
        }
        let status = r.status.to_string();
        assert!(op["responses"].get(&status).is_some(), "{method} {path}: {status} is not documented: {}", r.text);
        assert_eq!(r.headers["content-type"], "application/problem+json", "{method} {path}");
        assert_eq!(r.body["status"], r.status, "{method} {path}");
    }
    srv.stop().await;
}

/// Each integer of a request schema (body or parameter), with where it is.
fn request_integers(doc: &Value) -> Vec<(String, Value)> {
    fn walk(doc: &Value, at: String, s: &Value, seen: &mut Vec<String>, out: &mut Vec<(String, Value)>) {
        if let Some(r) = s.get("$ref").and_then(Value::as_str) {
            if seen.iter().any(|x| x == r) {
                return;
            }
            seen.push(r.to_owned());
            return walk(doc, format!("{at}({r})"), resolve(doc, s), seen, out);
        }
        let types = s["type"].to_string();
        if types.contains("integer") {
            out.push((at.clone(), s.clone()));
        }
        for (name, p) in s["properties"].as_object().into_iter().flatten() {
            walk(doc, format!("{at}.{name}"), p, seen, out);
        }
        for key in ["items", "not"] {
            if let Some(inner) = s.get(key) {
                walk(doc, format!("{at}[]"), inner, seen, out);
            }
        }
        for key in ["oneOf", "anyOf", "allOf"] {
            for inner in s[key].as_array().into_iter().flatten() {
                walk(doc, at.clone(), inner, seen, out);
            }
        }
    }
    let mut out = Vec::new();
    for (path, method, op) in operations(doc) {
        let mut seen = Vec::new();
        for p in op["parameters"].as_array().into_iter().flatten() {
            walk(doc, format!("{method} {path} {}", p["name"]), &p["schema"], &mut seen, &mut out);
        }
        if let Some(s) = op.pointer("/requestBody/content/application~1json/schema") {
            walk(doc, format!("{method} {path} body"), s, &mut seen, &mut out);
        }
    }
    out
}

/// Every integer the server reads is bounded on both sides, and one the
/// document calls `int32` never goes past what an int32 holds (the server
/// refuses more), so a client generated from it cannot be surprised.
async fn request_numbers_are_bounded(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = document(&srv).await;
    let integers = request_integers(&doc);
    assert!(integers.len() >= 10, "{integers:?}");
    for (at, s) in integers {
        let (min, max) = (s["minimum"].as_i64(), s["maximum"].as_i64());
        assert!(min.is_some() && max.is_some(), "{at} is not bounded: {s}");
        if s["format"] == "int32" {
            assert!(max.unwrap() <= i64::from(i32::MAX), "{at}: int32 up to {max:?}");
        }
    }
    // Every string of a body is at most the text limit (SPEC §6).
    let create = resolve(&doc, &doc["components"]["schemas"]["CreateKeyRequest"]).clone();
    assert_eq!(create["properties"]["name"]["maxLength"], 200);
    assert_eq!(create["properties"]["allowed_ips"]["items"]["maxLength"], 8192);
    srv.stop().await;
}

/// A bound of the document, read from it, is the server's: its value is
/// accepted and one past it refused.
async fn bounds_are_the_servers(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = document(&srv).await;
    let t = srv.tenant("Bounds").await;
    let schema = |name: &str| doc["components"]["schemas"][name].clone();
    let param = |path: &str, name: &str| {
        let params = doc["paths"][path]["get"]["parameters"].as_array().unwrap();
        params.iter().find(|p| p["name"] == name).unwrap()["schema"].clone()
    };

    for (path, min) in [("/v1/messages", 1), ("/v1/calls", 1), ("/v1/cdrs", 1), ("/v1/events", 1)] {
        let limit = param(path, "limit");
        assert_eq!(limit["minimum"], min, "{path}");
        assert_eq!(limit["format"], "int64", "{path}");
        let max = limit["maximum"].as_i64().unwrap();
        srv.get(&format!("{path}?limit={max}"), &t.token).await.expect(200);
        srv.get(&format!("{path}?limit={}", max + 1), &t.token).await.expect(400);
        srv.get(&format!("{path}?limit={}", min - 1), &t.token).await.expect(400);
    }

    let rate = &schema("PolicyInput")["properties"]["rate_per_second"];
    let max = rate["maximum"].as_i64().unwrap();
    assert_eq!((rate["minimum"].as_i64(), max), (Some(1), 10_000));
    let policy = |rate: i64| json!({"number": "+34612000111", "policy": {"rate_per_second": rate}});
    srv.post("/v1/identities", &t.token, policy(max + 1)).await.expect(400);
    srv.post("/v1/identities", &t.token, policy(u32::MAX as i64 + 1)).await.expect(400);
    srv.post("/v1/identities", &t.token, policy(max)).await.expect(201);

    let amount = &schema("TopUpRequest")["properties"]["amount"];
    assert_eq!(amount["format"], "int64");
    let max = amount["maximum"].as_i64().unwrap();
    let credits = format!("/sysadmin/v1/tenants/{}/credits", t.id);
    srv.admin(Method::POST, &credits, Some(json!({"amount": max + 1}))).await.expect(400);
    srv.admin(Method::POST, &credits, Some(json!({"amount": 0}))).await.expect(400);
    srv.admin(Method::POST, &credits, Some(json!({"amount": max}))).await.expect(200);

    let grace = &schema("RotateRequest")["properties"]["grace_seconds"];
    let max = grace["maximum"].as_i64().unwrap();
    let (key, _) = srv.api_key(&t.token, json!({"name": "rotated", "role": "read_only"})).await;
    let rotate = format!("/v1/api-keys/{key}/rotate");
    srv.post(&rotate, &t.token, json!({"grace_seconds": max + 1})).await.expect(400);
    srv.post(&rotate, &t.token, json!({"grace_seconds": max})).await.expect(200);

    // A tenant's limits: the document's maximum, not u32's.
    let limits = schema("TenantLimits");
    let put = format!("/sysadmin/v1/tenants/{}/limits", t.id);
    for field in ["key_per_minute", "tenant_per_minute", "message_create_per_minute", "concurrent_calls"] {
        let max = limits["properties"][field]["maximum"].as_i64().unwrap();
        assert!(max <= i64::from(i32::MAX), "{field}");
        let one = |v: i64| Value::Object([(field.to_owned(), json!(v))].into_iter().collect());
        srv.admin(Method::PUT, &put, Some(one(max + 1))).await.expect(400);
        srv.admin(Method::PUT, &put, Some(one(max))).await.expect(200);
    }
    srv.stop().await;
}

/// `5.0` is the integer 5 in JSON (and in JSON Schema's `integer`); `5.5`
/// is not.
async fn whole_numbers_are_integers(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Numbers").await;
    let (key, _) = srv.api_key(&t.token, json!({"name": "rotated", "role": "read_only"})).await;
    let rotate = format!("/v1/api-keys/{key}/rotate");
    srv.post(&rotate, &t.token, json!({"grace_seconds": 1.5})).await.expect(400);
    let r = srv.post(&rotate, &t.token, json!({"grace_seconds": 60.0})).await.expect(200);
    assert!(r.body["previous_key_valid_until"].is_string());
    let credits = format!("/sysadmin/v1/tenants/{}/credits", t.id);
    let r = srv.admin(Method::POST, &credits, Some(json!({"amount": 250.0}))).await.expect(200);
    assert_eq!(r.body["balance"], 250);
    srv.admin(Method::POST, &credits, Some(json!({"amount": 2.5}))).await.expect(400);
    srv.stop().await;
}

/// A query the server cannot read is a problem naming the query.
async fn query_errors_are_problems(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Queries").await;
    for path in ["/v1/messages?limit=many", "/v1/calls?bogus=1", "/v1/usage?granularity=day", "/v1/cdrs?limit=1.5"] {
        let r = srv.get(path, &t.token).await.expect(400);
        assert_eq!(r.headers["content-type"], "application/problem+json", "{path}");
        assert_eq!(r.body["reason"], "validation_failed", "{path}");
        assert_eq!(r.body["errors"][0]["field"], "query", "{path}: {}", r.text);
    }
    srv.stop().await;
}
