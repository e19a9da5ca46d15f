//! Proof of control of a number: registration tells nothing about other
//! tenants, only a verified number is a tenant's alone, and where numbers
//! must be verified an unverified identity sends and calls nothing.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    registration_tells_nothing_about_other_tenants,
    unverified_numbers_send_nothing_where_proof_is_required,
    a_code_proves_control_and_the_first_proof_holds,
    wrong_codes_are_counted_before_they_are_compared,
    codes_are_spaced_counted_and_expire,
    a_code_costs_a_segment_and_a_failed_delivery_is_refunded,
    the_operator_assigns_a_number,
    an_undelivered_code_is_void,
    deleting_and_registering_again_resets_no_bound,
    one_phone_gets_few_codes_and_few_tries_whoever_asks,
);

const NUMBER: &str = "+34612345678";

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c| {
        c.numbers.require_verified = true;
        c.numbers.lock_secs = 120;
    })
    .await
}

/// A tenant with an owner's API key (it outlives clock jumps), credits and
/// an identity for `number`; returns (tenant id, key, identity id).
async fn tenant_with(s: &TestServer, name: &str, number: &str, credits: i64) -> (String, String, String) {
    let t = s.tenant(name).await;
    let (_, key) = s.api_key(&t.token, json!({"name": "ops", "role": "admin"})).await;
    if credits > 0 {
        s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": credits})))
            .await
            .expect(200);
    }
    let r = s.post("/v1/identities", &key, json!({"number": number})).await.expect(201);
    assert_eq!(r.body["number_verified"], false);
    (t.id, key, r.body["id"].as_str().unwrap().to_owned())
}

/// The code in the newest text the sandbox delivered to `number`.
fn delivered_code(s: &TestServer, number: &str) -> String {
    let text = s.last_mail_to(number);
    let at = text.find("code is ").expect("a code in the text") + "code is ".len();
    text[at..at + 6].to_owned()
}

fn other_code(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

async fn send_code(s: &TestServer, key: &str, id: &str) -> crate::common::Resp {
    s.call(Method::POST, &format!("/v1/identities/{id}/verification"), Some(key), None).await
}

async fn confirm(s: &TestServer, key: &str, id: &str, code: &str) -> crate::common::Resp {
    s.post(&format!("/v1/identities/{id}/verification/confirm"), key, json!({"code": code})).await
}

async fn balance(s: &TestServer, key: &str) -> i64 {
    s.get("/v1/balance", key).await.expect(200).body["balance"].as_i64().unwrap()
}

async fn registration_tells_nothing_about_other_tenants(b: Backend) {
    let s = TestServer::start(b).await;
    let (_, a, _) = tenant_with(&s, "A", NUMBER, 0).await;
    // Another tenant registers the same number: the answer is the same as
    // for a number nobody has, so it learns nothing and squats nothing.
    let (_, other, _) = tenant_with(&s, "B", NUMBER, 0).await;
    // Within one tenant a number is registered once.
    let r = s.post("/v1/identities", &a, json!({"number": NUMBER})).await.expect(409);
    assert!(!r.body["detail"].as_str().unwrap().contains("another"), "{}", r.body);
    s.post("/v1/identities", &other, json!({"number": NUMBER, "kind": "agent"})).await.expect(409);
    s.stop().await;
}

async fn unverified_numbers_send_nothing_where_proof_is_required(b: Backend) {
    let s = server(b).await;
    let (_, key, id) = tenant_with(&s, "Acme", NUMBER, 1000).await;
    let r = s.post("/v1/messages", &key, json!({"from": NUMBER, "to": "+34699999999", "body": "hi"})).await.expect(403);
    assert_eq!(r.body["reason"], "number_not_verified");
    let r = s.post("/v1/calls", &key, json!({"from": id, "to": "+34699999999"})).await.expect(403);
    assert_eq!(r.body["reason"], "number_not_verified");
    // An agent token of the identity is refused alike.
    let token = s.post(&format!("/v1/identities/{id}/agent-token"), &key, json!({})).await.expect(201).body["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = s.post("/v1/messages", &token, json!({"from": id, "to": "+34699999999", "body": "hi"})).await.expect(403);
    assert_eq!(r.body["reason"], "number_not_verified");
    // Nothing was charged for the refusals.
    assert_eq!(balance(&s, &key).await, 1000);

    send_code(&s, &key, &id).await.expect(202);
    let code = delivered_code(&s, NUMBER);
    let r = confirm(&s, &key, &id, &code).await.expect(200);
    assert_eq!(r.body["number_verified"], true);
    assert_eq!(r.body["number_verified_by"], "carrier");
    s.post("/v1/messages", &key, json!({"from": NUMBER, "to": "+34699999999", "body": "hi"})).await.expect(201);
    s.post("/v1/calls", &key, json!({"from": id, "to": "+34699999999"})).await.expect(201);
    s.stop().await;
}

async fn a_code_proves_control_and_the_first_proof_holds(b: Backend) {
    let s = server(b).await;
    let (_, a, a_id) = tenant_with(&s, "A", NUMBER, 100).await;
    let (_, other, b_id) = tenant_with(&s, "B", NUMBER, 100).await;
    let r = send_code(&s, &a, &a_id).await.expect(202);
    assert_eq!(r.body["expires_in"], 600);
    let code = delivered_code(&s, NUMBER);
    // Another tenant cannot use the code sent for A's identity.
    let r = confirm(&s, &other, &b_id, &code).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "code");
    // Nor another identity of A's own.
    let r = confirm(&s, &a, &a_id, &other_code(&code)).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "code");
    confirm(&s, &a, &a_id, &code).await.expect(200);
    // Once verified: no new code, and the old one is spent.
    send_code(&s, &a, &a_id).await.expect(409);
    confirm(&s, &a, &a_id, &code).await.expect(409);
    // B holds the phone later and proves it: the number stays A's, and B is
    // told so (B got the code, so this reveals nothing to a stranger).
    send_code(&s, &other, &b_id).await.expect(202);
    let r = confirm(&s, &other, &b_id, &delivered_code(&s, NUMBER)).await.expect(409);
    assert_eq!(r.body["reason"], "conflict");
    let b_view = s.get(&format!("/v1/identities/{b_id}"), &other).await.expect(200);
    assert_eq!(b_view.body["number_verified"], false);
    // A tenant's 404 for another's identity, as for any id.
    send_code(&s, &other, &a_id).await.expect(404);
    confirm(&s, &other, &a_id, &code).await.expect(404);
    // The audit trail keeps the number masked and never the code.
    let events = s.events(&a, "resource_type=identity").await;
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["identity.created", "identity.verification_sent", "identity.verification_failed", "identity.number_verified"]
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(NUMBER) && !all.contains(&code), "{all}");
    s.stop().await;
}

async fn wrong_codes_are_counted_before_they_are_compared(b: Backend) {
    let s = server(b).await;
    let (_, key, id) = tenant_with(&s, "Acme", NUMBER, 100).await;
    send_code(&s, &key, &id).await.expect(202);
    let code = delivered_code(&s, NUMBER);
    let wrong = other_code(&code);
    // Twenty guesses at once: at most five are ever compared.
    let tries = (0..20).map(|_| confirm(&s, &key, &id, &wrong));
    let answers: Vec<u16> = futures_util::future::join_all(tries).await.iter().map(|r| r.status).collect();
    assert!(answers.iter().all(|&st| st == 400 || st == 429), "{answers:?}");
    let failed = s.events(&key, "action=identity.verification_failed").await.len();
    assert_eq!(failed, 5, "{answers:?}");
    // The code is dead: even the right one is refused while locked, and after.
    let r = confirm(&s, &key, &id, &code).await.expect(429);
    assert!(r.body["retry_after"].as_u64().unwrap() <= 120);
    send_code(&s, &key, &id).await.expect(429);
    s.clock.advance_ms(121_000);
    confirm(&s, &key, &id, &code).await.expect(400);
    send_code(&s, &key, &id).await.expect(202);
    confirm(&s, &key, &id, &delivered_code(&s, NUMBER)).await.expect(200);
    s.stop().await;
}

async fn codes_are_spaced_counted_and_expire(b: Backend) {
    let s = server(b).await;
    let (_, key, id) = tenant_with(&s, "Acme", NUMBER, 1000).await;
    send_code(&s, &key, &id).await.expect(202);
    let first = delivered_code(&s, NUMBER);
    let r = send_code(&s, &key, &id).await.expect(429);
    let wait = r.body["retry_after"].as_u64().unwrap();
    assert!((1..=60).contains(&wait), "{}", r.body);
    assert_eq!(r.header("retry-after"), Some(wait.to_string().as_str()));
    // Expired: refused like a wrong code.
    s.clock.advance_ms(601_000);
    confirm(&s, &key, &id, &first).await.expect(400);
    // Five a day, then nothing until the day has passed.
    for _ in 0..4 {
        send_code(&s, &key, &id).await.expect(202);
        s.clock.advance_ms(61_000);
    }
    let r = send_code(&s, &key, &id).await.expect(429);
    assert!(r.body["retry_after"].as_u64().unwrap() > 3600, "{}", r.body);
    s.clock.advance_ms(24 * 3600 * 1000);
    send_code(&s, &key, &id).await.expect(202);
    // A new code replaces the old one.
    let newest = delivered_code(&s, NUMBER);
    confirm(&s, &key, &id, &newest).await.expect(200);
    s.stop().await;
}

async fn a_code_costs_a_segment_and_a_failed_delivery_is_refunded(b: Backend) {
    let s = server(b).await;
    let (tenant, key, id) = tenant_with(&s, "Acme", NUMBER, 0).await;
    let r = send_code(&s, &key, &id).await.expect(402);
    assert_eq!(r.body["reason"], "insufficient_credits");
    assert!(std::fs::read_dir(s.data_dir.join("outbox"))
        .map(|d| d.filter_map(Result::ok).all(|e| !std::fs::read_to_string(e.path()).unwrap().contains(NUMBER)))
        .unwrap_or(true));
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant}/credits"), Some(json!({"amount": 10})))
        .await
        .expect(200);
    send_code(&s, &key, &id).await.expect(202);
    assert_eq!(balance(&s, &key).await, 5);
    // The sandbox cannot deliver to this one: the segment comes back.
    let failing = s.post("/v1/identities", &key, json!({"number": "+12025550101"})).await.expect(201);
    let r = send_code(&s, &key, failing.body["id"].as_str().unwrap()).await.expect(502);
    assert_eq!(r.body["reason"], "undeliverable");
    assert_eq!(balance(&s, &key).await, 5);
    s.stop().await;
}

async fn the_operator_assigns_a_number(b: Backend) {
    let s = server(b).await;
    let (_, a, a_id) = tenant_with(&s, "A", NUMBER, 0).await;
    let (_, other, b_id) = tenant_with(&s, "B", NUMBER, 0).await;
    let path = format!("/sysadmin/v1/identities/{a_id}/verify");
    // Tenant credentials have no business here.
    s.call(Method::POST, &path, Some(&a), None).await.expect(401);
    let r = s.admin(Method::POST, &path, None).await.expect(200);
    assert_eq!(r.body["number_verified_by"], "operator");
    let view = s.get(&format!("/v1/identities/{a_id}"), &a).await.expect(200);
    assert_eq!(view.body["number_verified"], true);
    assert_eq!(view.body["number_verified_by"], "operator");
    // One verified holder per number.
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{b_id}/verify"), None).await.expect(409);
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{}/verify", uuid::Uuid::new_v4()), None).await.expect(404);
    // Deleting A's identity frees the number for B.
    s.call(Method::DELETE, &format!("/v1/identities/{a_id}"), Some(&a), None).await.expect(204);
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{b_id}/verify"), None).await.expect(200);
    let events = s.events(&other, "action=identity.number_verified").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["actor"]["type"], "sysadmin", "{}", events[0]);
    s.stop().await;
}

fn texts_to(s: &TestServer, number: &str) -> usize {
    std::fs::read_dir(s.data_dir.join("outbox"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| std::fs::read_to_string(e.path()).unwrap().contains(&format!("To: {number}")))
                .count()
        })
        .unwrap_or(0)
}

async fn an_undelivered_code_is_void(b: Backend) {
    let s = server(b).await;
    let (_, key, _) = tenant_with(&s, "Acme", NUMBER, 5).await;
    let failing = s.post("/v1/identities", &key, json!({"number": "+12025550101"})).await.expect(201);
    let failing = failing.body["id"].as_str().unwrap().to_owned();
    send_code(&s, &key, &failing).await.expect(502);
    assert_eq!(balance(&s, &key).await, 5, "refunded");
    // Refunded, so nobody may guess at it: no try is ever compared.
    for _ in 0..6 {
        confirm(&s, &key, &failing, "123456").await.expect(400);
    }
    assert!(s.events(&key, "action=identity.verification_failed").await.is_empty());
    s.stop().await;
}

async fn deleting_and_registering_again_resets_no_bound(b: Backend) {
    let s = server(b).await;
    let (_, key, id) = tenant_with(&s, "Acme", NUMBER, 1000).await;
    send_code(&s, &key, &id).await.expect(202);
    let old_code = delivered_code(&s, NUMBER);
    s.call(Method::DELETE, &format!("/v1/identities/{id}"), Some(&key), None).await.expect(204);
    let id = s.post("/v1/identities", &key, json!({"number": NUMBER})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The spacing holds for the number, and the old code proves nothing for the new identity.
    send_code(&s, &key, &id).await.expect(429);
    confirm(&s, &key, &id, &old_code).await.expect(400);
    assert_eq!(texts_to(&s, NUMBER), 1);
    // Wrong tries lock the tenant's number, whatever identity holds it.
    s.clock.advance_ms(61_000);
    send_code(&s, &key, &id).await.expect(202);
    let code = delivered_code(&s, NUMBER);
    for _ in 0..5 {
        confirm(&s, &key, &id, &other_code(&code)).await.expect(400);
    }
    s.call(Method::DELETE, &format!("/v1/identities/{id}"), Some(&key), None).await.expect(204);
    let id = s.post("/v1/identities", &key, json!({"number": NUMBER})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    send_code(&s, &key, &id).await.expect(429);
    s.stop().await;
}

async fn one_phone_gets_few_codes_and_few_tries_whoever_asks(b: Backend) {
    let s = TestServer::start_with(b, |c| {
        c.numbers.require_verified = true;
        c.numbers.codes_per_number_per_day = 3;
        c.numbers.tries_per_number_per_day = 4;
    })
    .await;
    let mut tenants = Vec::new();
    for name in ["A", "B", "C", "D"] {
        tenants.push(tenant_with(&s, name, NUMBER, 100).await);
    }
    // Four tenants ask; the phone receives three codes. The fourth is told
    // the same as the others and is not charged.
    for (_, key, id) in &tenants {
        send_code(&s, key, id).await.expect(202);
    }
    assert_eq!(texts_to(&s, NUMBER), 3);
    let (_, d_key, d_id) = &tenants[3];
    assert_eq!(balance(&s, d_key).await, 100);
    // Nothing is pending for the fourth: its tries are refused as wrong.
    confirm(&s, d_key, d_id, "000000").await.expect(400);
    // Four tries at the number are compared in a day, whoever tries.
    for (_, key, id) in &tenants[..2] {
        for _ in 0..2 {
            confirm(&s, key, id, "999999").await.expect(400);
        }
    }
    let (_, c_key, c_id) = &tenants[2];
    let right = delivered_code(&s, NUMBER);
    confirm(&s, c_key, c_id, &right).await.expect(400);
    let compared: usize = futures_util::future::join_all(
        tenants.iter().map(|(_, key, _)| s.events(key, "action=identity.verification_failed")),
    )
    .await
    .iter()
    .map(Vec::len)
    .sum();
    assert_eq!(compared, 4);
    // A day later the phone may be texted and tried again.
    s.clock.advance_ms(24 * 3600 * 1000 + 1000);
    send_code(&s, c_key, c_id).await.expect(202);
    confirm(&s, c_key, c_id, &delivered_code(&s, NUMBER)).await.expect(200);
    s.stop().await;
}
