//! Input rules (SPEC §6), response headers (§5) and error shape (§4).

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    body_limit_both_ways,
    json_only_and_well_formed,
    text_is_normalized_and_bounded,
    ids_and_unknown_routes,
    security_headers_and_request_id,
    cors_closed_by_default,
);

const LIMIT: usize = 25 * 1024 * 1024;

async fn key_count(srv: &TestServer, token: &str) -> usize {
    srv.get("/v1/api-keys", token).await.expect(200).body["data"].as_array().unwrap().len()
}

async fn body_limit_both_ways(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Big").await;
    let body = serde_json::to_vec(&json!({"name": "a".repeat(LIMIT + 1024), "role": "read_only"})).unwrap();

    // Declared length over the limit: refused before the body is read.
    let (status, problem) = srv
        .raw_post(
            "/v1/api-keys",
            Some(&t.token),
            &format!("Content-Length: {}\r\n", body.len()),
            vec![body[..1024].to_vec()],
        )
        .await;
    assert_eq!(status, 413);
    assert_eq!(problem["reason"], "payload_too_large");

    // Chunked, no length declared: refused once the limit is crossed.
    let chunks: Vec<Vec<u8>> = body
        .chunks(1024 * 1024)
        .map(|c| [format!("{:x}\r\n", c.len()).into_bytes(), c.to_vec(), b"\r\n".to_vec()].concat())
        .chain(std::iter::once(b"0\r\n\r\n".to_vec()))
        .collect();
    let (status, problem) =
        srv.raw_post("/v1/api-keys", Some(&t.token), "Transfer-Encoding: chunked\r\n", chunks).await;
    assert_eq!(status, 413);
    assert_eq!(problem["reason"], "payload_too_large");
    assert!(problem["request_id"].is_string());

    // Just under the limit is read (and then judged on its content).
    let ok = serde_json::to_vec(&json!({"name": "fine", "role": "read_only"})).unwrap();
    let (status, _) =
        srv.raw_post("/v1/api-keys", Some(&t.token), &format!("Content-Length: {}\r\n", ok.len()), vec![ok]).await;
    assert_eq!(status, 201);
    assert_eq!(key_count(&srv, &t.token).await, 1, "nothing of the refused bodies may be stored");
    srv.stop().await;
}

async fn json_only_and_well_formed(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Json").await;
    let raw = |ct: &str, body: Vec<u8>| {
        srv.request(Method::POST, "/v1/api-keys").bearer_auth(&t.token).header("content-type", ct.to_owned()).body(body)
    };
    let ok = br#"{"name":"k","role":"read_only"}"#.to_vec();
    let r = TestServer::send(raw("text/plain", ok.clone())).await.expect(415);
    assert_eq!(r.body["reason"], "unsupported_media_type");
    TestServer::send(raw("application/x-www-form-urlencoded", b"name=k".to_vec())).await.expect(415);
    TestServer::send(raw("application/json; charset=latin1", ok.clone())).await.expect(415);
    TestServer::send(srv.request(Method::POST, "/v1/api-keys").bearer_auth(&t.token).body(ok.clone()))
        .await
        .expect(415);

    for bad in [
        b"{".to_vec(),
        b"{\"name\": }".to_vec(),
        b"\xff\xfe{}".to_vec(),
        b"{\"name\":\"\xc3\x28\",\"role\":\"admin\"}".to_vec(),
        Vec::new(),
    ] {
        let r = TestServer::send(raw("application/json", bad)).await.expect(400);
        assert_eq!(r.body["reason"], "validation_failed");
    }
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let r = TestServer::send(raw("application/json", deep.into_bytes())).await.expect(400);
    assert!(r.text.contains("nesting"), "{}", r.text);
    // A repeated key is ambiguous (which one did a filter in front see?).
    let r = TestServer::send(raw("application/json", br#"{"name":"k","role":"owner","role":"read_only"}"#.to_vec()))
        .await
        .expect(400);
    assert!(r.text.contains("duplicate field"), "{}", r.text);
    // Unknown fields are refused rather than ignored.
    let r =
        srv.post("/v1/api-keys", &t.token, json!({"name": "k", "role": "read_only", "rol": "owner"})).await.expect(400);
    assert_eq!(r.body["reason"], "validation_failed");
    assert_eq!(key_count(&srv, &t.token).await, 0);
    TestServer::send(raw("application/json; charset=utf-8", ok)).await.expect(201);
    srv.stop().await;
}

async fn text_is_normalized_and_bounded(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Text").await;
    let r = srv
        .post("/v1/api-keys", &t.token, json!({"name": "Cafe\u{301} \u{0}bar\u{7}\u{1b}", "role": "read_only"}))
        .await
        .expect(201);
    assert_eq!(r.body["name"], "Caf\u{e9} bar");
    let r =
        srv.post("/v1/api-keys", &t.token, json!({"name": "x".repeat(8193), "role": "read_only"})).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "name");
    assert!(r.body["errors"][0]["message"].as_str().unwrap().contains("8192"));
    // Within the general limit but over the field's own.
    srv.post("/v1/api-keys", &t.token, json!({"name": "x".repeat(300), "role": "read_only"})).await.expect(400);
    srv.stop().await;
}

async fn ids_and_unknown_routes(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Ids").await;
    let random = srv.get(&format!("/v1/api-keys/{}", uuid::Uuid::new_v4()), &t.token).await.expect(404);
    for bad in ["not-a-uuid", "1", "%00", "..%2F..%2Fetc", "' OR 1=1 --"] {
        let r = srv.get(&format!("/v1/api-keys/{bad}"), &t.token).await;
        assert_eq!(r.status, 404, "{bad}: {}", r.text);
        assert_eq!(r.problem_shape(), random.problem_shape());
        for (method, path, body) in [
            (Method::DELETE, format!("/v1/api-keys/{bad}"), None),
            (Method::POST, format!("/v1/api-keys/{bad}/rotate"), Some(json!({}))),
            (Method::PATCH, format!("/v1/users/{bad}"), Some(json!({"role": "admin"}))),
            (Method::DELETE, format!("/v1/users/{bad}"), None),
        ] {
            let r = srv.call(method.clone(), &path, Some(&t.token), body).await;
            assert_eq!(r.status, 404, "{method} {path}: {}", r.text);
        }
    }
    let r = srv.get("/v1/no-such-thing", &t.token).await.expect(404);
    assert_eq!(r.body["type"], "urn:palisade:problem:not_found");
    assert!(r.body["request_id"].is_string());
    let r = srv.call(Method::PUT, "/v1/me", Some(&t.token), None).await.expect(405);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    srv.stop().await;
}

async fn security_headers_and_request_id(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Headers").await;
    let expected = [
        ("strict-transport-security", "max-age=31536000; includeSubDomains"),
        ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("permissions-policy", "camera=(), microphone=(), geolocation=()"),
        ("x-xss-protection", "0"),
        ("cache-control", "no-store"),
    ];
    for r in [
        srv.get("/v1/me", &t.token).await.expect(200),
        srv.call(Method::GET, "/v1/me", None, None).await.expect(401),
        srv.call(Method::GET, "/healthz", None, None).await.expect(200),
        srv.get("/v1/nothing", &t.token).await.expect(404),
    ] {
        for (h, v) in expected {
            assert_eq!(r.header(h), Some(v), "{h}");
        }
        assert!(r.header("x-request-id").is_some_and(|v| !v.is_empty()));
    }
    let echoed = TestServer::send(
        srv.request(Method::GET, "/v1/me").bearer_auth(&t.token).header("X-Request-Id", "client-abc.123"),
    )
    .await;
    assert_eq!(echoed.header("x-request-id"), Some("client-abc.123"));
    let r = TestServer::send(srv.request(Method::GET, "/v1/me").header("X-Request-Id", "bad id\"<script>"))
        .await
        .expect(401);
    let id = r.header("x-request-id").unwrap();
    assert!(!id.contains("script"));
    assert_eq!(r.body["request_id"], id, "the problem carries the same id as the header");
    let long = "a".repeat(500);
    let r = TestServer::send(srv.request(Method::GET, "/healthz").header("X-Request-Id", &long)).await;
    assert_ne!(r.header("x-request-id"), Some(long.as_str()));
    let ready = srv.call(Method::GET, "/readyz", None, None).await.expect(200);
    assert_eq!(ready.body, json!({"status": "ok"}));
    srv.stop().await;
}

async fn cors_closed_by_default(b: Backend) {
    let srv = TestServer::start(b.clone()).await;
    let pre = srv
        .request(Method::OPTIONS, "/v1/me")
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "GET");
    let r = TestServer::send(pre).await;
    assert!(r.header("access-control-allow-origin").is_none(), "{:?}", r.headers);
    srv.stop().await;

    let srv = TestServer::start_with(b, |c| c.cors.allowed_origins = vec!["https://app.example.com".into()]).await;
    let pre = |o: &str| {
        srv.request(Method::OPTIONS, "/v1/me")
            .header("Origin", o.to_owned())
            .header("Access-Control-Request-Method", "GET")
    };
    let ok = TestServer::send(pre("https://app.example.com")).await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    let no = TestServer::send(pre("https://evil.example")).await;
    assert!(no.header("access-control-allow-origin").is_none());
    srv.stop().await;
}
