use super::*;
use crate::idempotency::TTL_MS;
use crate::Refusal;

#[tokio::test]
async fn a_message_is_recorded_charged_and_audited_once() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let m = admitted(w.send(&id, &format!(" {US} "), "hello", None).await);
    assert_eq!((m.to_number.as_str(), m.to_country.as_str(), m.status.as_str()), (US, "US", "queued"));
    assert_eq!((m.segments, m.cost, m.identity_id.as_str()), (1, 5, id.as_str()));
    assert_eq!(w.balance().await, 95);
    assert_eq!(w.debits().await, 1);
    assert_eq!(w.count("messages", "status = 'queued'").await, 1);
    let audited = format!("action = 'message.sent' AND resource_id = '{}' AND request_id = 'req-1'", m.id);
    assert_eq!(w.count("audit_events", &audited).await, 1);
}

#[tokio::test]
async fn the_sender_is_named_by_id_or_number_within_the_tenant() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let number: String = sqlx::query_scalar("SELECT number FROM identities WHERE id = $1")
        .bind(&id)
        .fetch_one(w.svc.db.reader())
        .await
        .unwrap();
    assert_eq!(word(&w.send(&number, US, "hi", None).await), "admitted");
    let o = w.send(&IdentityId::new().to_string(), US, "hi", None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::Invalid { field: "from", .. })), "{o:?}");
}

#[tokio::test]
async fn a_body_is_1_to_1600_characters_and_costs_its_segments() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    for body in ["", &"a".repeat(1601)] {
        let o = w.send(&id, US, body, None).await;
        assert!(matches!(o, Outcome::Refused(Refusal::Invalid { field: "body", .. })), "{o:?}");
    }
    assert_eq!(admitted(w.send(&id, US, &"a".repeat(1600), None).await).segments, 11);
    assert_eq!(admitted(w.send(&id, US, &"a".repeat(161), None).await).cost, 10);
    assert_eq!(w.balance().await, 100 - 55 - 10);
}

#[tokio::test]
async fn a_frozen_identity_is_refused_before_its_body_is_screened() {
    let w = world().await;
    let id = w.identity(Id { frozen: true, ..Id::default() }).await;
    assert_eq!(word(&w.send_screened(&id, US, "x", None, Err("waf")).await), "frozen");
    assert_eq!((w.balance().await, w.count("messages", "1 = 1").await), (100, 0));
}

#[tokio::test]
async fn an_agent_sends_only_as_its_own_identity() {
    let mut w = world().await;
    let own = w.identity(Id::default()).await;
    let other = w.identity(Id::default()).await;
    let kind = PrincipalKind::Agent { identity_id: own.parse().unwrap(), owner_user_id: None, minted_by_key: None };
    w.principal = Principal::authenticated(w.scope.tenant_id(), kind, PermissionSet::all());
    assert_eq!(word(&w.send(&other, US, "x", None).await), "forbidden");
    assert_eq!(word(&w.send(&own, US, "x", None).await), "admitted");
}

#[tokio::test]
async fn an_unverified_number_sends_only_where_no_verification_is_required() {
    let w = world_with(true, Pricing::default()).await;
    let unverified = w.identity(Id::default()).await;
    let verified = w.identity(Id { verified: true, ..Id::default() }).await;
    assert_eq!(word(&w.send_screened(&unverified, US, "x", None, Err("waf")).await), "number_not_verified");
    assert_eq!(word(&w.send(&verified, US, "x", None).await), "admitted");
    let w = world().await;
    let unverified = w.identity(Id::default()).await;
    assert_eq!(word(&w.send(&unverified, US, "x", None).await), "admitted");
}

#[tokio::test]
async fn the_screen_refuses_before_the_destination_is_read() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let o = w.send_screened(&id, "not a number", "x", None, Err("waf")).await;
    assert!(matches!(o, Outcome::Refused(Refusal::Screened("waf"))), "{o:?}");
    let o = w.send(&id, "not a number", "x", None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::Invalid { field: "to", .. })), "{o:?}");
    assert_eq!(w.balance().await, 100);
}

#[tokio::test]
async fn rate_per_second_refuses_past_the_rate_until_it_recovers() {
    let w = world().await;
    // One a second, with two seconds' worth at once.
    let id = w.identity(Id { rate: Some(1), ..Id::default() }).await;
    for _ in 0..2 {
        assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    }
    let o = w.send(&id, US, "x", None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::RatePerSecond { retry_after: 1 })), "{o:?}");
    assert_eq!(w.debits().await, 2);
    w.clock.advance_ms(1000);
    assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    assert_eq!(word(&w.send(&id, US, "x", None).await), "rate_per_second");
    // Without a rate: no limit.
    let free = w.identity(Id::default()).await;
    for _ in 0..5 {
        assert_eq!(word(&w.send(&free, US, "x", None).await), "admitted");
    }
}

#[tokio::test]
async fn the_rate_counts_before_the_country_is_checked() {
    let w = world().await;
    let id = w.identity(Id { rate: Some(1), countries: r#"["US"]"#, ..Id::default() }).await;
    for _ in 0..2 {
        assert_eq!(word(&w.send(&id, FR, "x", None).await), "country_not_allowed");
    }
    assert_eq!(word(&w.send(&id, US, "x", None).await), "rate_per_second");
}

#[tokio::test]
async fn only_allowed_countries_are_reached() {
    let w = world().await;
    let id = w.identity(Id { countries: r#"["US","DE"]"#, ..Id::default() }).await;
    assert_eq!(word(&w.send(&id, FR, "x", None).await), "country_not_allowed");
    assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    let anywhere = w.identity(Id::default()).await;
    assert_eq!(word(&w.send(&anywhere, FR, "x", None).await), "admitted");
    assert_eq!(w.debits().await, 2);
}

#[tokio::test]
async fn the_monthly_budget_admits_up_to_it_exactly() {
    let w = world().await;
    let id = w.identity(Id { budget: Some(10), ..Id::default() }).await;
    assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    assert_eq!(word(&w.send(&id, US, "x", None).await), "monthly_budget");
    assert_eq!((w.balance().await, w.debits().await), (90, 2));
}

#[tokio::test]
async fn the_budget_refuses_before_the_credits() {
    let w = world().await;
    let id = w.identity(Id { budget: Some(0), ..Id::default() }).await;
    w.svc.db.write_all(vec![palisade_store::Stmt::new("UPDATE balances SET balance = 0")]).await.unwrap();
    assert_eq!(word(&w.send(&id, US, "x", None).await), "monthly_budget");
}

#[tokio::test]
async fn credits_must_cover_the_cost_and_a_refusal_charges_nothing() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    w.svc.db.write_all(vec![palisade_store::Stmt::new("UPDATE balances SET balance = 9")]).await.unwrap();
    let o = w.send(&id, US, &"a".repeat(161), None).await;
    assert!(matches!(o, Outcome::Refused(Refusal::InsufficientCredits { cost: 10 })), "{o:?}");
    assert_eq!((w.balance().await, w.debits().await, w.count("messages", "1 = 1").await), (9, 0, 0));
    assert_eq!(word(&w.send(&id, US, "x", None).await), "admitted");
    assert_eq!((w.balance().await, w.debits().await), (4, 1));
}

#[tokio::test]
async fn a_free_message_needs_no_balance() {
    let w = world_with(false, Pricing { message_segment: 0, call_minute: 0 }).await;
    let id = w.identity(Id::default()).await;
    w.svc.db.write_all(vec![palisade_store::Stmt::new("DELETE FROM balances")]).await.unwrap();
    assert_eq!(admitted(w.send(&id, US, "x", None).await).cost, 0);
    assert_eq!(w.debits().await, 0);
}

#[tokio::test]
async fn a_retry_with_its_key_gets_the_first_answer_and_no_second_charge() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let first = admitted(w.send(&id, US, "x", Some("k1")).await);
    let o = w.send(&id, US, "x", Some("k1")).await;
    let Outcome::Replayed(a) = o else { panic!("{o:?}") };
    assert_eq!(a, Answer { status: 201, body: format!("{{\"id\":\"{}\"}}", first.id) });
    assert_eq!((w.debits().await, w.count("messages", "1 = 1").await), (1, 1));
    // Another body, or the same key from another credential: refused.
    assert_eq!(word(&w.send(&id, US, "y", Some("k1")).await), "idempotency_key_reused");
    let mut other = w;
    let kind = PrincipalKind::ApiKey { key_id: ApiKeyId::new(), owner_user_id: None };
    other.principal = Principal::authenticated(other.scope.tenant_id(), kind, PermissionSet::all());
    assert_eq!(word(&other.send(&id, US, "x", Some("k1")).await), "idempotency_key_reused");
    // Other keys are other requests.
    assert_eq!(word(&other.send(&id, US, "x", Some("k2")).await), "admitted");
    assert_eq!(word(&other.send(&id, US, "x", None).await), "admitted");
    assert_eq!(other.debits().await, 3);
}

#[tokio::test]
async fn a_key_is_kept_a_day() {
    assert_eq!(TTL_MS, 86_400_000);
    let w = world().await;
    let id = w.identity(Id::default()).await;
    w.send(&id, US, "x", Some("k")).await;
    w.clock.advance_ms(TTL_MS);
    assert_eq!(word(&w.send(&id, US, "x", Some("k")).await), "replayed");
    w.clock.advance_ms(1);
    assert_eq!(word(&w.send(&id, US, "x", Some("k")).await), "admitted");
    assert_eq!(w.debits().await, 2);
}

#[tokio::test]
async fn a_replay_comes_before_any_other_check() {
    let w = world().await;
    let id = w.identity(Id { budget: Some(5), ..Id::default() }).await;
    w.send(&id, US, "x", Some("k")).await;
    // Past its budget now, but the retry is the same request.
    assert_eq!(word(&w.send(&id, US, "x", Some("k")).await), "replayed");
    assert_eq!(word(&w.send(&id, US, "x", Some("k2")).await), "monthly_budget");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_are_charged_once() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    for k in ["k1", "k2", "k3", "k4"] {
        let (a, b) = tokio::join!(w.send(&id, US, "x", Some(k)), w.send(&id, US, "x", Some(k)));
        let mut words = [word(&a), word(&b)];
        words.sort_unstable();
        // The second waits for the first, or finds it in progress.
        assert!(matches!(words, ["admitted", "replayed"] | ["admitted", "conflict"]), "{words:?}");
    }
    assert_eq!((w.debits().await, w.count("messages", "1 = 1").await), (4, 4));
}
