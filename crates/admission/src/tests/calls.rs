use super::*;
use crate::ending::Ended;
use crate::Refusal;

/// A webhook endpoint of the tenant that wants every event.
async fn endpoint(w: &World) {
    let t = w.scope.tenant_id().to_string();
    let stmts = vec![
        palisade_store::Stmt::new(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, description, events, secret_sealed, status, \
             created_at, updated_at) VALUES ('e1', $1, 'https://x.test', '', '[\"*\"]', 's', 'enabled', 0, 0)",
        )
        .bind(t.clone()),
        palisade_store::Stmt::new(
            "INSERT INTO webhook_subscriptions (tenant_id, event_type, endpoint_id) VALUES ($1, '*', 'e1')",
        )
        .bind(t),
    ];
    w.svc.db.write_all(stmts).await.unwrap();
}

#[tokio::test]
async fn a_call_is_recorded_with_its_first_minute_paid_and_audited() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    assert_eq!((c.status.as_str(), c.prepaid, c.to_country.as_str()), ("queued", 10, "US"));
    assert_eq!((w.balance().await, w.debits().await), (90, 1));
    assert_eq!(w.count("calls", "instance_id = 'i1'").await, 1);
    let audited = format!("action = 'call.placed' AND resource_id = '{}' AND request_id = 'req-1'", c.id);
    assert_eq!(w.count("audit_events", &audited).await, 1);
}

#[tokio::test]
async fn calls_pass_the_same_checks_as_messages() {
    let w = world_with(true, Pricing::default()).await;
    let frozen = w.identity(Id { frozen: true, verified: true, ..Id::default() }).await;
    let unverified = w.identity(Id::default()).await;
    let id = w.identity(Id { verified: true, rate: Some(1), countries: r#"["US"]"#, ..Id::default() }).await;
    assert_eq!(word(&w.call_screened(&frozen, US, None, Err("waf")).await), "frozen");
    assert_eq!(word(&w.call_screened(&unverified, US, None, Err("waf")).await), "number_not_verified");
    assert_eq!(word(&w.call_screened(&id, US, None, Err("waf")).await), "blocked");
    assert_eq!(word(&w.call(&id, "+1", None).await), "validation_failed");
    // Two seconds' worth of the rate, spent on refused countries.
    for _ in 0..2 {
        assert_eq!(word(&w.call(&id, FR, None).await), "country_not_allowed");
    }
    assert_eq!(word(&w.call(&id, US, None).await), "rate_per_second");
    let o = w.call(&IdentityId::new().to_string(), US, None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::Invalid { field: "from", .. })), "{o:?}");
    assert_eq!((w.balance().await, w.count("calls", "1 = 1").await), (100, 0));
}

#[tokio::test]
async fn the_concurrent_call_quota_holds_until_a_call_ends() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let first = admitted(w.call(&id, US, None).await);
    assert_eq!(word(&w.call(&id, US, None).await), "admitted");
    assert_eq!(word(&w.call(&id, US, None).await), "concurrent_calls");
    assert_eq!((w.balance().await, w.debits().await), (80, 2));
    w.svc.end_call(&w.scope, &first.id, "failed", None, None).await.unwrap().unwrap();
    assert_eq!(word(&w.call(&id, US, None).await), "admitted");
}

#[tokio::test]
async fn the_call_budget_and_credits_and_their_order() {
    let w = world().await;
    let id = w.identity(Id { budget: Some(10), ..Id::default() }).await;
    assert_eq!(word(&w.call(&id, US, None).await), "admitted");
    // The budget is checked before the quota.
    let mut full = w;
    full.slots = 1;
    assert_eq!(word(&full.call(&id, US, None).await), "monthly_budget");
    // The quota before the credits.
    full.svc.db.write_all(vec![palisade_store::Stmt::new("UPDATE balances SET balance = 9")]).await.unwrap();
    let free = full.identity(Id::default()).await;
    assert_eq!(word(&full.call(&free, US, None).await), "concurrent_calls");
    full.slots = 2;
    let o = full.call(&free, US, None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::InsufficientCredits { cost: 10 })), "{o:?}");
    assert_eq!((full.balance().await, full.debits().await, full.count("calls", "1 = 1").await), (9, 1, 1));
    // A refusal gave its slot and its budget back.
    assert_eq!(full.count("call_slots", "active = 1").await, 1);
    assert_eq!(full.count("identity_spend", "spent = 10").await, 1);
}

#[tokio::test]
async fn a_free_call_needs_no_balance() {
    let w = world_with(false, Pricing { message_segment: 0, call_minute: 0 }).await;
    let id = w.identity(Id::default()).await;
    w.svc.db.write_all(vec![palisade_store::Stmt::new("DELETE FROM balances")]).await.unwrap();
    assert_eq!(admitted(w.call(&id, US, None).await).prepaid, 0);
    assert_eq!(w.debits().await, 0);
}

#[tokio::test]
async fn a_retried_call_is_placed_and_charged_once() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let first = admitted(w.call(&id, US, Some("k")).await);
    let o = w.call(&id, US, Some("k")).await;
    let Outcome::Replayed(a) = o else { panic!("{o:?}") };
    assert_eq!(a.body, format!("{{\"id\":\"{}\"}}", first.id));
    assert_eq!(word(&w.call(&id, FR, Some("k")).await), "idempotency_key_reused");
    assert_eq!((w.debits().await, w.count("calls", "1 = 1").await), (1, 1));
    // A message's key is not a call's.
    assert_eq!(word(&w.send(&id, US, "x", Some("k")).await), "idempotency_key_reused");
}

#[tokio::test]
async fn an_unanswered_call_gets_its_minute_back() {
    let w = world().await;
    endpoint(&w).await;
    let id = w.identity(Id { budget: Some(100), ..Id::default() }).await;
    let c = admitted(w.call(&id, US, None).await);
    assert!(w.svc.call_progress(&w.scope, &c.id, "ringing", false).await.unwrap());
    w.clock.advance_ms(30_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "busy", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.status.as_str(), cdr.billed_minutes, cdr.duration_secs, cdr.cost), ("busy", 0, 0, 0));
    assert_eq!(w.balance().await, 100);
    assert_eq!(w.count("identity_spend", "spent = 0").await, 1);
    assert_eq!(w.count("call_slots", "active = 0").await, 1);
    assert_eq!(w.count("webhook_events", "event_type IN ('call.ended', 'cdr.written')").await, 2);
    assert_eq!(w.count("webhook_events", "event_type = 'call.started'").await, 0);
    // Once only.
    assert!(w.svc.end_call(&w.scope, &c.id, "failed", None, None).await.unwrap().is_none());
    assert!(!w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap());
    assert_eq!(w.count("cdrs", "1 = 1").await, 1);
}

#[tokio::test]
async fn an_answered_call_pays_every_started_minute() {
    let w = world().await;
    endpoint(&w).await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    assert!(w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap());
    assert_eq!(w.count("webhook_events", "event_type = 'call.started'").await, 1);
    w.clock.advance_ms(60_001);
    let by = Some((w.principal.actor(), &w.ctx));
    let cdr = w.svc.end_call(&w.scope, &c.id, "hangup", None, by).await.unwrap().unwrap();
    assert_eq!((cdr.status.as_str(), cdr.duration_secs, cdr.billed_minutes, cdr.cost), ("completed", 61, 2, 20));
    assert_eq!(w.balance().await, 80);
    let audited = format!("action = 'call.ended' AND resource_id = '{}' AND actor_type = 'api_key'", c.id);
    assert_eq!(w.count("audit_events", &audited).await, 1);
}

#[tokio::test]
async fn a_call_of_one_minute_pays_one() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap();
    w.clock.advance_ms(60_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.duration_secs, cdr.billed_minutes, cdr.cost), (60, 1, 10));
    assert_eq!(w.balance().await, 90);
    // Paid at admission: no refund line, and the spend is not touched.
    assert_eq!(w.count("credit_ledger", "reason = 'refund'").await, 0);
    assert_eq!(w.count("identity_spend", "1 = 1").await, 0);
}

#[tokio::test]
async fn a_call_prepaid_at_a_higher_price_gets_the_difference_back() {
    let mut w = world_with(false, Pricing { message_segment: 5, call_minute: 25 }).await;
    let id = w.identity(Id { budget: Some(100), ..Id::default() }).await;
    let c = admitted(w.call(&id, US, None).await);
    assert_eq!((c.prepaid, w.balance().await), (25, 75));
    // The price fell while the call was live.
    Arc::get_mut(&mut w.svc).unwrap().pricing.call_minute = 10;
    w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap();
    w.clock.advance_ms(30_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.billed_minutes, cdr.cost), (1, 10));
    assert_eq!(w.balance().await, 90);
    assert_eq!(w.count("identity_spend", "spent = 10").await, 1);
}

#[tokio::test]
async fn the_rest_of_a_call_is_charged_as_far_as_the_balance_goes() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap();
    w.svc.db.write_all(vec![palisade_store::Stmt::new("UPDATE balances SET balance = 15")]).await.unwrap();
    w.clock.advance_ms(5 * 60_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.billed_minutes, cdr.cost), (5, 25));
    assert_eq!(w.balance().await, 0);
}

#[tokio::test]
async fn recovery_ends_a_call_as_of_when_it_was_last_known() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap();
    w.clock.advance_ms(10 * 60_000);
    let ended = Ended { at: START + 90_000, unless_seen_since: None };
    let cdr = w.svc.end_call_at(&w.scope, &c.id, "failed", Some("interrupted"), None, ended).await.unwrap().unwrap();
    assert_eq!((cdr.duration_secs, cdr.billed_minutes, cdr.ended_at), (90, 2, START + 90_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_one_key_are_placed_once() {
    let mut w = world().await;
    w.slots = 10;
    let id = w.identity(Id::default()).await;
    for k in ["k1", "k2", "k3", "k4"] {
        let (a, b) = tokio::join!(w.call(&id, US, Some(k)), w.call(&id, US, Some(k)));
        let mut words = [word(&a), word(&b)];
        words.sort_unstable();
        assert!(matches!(words, ["admitted", "replayed"] | ["admitted", "conflict"]), "{words:?}");
    }
    assert_eq!((w.debits().await, w.count("calls", "1 = 1").await), (4, 4));
}

/// Whether the webhook worker was woken since the last look.
async fn woken(w: &World) -> bool {
    tokio::time::timeout(std::time::Duration::from_millis(20), w.svc.webhook_wake.notified()).await.is_ok()
}

#[tokio::test]
async fn the_webhook_worker_is_woken_only_for_what_was_queued() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    assert!(w.svc.call_progress(&w.scope, &c.id, "ringing", false).await.unwrap());
    assert!(!woken(&w).await);
    assert!(w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap());
    assert!(woken(&w).await);
    w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().unwrap();
    assert!(woken(&w).await);
    assert!(w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().is_none());
    assert!(!woken(&w).await);
}

#[tokio::test]
async fn a_call_key_is_kept_a_day() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let first = admitted(w.call(&id, US, Some("k")).await);
    w.svc.end_call(&w.scope, &first.id, "failed", None, None).await.unwrap();
    w.clock.advance_ms(crate::idempotency::TTL_MS);
    assert_eq!(word(&w.call(&id, US, Some("k")).await), "replayed");
    w.clock.advance_ms(1);
    assert_eq!(word(&w.call(&id, US, Some("k")).await), "admitted");
}

#[tokio::test]
async fn a_store_error_is_not_a_refusal() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let fail = "CREATE TRIGGER no_keys BEFORE INSERT ON idempotency_keys BEGIN SELECT RAISE(ABORT, 'no'); END";
    w.svc.db.write_all(vec![palisade_store::Stmt::new(fail)]).await.unwrap();
    let c = Call { from: id, to: US.into(), key: Some("k".into()), record: false };
    let answer = |_: &CallRow| Answer { status: 201, body: "{}".into() };
    let r = w.svc.place_call(&w.caller(), c, async { Ok::<(), ()>(()) }, answer).await;
    assert!(r.is_err(), "{r:?}");
    assert_eq!((w.balance().await, w.count("calls", "1 = 1").await), (100, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_end_is_written_later_as_of_when_it_happened() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    let fail = "CREATE TRIGGER no_cdrs BEFORE INSERT ON cdrs BEGIN SELECT RAISE(ABORT, 'no'); END";
    w.svc.db.write_all(vec![palisade_store::Stmt::new(fail)]).await.unwrap();
    w.clock.advance_ms(5_000);
    assert!(w.svc.end_call(&w.scope, &c.id, "failed", Some("x"), None).await.is_err());
    w.svc.db.write_all(vec![palisade_store::Stmt::new("DROP TRIGGER no_cdrs")]).await.unwrap();
    w.clock.advance_ms(60_000);
    for _ in 0..50 {
        if w.count("cdrs", "1 = 1").await > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let at = format!("ended_at = {} AND status = 'failed'", START + 5_000);
    assert_eq!(w.count("cdrs", &at).await, 1);
    assert_eq!(w.count("call_slots", "active = 0").await, 1);
}

#[tokio::test]
async fn an_empty_balance_pays_nothing_more_and_writes_no_charge() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, US, None).await);
    w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap();
    w.svc.db.write_all(vec![palisade_store::Stmt::new("UPDATE balances SET balance = 0")]).await.unwrap();
    w.clock.advance_ms(2 * 60_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "completed", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.billed_minutes, cdr.cost), (2, 10));
    assert_eq!((w.debits().await, w.count("credit_ledger", "reference LIKE '%-end'").await), (1, 0));
    assert_eq!(w.count("identity_spend", "spent > 0").await, 0);
}

#[tokio::test]
async fn a_call_is_vouched_for_with_a_only_from_a_verified_number() {
    let w = world().await;
    let verified = w.identity(Id { verified: true, ..Id::default() }).await;
    let unverified = w.identity(Id::default()).await;
    let a = admitted(w.call(&verified, US, None).await);
    let b = admitted(w.call(&unverified, US, None).await);
    assert_eq!((a.attestation.as_deref(), b.attestation.as_deref()), (Some("A"), Some("B")));
    let stored = palisade_store::calls::get(w.svc.db.reader(), &w.scope, &a.id).await.unwrap().unwrap();
    assert_eq!((stored.attestation.as_deref(), stored.direction.as_str()), (Some("A"), "outbound"));
    assert!(stored.verstat.is_none());
}

fn verification(v: palisade_stir::Verstat) -> palisade_stir::Verification {
    match v {
        palisade_stir::Verstat::Passed => palisade_stir::Verification::passed(palisade_stir::Attestation::B),
        palisade_stir::Verstat::Failed => palisade_stir::Verification::failed(palisade_stir::Failure::Stale),
        palisade_stir::Verstat::NoSignature => palisade_stir::Verification::no_signature(),
    }
}

/// A call a trunk brings in: ringing, free, with its verification, audited
/// and announced; its end writes a CDR that copies it, charges nothing and
/// frees no slot it never took.
#[tokio::test]
async fn an_inbound_call_is_recorded_with_its_verification_and_costs_nothing() {
    let w = world().await;
    endpoint(&w).await;
    let id: IdentityId = w.identity(Id::default()).await.parse().unwrap();
    // One outbound call holds a slot throughout.
    let out = admitted(w.call(&id.to_string(), US, None).await);
    let (balance, debits) = (w.balance().await, w.debits().await);
    let v = verification(palisade_stir::Verstat::Passed);
    let incoming = crate::calls::Incoming { identity: id, from: FR, to: "+12025551000", verification: &v };
    let c = w.svc.receive_call(&w.scope, incoming, &w.ctx).await.unwrap();
    assert_eq!((c.status.as_str(), c.direction.as_str(), c.prepaid), ("ringing", "inbound", 0));
    assert_eq!((c.verstat.as_deref(), c.attestation.as_deref(), c.verstat_reason), (Some("passed"), Some("B"), None));
    assert_eq!(c.to_country, "US");
    let stored = palisade_store::calls::get(w.svc.db.reader(), &w.scope, &c.id).await.unwrap().unwrap();
    assert_eq!((stored.status.as_str(), stored.verstat.as_deref()), ("ringing", Some("passed")));
    let audited = format!("action = 'call.received' AND resource_id = '{}' AND request_id = 'req-1'", c.id);
    assert_eq!(w.count("audit_events", &audited).await, 1);
    assert_eq!(w.count("webhook_events", "event_type = 'call.received'").await, 1);
    assert!(woken(&w).await);

    assert!(w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap());
    w.clock.advance_ms(125_000);
    let cdr = w.svc.end_call(&w.scope, &c.id, "hangup", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.status.as_str(), cdr.duration_secs, cdr.billed_minutes, cdr.cost), ("completed", 125, 0, 0));
    assert_eq!(
        (cdr.direction.as_str(), cdr.verstat.as_deref(), cdr.attestation.as_deref()),
        ("inbound", Some("passed"), Some("B"))
    );
    assert_eq!((w.balance().await, w.debits().await), (balance, debits), "nothing charged or refunded");
    assert_eq!(w.count("call_slots", "active = 1").await, 1, "the outbound call's slot is still held");
    let cdr = w.svc.end_call(&w.scope, &out.id, "failed", None, None).await.unwrap().unwrap();
    assert_eq!(cdr.direction, "outbound");
    assert_eq!(w.count("call_slots", "active = 0").await, 1);

    // A failed verification keeps its reason, on the call and its CDR.
    let v = verification(palisade_stir::Verstat::Failed);
    let incoming = crate::calls::Incoming { identity: id, from: "anonymous", to: "+12025551000", verification: &v };
    let c = w.svc.receive_call(&w.scope, incoming, &w.ctx).await.unwrap();
    assert_eq!(
        (c.verstat.as_deref(), c.verstat_reason.as_deref(), c.attestation),
        (Some("failed"), Some("iat_stale"), None)
    );
    let cdr = w.svc.end_call(&w.scope, &c.id, "hangup", None, None).await.unwrap().unwrap();
    assert_eq!((cdr.status.as_str(), cdr.verstat_reason.as_deref()), ("canceled", Some("iat_stale")));
}
