//! Abuse controls (SPEC §7): every rate-limit layer, the headers, client
//! addresses behind proxies, WAF rules and blocks, lockouts, the Argon2
//! bound and the metrics listener. Time moves by the test clock.

use palisade_config::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer, PASSWORD};

backend_tests!(
    address_limit_refuses_with_headers_and_refills,
    auth_routes_have_their_own_address_limit,
    key_limit_is_per_credential,
    tenant_limit_is_shared_by_all_credentials,
    a_refused_layer_charges_nothing_after_it,
    the_longest_refusal_wins,
    tenant_overrides_apply_at_once,
    tenant_address_lists,
    spoofed_forwarded_for_changes_nothing,
    trusted_proxy_forwarded_for_is_the_client,
    waf_refuses_links_and_phone_numbers,
    waf_violations_block_the_key,
    waf_violations_block_the_address,
    global_address_lists,
    login_lockout_looks_like_a_wrong_password,
    success_resets_failed_logins,
    parallel_guesses_do_not_exceed_the_threshold,
    failed_keys_lock_the_address_out,
    failed_master_keys_lock_the_address_out,
    argon2_concurrency_is_bounded,
    bursts_are_detected_and_audited,
    metrics_listener,
);

const TRUST_LOCAL: fn(&mut Config) = |c| c.server.trust_proxy = vec!["127.0.0.1/32".parse().unwrap()];

async fn limited(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
    TestServer::start_with(backend, |c| {
        TRUST_LOCAL(c);
        tweak(c)
    })
    .await
}

/// A request as if from `ip` (through the trusted local proxy).
async fn from(s: &TestServer, ip: &str, method: Method, path: &str, cred: Option<&str>, body: Option<Value>) -> Resp {
    let mut rb = s.request(method, path).header("x-forwarded-for", ip);
    if let Some(c) = cred {
        rb = rb.bearer_auth(c);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    TestServer::send(rb).await
}

async fn get_from(s: &TestServer, ip: &str, path: &str, cred: &str) -> Resp {
    from(s, ip, Method::GET, path, Some(cred), None).await
}

#[track_caller]
fn assert_rate_limited(r: &Resp, limit: &str) {
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["reason"], "rate_limited", "{}", r.text);
    assert_eq!(r.body["type"], "urn:palisade:problem:rate_limited");
    assert_eq!(r.body["limit"], limit, "{}", r.text);
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(r.body["retry_after"], retry);
    let policy = r.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(policy.contains(&format!("\"{limit}\";q=")), "{policy}");
    let current = r.header("ratelimit").expect("RateLimit");
    assert!(current.contains(&format!("\"{limit}\";r=0;t={retry}")), "{current}");
}

/// Audit events are written off the request path; wait for one.
async fn wait_event(s: &TestServer, query: &str) -> Value {
    for _ in 0..100 {
        let r = s.admin(Method::GET, &format!("/sysadmin/v1/events?{query}"), None).await.expect(200);
        if let Some(e) = r.body["data"].as_array().and_then(|a| a.first()) {
            return e.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no event for {query}");
}

async fn address_limit_refuses_with_headers_and_refills(backend: Backend) {
    let s = limited(backend, |c| c.rate_limits.ip_per_minute = 5).await;
    let t = s.tenant("Acme").await;
    let ip = "198.51.100.7";
    for i in 0..5 {
        let r = get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
        let current = r.header("ratelimit").expect("RateLimit on success");
        assert!(current.contains(&format!("\"ip\";r={}", 4 - i)), "{current}");
        assert!(r.header("ratelimit-policy").unwrap().contains(r#""ip";q=5;w=60"#));
    }
    let r = get_from(&s, ip, "/v1/me", &t.token).await;
    assert_rate_limited(&r, "ip");
    assert_eq!(r.header("retry-after"), Some("12"));
    // Unauthenticated requests count against the address too.
    let r = from(&s, ip, Method::GET, "/v1/openapi.json", None, None).await;
    assert_rate_limited(&r, "ip");
    // Another address is not affected; health probes never are.
    get_from(&s, "198.51.100.8", "/v1/me", &t.token).await.expect(200);
    from(&s, ip, Method::GET, "/healthz", None, None).await.expect(200);
    // One interval later, exactly one more.
    s.clock.advance_ms(12_000);
    get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
    assert_rate_limited(&get_from(&s, ip, "/v1/me", &t.token).await, "ip");
    let e = wait_event(&s, "action=rate_limit.exceeded").await;
    assert_eq!(e["details"]["limit"], "ip");
    assert_eq!(e["source_ip"], ip);
    s.stop().await;
}

async fn auth_routes_have_their_own_address_limit(backend: Backend) {
    let s = limited(backend, |c| c.rate_limits.auth_ip_per_minute = 3).await;
    let t = s.tenant("Acme").await;
    let ip = "198.51.100.9";
    let login = json!({"email": t.email, "password": "wrong password here"});
    for _ in 0..3 {
        from(&s, ip, Method::POST, "/v1/auth/login", None, Some(login.clone())).await.expect(401);
    }
    let r = from(&s, ip, Method::POST, "/v1/auth/login", None, Some(login.clone())).await;
    assert_rate_limited(&r, "auth_ip");
    // Other routes from the same address still work.
    get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
    s.stop().await;
}

async fn key_limit_is_per_credential(backend: Backend) {
    let s = limited(backend, |c| c.rate_limits.key_per_minute = 3).await;
    let t = s.tenant("Acme").await;
    let (_, a) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    let (_, b) = s.api_key(&t.token, json!({"name": "b", "role": "read_only"})).await;
    for _ in 0..3 {
        s.get("/v1/me", &a).await.expect(200);
    }
    assert_rate_limited(&s.get("/v1/me", &a).await, "key");
    // The other key has its own bucket.
    s.get("/v1/me", &b).await.expect(200);
    s.clock.advance_ms(20_000);
    s.get("/v1/me", &a).await.expect(200);
    let e = wait_event(&s, &format!("tenant_id={}&action=rate_limit.exceeded", t.id)).await;
    assert_eq!(e["details"]["limit"], "key");
    // The tenant sees its own limit hits.
    let mine = s.events(&t.token, "action=rate_limit.exceeded").await;
    assert_eq!(mine.len(), 1);
    s.stop().await;
}

async fn tenant_limit_is_shared_by_all_credentials(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let (_, a) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    let (_, b) = s.api_key(&t.token, json!({"name": "b", "role": "read_only"})).await;
    let other = s.tenant("Other").await;
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", t.id), Some(json!({"tenant_per_minute": 5})))
        .await
        .expect(200);
    s.clock.advance_ms(1000);
    for cred in [&a, &b, &t.token, &a, &b] {
        s.get("/v1/me", cred).await.expect(200);
    }
    // Every credential of the tenant is now out, whichever it is.
    for cred in [&a, &b, &t.token] {
        assert_rate_limited(&s.get("/v1/me", cred).await, "tenant");
    }
    // Other tenants are not.
    s.get("/v1/me", &other.token).await.expect(200);
    s.stop().await;
}

async fn a_refused_layer_charges_nothing_after_it(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let (_, a) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    let (_, b) = s.api_key(&t.token, json!({"name": "b", "role": "read_only"})).await;
    let limits = json!({"key_per_minute": 2, "tenant_per_minute": 4});
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", t.id), Some(limits)).await.expect(200);
    // Let the setup's requests (under the test's huge defaults) drain.
    s.clock.advance_ms(1000);
    s.get("/v1/me", &a).await.expect(200);
    s.get("/v1/me", &a).await.expect(200);
    // Key `a` refused many times: the tenant bucket is not charged for it.
    for _ in 0..20 {
        assert_rate_limited(&s.get("/v1/me", &a).await, "key");
    }
    s.get("/v1/me", &b).await.expect(200);
    s.get("/v1/me", &b).await.expect(200);
    // Now the tenant's four are spent.
    let r = s.get("/v1/me", &t.token).await;
    assert_rate_limited(&r, "tenant");
    // And an address refusal charges no tenant bucket either.
    let s2 = limited(Backend::Sqlite, |c| c.rate_limits.ip_per_minute = 3).await;
    let t2 = s2.tenant("Acme").await;
    s2.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", t2.id), Some(json!({"tenant_per_minute": 4})))
        .await
        .expect(200);
    for _ in 0..3 {
        get_from(&s2, "203.0.113.1", "/v1/me", &t2.token).await.expect(200);
    }
    for _ in 0..10 {
        assert_rate_limited(&get_from(&s2, "203.0.113.1", "/v1/me", &t2.token).await, "ip");
    }
    get_from(&s2, "203.0.113.2", "/v1/me", &t2.token).await.expect(200);
    assert_rate_limited(&get_from(&s2, "203.0.113.3", "/v1/me", &t2.token).await, "tenant");
    s2.stop().await;
    s.stop().await;
}

async fn the_longest_refusal_wins(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let (_, a) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    let (_, b) = s.api_key(&t.token, json!({"name": "b", "role": "read_only"})).await;
    let limits = json!({"key_per_minute": 1, "tenant_per_minute": 2});
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", t.id), Some(limits)).await.expect(200);
    s.clock.advance_ms(1000);
    s.get("/v1/me", &a).await.expect(200);
    s.get("/v1/me", &b).await.expect(200);
    // Both the key (60 s) and the tenant (30 s) refuse: the key's wait is the real one.
    let r = s.get("/v1/me", &a).await;
    assert_rate_limited(&r, "key");
    assert_eq!(r.header("retry-after"), Some("60"));
    s.clock.advance_ms(30_000);
    // The tenant has room again; the key does not.
    assert_rate_limited(&s.get("/v1/me", &a).await, "key");
    s.get("/v1/me", &b).await.expect(429);
    s.stop().await;
}

async fn tenant_overrides_apply_at_once(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let path = format!("/sysadmin/v1/tenants/{}/limits", t.id);
    assert_eq!(s.admin(Method::GET, &path, None).await.expect(200).body, json!({"ip_allow": [], "ip_deny": []}));
    let body = json!({"key_per_minute": 2, "ip_deny": ["192.0.2.7"]});
    let r = s.admin(Method::PUT, &path, Some(body)).await.expect(200);
    assert_eq!(r.body, json!({"key_per_minute": 2, "ip_allow": [], "ip_deny": ["192.0.2.7/32"]}));
    assert_eq!(s.admin(Method::GET, &path, None).await.expect(200).body, r.body);
    s.get("/v1/me", &t.token).await.expect(200);
    s.get("/v1/me", &t.token).await.expect(200);
    assert_rate_limited(&s.get("/v1/me", &t.token).await, "key");
    // Bad input changes nothing.
    let r = s.admin(Method::PUT, &path, Some(json!({"ip_allow": ["not-a-cidr"]}))).await.expect(400);
    assert_eq!(r.body["reason"], "validation_failed");
    s.admin(Method::PUT, &path, Some(json!({"key_per_minute": -1}))).await.expect(400);
    assert_eq!(s.admin(Method::GET, &path, None).await.expect(200).body["key_per_minute"], 2);
    // Tenant credentials cannot change limits; unknown tenants are 404.
    s.call(Method::PUT, &path, Some(&t.token), Some(json!({}))).await.expect(401);
    let unknown = format!("/sysadmin/v1/tenants/{}/limits", uuid::Uuid::new_v4());
    s.admin(Method::PUT, &unknown, Some(json!({}))).await.expect(404);
    // Restoring the defaults.
    s.admin(Method::PUT, &path, Some(json!({}))).await.expect(200);
    s.clock.advance_ms(60_000);
    for _ in 0..5 {
        s.get("/v1/me", &t.token).await.expect(200);
    }
    let e = wait_event(&s, &format!("tenant_id={}&action=tenant.limits_updated", t.id)).await;
    assert_eq!(e["actor"]["type"], "sysadmin");
    s.stop().await;
}

async fn tenant_address_lists(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let other = s.tenant("Other").await;
    let path = format!("/sysadmin/v1/tenants/{}/limits", t.id);
    s.admin(Method::PUT, &path, Some(json!({"ip_deny": ["203.0.113.0/24"]}))).await.expect(200);
    let r = get_from(&s, "203.0.113.5", "/v1/me", &t.token).await.expect(403);
    assert_eq!(r.body["reason"], "blocked");
    get_from(&s, "198.51.100.1", "/v1/me", &t.token).await.expect(200);
    // Another tenant's credentials from that address are fine.
    get_from(&s, "203.0.113.5", "/v1/me", &other.token).await.expect(200);
    s.admin(Method::PUT, &path, Some(json!({"ip_allow": ["198.51.100.0/24"]}))).await.expect(200);
    get_from(&s, "198.51.100.1", "/v1/me", &t.token).await.expect(200);
    get_from(&s, "192.0.2.1", "/v1/me", &t.token).await.expect(403);
    wait_event(&s, &format!("tenant_id={}&action=abuse.address_refused", t.id)).await;
    s.stop().await;
}

async fn spoofed_forwarded_for_changes_nothing(backend: Backend) {
    // No trusted proxy (the default): the socket address is the client.
    let s = TestServer::start_with(backend, |c| c.rate_limits.ip_per_minute = 4).await;
    for i in 0..4 {
        from(&s, &format!("203.0.113.{i}"), Method::GET, "/v1/openapi.json", None, None).await.expect(200);
    }
    let r = from(&s, "203.0.113.99", Method::GET, "/v1/openapi.json", None, None).await;
    assert_rate_limited(&r, "ip");
    s.clock.advance_ms(60_000);
    let e = wait_event(&s, "action=rate_limit.exceeded").await;
    assert_eq!(e["source_ip"], "127.0.0.1");
    s.stop().await;
}

async fn trusted_proxy_forwarded_for_is_the_client(backend: Backend) {
    let s = limited(backend, |c| c.rate_limits.ip_per_minute = 2).await;
    for ip in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        for _ in 0..2 {
            from(&s, ip, Method::GET, "/v1/openapi.json", None, None).await.expect(200);
        }
    }
    // The client is the rightmost untrusted hop, whatever it prepends.
    let r = from(&s, "6.6.6.6, 203.0.113.1", Method::GET, "/v1/openapi.json", None, None).await;
    assert_rate_limited(&r, "ip");
    s.stop().await;
}

fn links(n: usize) -> String {
    (0..n).map(|i| format!("https://l{i}.example/x")).collect::<Vec<_>>().join(" ")
}

fn phones(n: usize) -> String {
    (0..n).map(|i| format!("+3460000000{i}")).collect::<Vec<_>>().join(", ")
}

async fn waf_refuses_links_and_phone_numbers(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let before = s.get("/v1/api-keys", &t.token).await.expect(200).body["data"].as_array().unwrap().len();
    let r = s.post("/v1/api-keys", &t.token, json!({"name": links(6), "role": "read_only"})).await.expect(400);
    assert_eq!(r.body["reason"], "blocked");
    assert_eq!(r.body["rule"], "too_many_urls");
    assert_eq!(r.body["field"], "/name");
    let r = s.post("/v1/api-keys", &t.token, json!({"name": phones(4), "role": "read_only"})).await.expect(400);
    assert_eq!(r.body["rule"], "too_many_phone_numbers");
    // At the limits, not over them: the WAF lets it through (the name rules decide).
    let mut created = 0;
    for name in [links(5), phones(3), "Le café de Paris, équipe numéro un".into()] {
        let r = s.post("/v1/api-keys", &t.token, json!({"name": name, "role": "read_only"})).await;
        assert_ne!(r.body["reason"], "blocked", "{}", r.text);
        assert!(r.status == 201 || r.status == 400, "{}", r.text);
        created += usize::from(r.status == 201);
    }
    // Unauthenticated bodies are checked too.
    let r = s
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": links(6), "password": "x"})))
        .await
        .expect(400);
    assert_eq!(r.body["reason"], "blocked");
    // Nothing was created by the refused requests.
    let after = s.get("/v1/api-keys", &t.token).await.expect(200).body["data"].as_array().unwrap().len();
    assert_eq!(after, before + created);
    let e = wait_event(&s, &format!("tenant_id={}&action=waf.refused", t.id)).await;
    assert!(e["details"]["rule"].as_str().unwrap().starts_with("too_many_"));
    assert!(!e.to_string().contains("l0.example"), "the content is not recorded: {e}");
    s.stop().await;
}

async fn waf_violations_block_the_key(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let (_, a) = s.api_key(&t.token, json!({"name": "a", "role": "admin"})).await;
    let (_, b) = s.api_key(&t.token, json!({"name": "b", "role": "admin"})).await;
    // Ten violations, each from its own address: the key is what adds up.
    for i in 0..10 {
        let body = json!({"name": links(6), "role": "read_only"});
        from(&s, &format!("203.0.113.{i}"), Method::POST, "/v1/api-keys", Some(&a), Some(body)).await.expect(400);
    }
    let r = get_from(&s, "198.51.100.1", "/v1/me", &a).await.expect(403);
    assert_eq!(r.body["reason"], "blocked");
    assert_eq!(r.header("retry-after"), Some("900"));
    assert_eq!(r.body["retry_after"], 900);
    // The other key, and the addresses (one violation each), are not blocked.
    get_from(&s, "198.51.100.1", "/v1/me", &b).await.expect(200);
    get_from(&s, "203.0.113.0", "/v1/me", &b).await.expect(200);
    s.clock.advance_ms(15 * 60_000 - 1000);
    get_from(&s, "198.51.100.1", "/v1/me", &a).await.expect(403);
    s.clock.advance_ms(1000);
    get_from(&s, "198.51.100.1", "/v1/me", &a).await.expect(200);
    let e = wait_event(&s, &format!("tenant_id={}&action=waf.block_started", t.id)).await;
    assert_eq!(e["details"]["target"], "credential");
    s.stop().await;
}

async fn waf_violations_block_the_address(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let ip = "203.0.113.50";
    // Nine violations spread over more than a minute never block.
    for _ in 0..9 {
        let body = json!({"email": links(6), "password": "x"});
        from(&s, ip, Method::POST, "/v1/auth/login", None, Some(body)).await.expect(400);
        s.clock.advance_ms(10_000);
    }
    get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
    s.clock.advance_ms(60_000);
    for _ in 0..10 {
        let body = json!({"email": links(6), "password": "x"});
        from(&s, ip, Method::POST, "/v1/auth/login", None, Some(body)).await.expect(400);
    }
    // Every request from the address is refused now, even a valid one.
    let r = get_from(&s, ip, "/v1/me", &t.token).await.expect(403);
    assert_eq!(r.body["reason"], "blocked");
    from(&s, ip, Method::GET, "/v1/openapi.json", None, None).await.expect(403);
    get_from(&s, "203.0.113.51", "/v1/me", &t.token).await.expect(200);
    s.clock.advance_ms(15 * 60_000);
    get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
    let e = wait_event(&s, "action=waf.block_started").await;
    assert_eq!(e["details"]["target"], "address");
    assert_eq!(e["source_ip"], ip);
    s.stop().await;
}

async fn global_address_lists(backend: Backend) {
    let s = limited(backend, |c| c.waf.ip_deny = vec!["203.0.113.0/24".parse().unwrap()]).await;
    let r = from(&s, "203.0.113.9", Method::GET, "/v1/openapi.json", None, None).await.expect(403);
    assert_eq!(r.body["reason"], "blocked");
    from(&s, "198.51.100.9", Method::GET, "/v1/openapi.json", None, None).await.expect(200);
    // Probes are outside the lists.
    from(&s, "203.0.113.9", Method::GET, "/healthz", None, None).await.expect(200);
    wait_event(&s, "action=abuse.address_refused").await;
    s.stop().await;
    let s = limited(Backend::Sqlite, |c| {
        c.waf.ip_allow = vec!["127.0.0.1/32".parse().unwrap(), "198.51.100.0/24".parse().unwrap()]
    })
    .await;
    from(&s, "198.51.100.9", Method::GET, "/v1/openapi.json", None, None).await.expect(200);
    from(&s, "192.0.2.1", Method::GET, "/v1/openapi.json", None, None).await.expect(403);
    s.stop().await;
}

async fn login(s: &TestServer, email: &str, password: &str) -> Resp {
    s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": password}))).await
}

async fn login_lockout_looks_like_a_wrong_password(backend: Backend) {
    let s = limited(backend, |c| c.metrics.listen = "127.0.0.1:0".into()).await;
    let t = s.tenant("Acme").await;
    let wrong = login(&s, &t.email, "not the password at all").await.expect(401);
    for _ in 0..4 {
        login(&s, &t.email, "not the password at all").await.expect(401);
    }
    // Locked: the right password gets exactly the wrong-password answer.
    let locked = login(&s, &t.email, PASSWORD).await.expect(401);
    assert_eq!(locked.problem_shape(), wrong.problem_shape());
    assert_eq!(locked.header("www-authenticate"), wrong.header("www-authenticate"));
    // An address nobody has locks alike, so a lock says nothing about accounts.
    let nobody = format!("nobody-{}@example.com", crate::common::unique_letters());
    for _ in 0..6 {
        let r = login(&s, &nobody, "not the password at all").await.expect(401);
        assert_eq!(r.problem_shape(), wrong.problem_shape());
    }
    s.clock.advance_ms(15 * 60_000 - 1000);
    login(&s, &t.email, PASSWORD).await.expect(401);
    s.clock.advance_ms(1000);
    login(&s, &t.email, PASSWORD).await.expect(200);
    let e = wait_event(&s, &format!("tenant_id={}&action=auth.account_locked", t.id)).await;
    assert_eq!(e["resource_id"], t.owner_id.as_str());
    let addr = s.metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    assert!(text.contains(r#"palisade_lockouts_total{kind="account"} 2"#), "{text}");
    wait_event(&s, &format!("tenant_id={}&action=auth.login_refused_locked", t.id)).await;
    s.stop().await;
}

async fn success_resets_failed_logins(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    for _ in 0..4 {
        login(&s, &t.email, "not the password at all").await.expect(401);
    }
    login(&s, &t.email, PASSWORD).await.expect(200);
    for _ in 0..4 {
        login(&s, &t.email, "not the password at all").await.expect(401);
    }
    login(&s, &t.email, PASSWORD).await.expect(200);
    s.stop().await;
}

async fn parallel_guesses_do_not_exceed_the_threshold(backend: Backend) {
    let s = limited(backend, |c| c.auth.argon2_wait_ms = 30_000).await;
    let t = s.tenant("Acme").await;
    let passwords: Vec<String> = (0..20).map(|i| format!("guess number {i} here")).collect();
    let results = futures_util::future::join_all(passwords.iter().map(|p| login(&s, &t.email, p))).await;
    assert!(results.iter().all(|r| r.status == 401), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    // Each attempt is counted before its hash is checked, so only five
    // passwords were ever tried; the rest met the lock.
    let mut tried = 0;
    for _ in 0..100 {
        let q = format!("/sysadmin/v1/events?tenant_id={}&action=auth.login_failed", t.id);
        tried = s.admin(Method::GET, &q, None).await.expect(200).body["data"].as_array().unwrap().len();
        if tried >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(tried, 5);
    login(&s, &t.email, PASSWORD).await.expect(401);
    s.stop().await;
}

async fn failed_keys_lock_the_address_out(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let t = s.tenant("Acme").await;
    let (_, key) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    let ip = "203.0.113.77";
    let unknown = format!("ak_{}", "A".repeat(32));
    let first = get_from(&s, ip, "/v1/me", &unknown).await.expect(401);
    for _ in 0..9 {
        get_from(&s, ip, "/v1/me", &unknown).await.expect(401);
    }
    // The address is locked out of key checks: a valid key looks unknown.
    let r = get_from(&s, ip, "/v1/me", &key).await.expect(401);
    assert_eq!(r.problem_shape(), first.problem_shape());
    // The key works from elsewhere, and people's tokens still work here.
    get_from(&s, "203.0.113.78", "/v1/me", &key).await.expect(200);
    get_from(&s, ip, "/v1/me", &t.token).await.expect(200);
    s.clock.advance_ms(15 * 60_000);
    get_from(&s, ip, "/v1/me", &key).await.expect(200);
    let e = wait_event(&s, "action=auth.credential_lockout").await;
    assert_eq!(e["source_ip"], ip);
    s.stop().await;
}

async fn failed_master_keys_lock_the_address_out(backend: Backend) {
    let s = limited(backend, |_| {}).await;
    let ip = "203.0.113.79";
    let wrong = format!("mk_{}", "x".repeat(43));
    for _ in 0..10 {
        from(&s, ip, Method::GET, "/sysadmin/v1/tenants", Some(&wrong), None).await.expect(401);
    }
    let real = s.master_key.clone();
    from(&s, ip, Method::GET, "/sysadmin/v1/tenants", Some(&real), None).await.expect(401);
    from(&s, "203.0.113.80", Method::GET, "/sysadmin/v1/tenants", Some(&real), None).await.expect(200);
    s.stop().await;
}

async fn argon2_concurrency_is_bounded(backend: Backend) {
    let s = limited(backend, |c| {
        c.auth.argon2_max_concurrent = 1;
        c.auth.argon2_wait_ms = 0;
    })
    .await;
    let t = s.tenant("Acme").await;
    let attempts = (0..8).map(|i| {
        let body = json!({"email": t.email, "password": format!("wrong password {i}")});
        from(&s, "203.0.113.1", Method::POST, "/v1/auth/login", None, Some(body))
    });
    let results = futures_util::future::join_all(attempts).await;
    let busy: Vec<&Resp> = results.iter().filter(|r| r.status == 503).collect();
    assert!(!busy.is_empty(), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(results.iter().all(|r| r.status == 503 || r.status == 401));
    assert_eq!(busy[0].body["reason"], "unavailable");
    assert_eq!(busy[0].header("retry-after"), Some("1"));
    s.stop().await;
}

async fn bursts_are_detected_and_audited(backend: Backend) {
    let s = limited(backend, |c| c.rate_limits.burst_ip_per_second = 2).await;
    for _ in 0..10 {
        // Never refused: bursts are observed, not limited.
        from(&s, "203.0.113.5", Method::GET, "/v1/openapi.json", None, None).await.expect(200);
    }
    let e = wait_event(&s, "action=abuse.burst_detected").await;
    assert_eq!(e["details"]["scope"], "address");
    assert_eq!(e["source_ip"], "203.0.113.5");
    s.stop().await;
}

async fn metrics_listener(backend: Backend) {
    let s = limited(backend, |c| {
        c.metrics.listen = "127.0.0.1:0".into();
        c.rate_limits.ip_per_minute = 1;
    })
    .await;
    from(&s, "203.0.113.5", Method::GET, "/v1/openapi.json", None, None).await.expect(200);
    from(&s, "203.0.113.5", Method::GET, "/v1/openapi.json", None, None).await.expect(429);
    from(&s, "203.0.113.6", Method::GET, "/v1/me", Some(&format!("ak_{}", "B".repeat(32))), None).await.expect(401);
    let body = json!({"email": links(6), "password": "x"});
    from(&s, "203.0.113.8", Method::POST, "/v1/auth/login", None, Some(body)).await.expect(400);
    let addr = s.metrics_addr().expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    for needle in [
        r#"palisade_http_requests_total{method="GET",route="/v1/openapi.json",status="200"} 1"#,
        r#"palisade_rate_limited_total{kind="ip"} 1"#,
        r#"palisade_auth_failures_total{kind="api_key"} 1"#,
        r#"palisade_waf_refusals_total{kind="too_many_urls"} 1"#,
        "palisade_http_request_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    // Not on the API port.
    from(&s, "203.0.113.7", Method::GET, "/metrics", None, None).await.expect(404);
    s.stop().await;
}
