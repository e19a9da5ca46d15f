use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use palisade_comms::carrier::{magic, BoxFut};
use palisade_comms::{CallAnswer, Carrier, CarrierError, OutboundCall, OutboundMessage, SandboxCarrier};

use super::*;
use crate::life::CallObserver;

/// The sandbox, counting hang-ups.
struct Counting {
    inner: SandboxCarrier,
    hangups: AtomicUsize,
}

impl Carrier for Counting {
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>> {
        self.inner.place_call(c)
    }
    fn callee_hangs_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, ()> {
        self.inner.callee_hangs_up(call_id)
    }
    fn hang_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        self.hangups.fetch_add(1, Ordering::SeqCst);
        self.inner.hang_up(call_id)
    }
    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>> {
        self.inner.send_message(m)
    }
    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>> {
        self.inner.delivery_report(m)
    }
    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        self.inner.send_code(to, text)
    }
    fn reaches_phones(&self) -> bool {
        false
    }
}

#[derive(Default)]
struct Heard(Mutex<Vec<String>>);

impl CallObserver for Heard {
    fn answered(&self, _sdp: Option<&[u8]>) {
        self.0.lock().unwrap().push("answered".into());
    }
    fn ended(&self, status: &str, _code: Option<&str>) {
        self.0.lock().unwrap().push(format!("ended {status}"));
    }
}

fn carrier(delay_ms: u64, call_ms: u64) -> Arc<Counting> {
    let inner = SandboxCarrier::new(Duration::from_millis(delay_ms), Duration::from_millis(call_ms), None);
    Arc::new(Counting { inner, hangups: AtomicUsize::new(0) })
}

/// Places a call to `to` and runs its life; waits until the observer has
/// heard it end (or 3 s).
async fn live(w: &World, carrier: Arc<Counting>, to: &str) -> (String, Vec<String>) {
    let id = w.identity(Id::default()).await;
    let c = admitted(w.call(&id, to, None).await);
    let heard = Arc::new(Heard::default());
    let call = OutboundCall {
        id: c.id.clone(),
        from: c.from_number.clone(),
        to: c.to_number.clone(),
        offer: None,
        attestation: None,
        record: false,
    };
    w.svc.run_call(carrier, w.scope.clone(), call, heard.clone());
    for _ in 0..300 {
        if heard.0.lock().unwrap().iter().any(|h| h.starts_with("ended")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = heard.0.lock().unwrap().clone();
    (c.id, seen)
}

async fn status(w: &World, id: &str) -> (String, Option<String>) {
    let c = palisade_store::calls::get(w.svc.db.reader(), &w.scope, id).await.unwrap().unwrap();
    (c.status, c.error_code)
}

#[tokio::test]
async fn an_answered_call_is_heard_answered_then_ended_by_the_callee() {
    let w = world().await;
    let (id, heard) = live(&w, carrier(1, 20), US).await;
    assert_eq!(heard, ["answered", "ended completed"]);
    assert_eq!(status(&w, &id).await, ("completed".into(), None));
    assert_eq!(w.count("calls", "answered_at IS NOT NULL").await, 1);
}

#[tokio::test]
async fn a_busy_or_failed_callee_ends_the_call_unanswered() {
    let w = world().await;
    let (busy, heard) = live(&w, carrier(1, 20), magic::BUSY).await;
    assert_eq!(heard, ["ended busy"]);
    assert_eq!(status(&w, &busy).await, ("busy".into(), None));
    let (failed, heard) = live(&w, carrier(1, 20), magic::TIMES_OUT).await;
    assert_eq!(heard, ["ended failed"]);
    assert_eq!(status(&w, &failed).await, ("failed".into(), Some("carrier_timeout".into())));
    // Both minutes came back.
    assert_eq!(w.balance().await, 100);
}

#[tokio::test]
async fn a_call_hung_up_while_it_rings_is_not_answered_and_the_line_comes_down() {
    let w = world().await;
    let c = carrier(200, 10_000);
    let id = w.identity(Id::default()).await;
    let placed = admitted(w.call(&id, US, None).await);
    let heard = Arc::new(Heard::default());
    let call = OutboundCall {
        id: placed.id.clone(),
        from: placed.from_number.clone(),
        to: placed.to_number.clone(),
        offer: None,
        attestation: None,
        record: false,
    };
    w.svc.run_call(c.clone(), w.scope.clone(), call, heard.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(w.svc.end_call(&w.scope, &placed.id, "hangup", None, None).await.unwrap().is_some());
    for _ in 0..100 {
        if !heard.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The hang-up is heard as such; the answer after it is not recorded,
    // and the carrier is told.
    assert_eq!(heard.0.lock().unwrap().clone(), ["ended canceled"]);
    for _ in 0..100 {
        if c.hangups.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(c.hangups.load(Ordering::SeqCst), 1);
    assert_eq!(status(&w, &placed.id).await.0, "canceled");
    assert_eq!(w.balance().await, 100);
}

#[tokio::test]
async fn a_call_over_before_it_rings_is_ended_as_failed() {
    let w = world().await;
    let id = w.identity(Id::default()).await;
    let placed = admitted(w.call(&id, US, None).await);
    assert!(w.svc.end_call(&w.scope, &placed.id, "hangup", None, None).await.unwrap().is_some());
    let heard = Arc::new(Heard::default());
    let call = OutboundCall {
        id: placed.id.clone(),
        from: placed.from_number.clone(),
        to: placed.to_number.clone(),
        offer: None,
        attestation: None,
        record: false,
    };
    let c = carrier(1, 10);
    w.svc.run_call(c.clone(), w.scope.clone(), call, heard.clone());
    for _ in 0..100 {
        if !heard.0.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(heard.0.lock().unwrap().clone(), ["ended failed"]);
    // Never placed with the carrier.
    assert_eq!(c.hangups.load(Ordering::SeqCst), 0);
    assert_eq!(status(&w, &placed.id).await.0, "canceled");
}

#[tokio::test]
async fn a_live_call_pays_each_minute_ahead_and_ends_when_it_cannot() {
    let mut w = world().await;
    // A minute of 100 ms for the test; the price stays 10 a minute.
    Arc::get_mut(&mut w.svc).expect("not shared yet").minute = Duration::from_millis(100);
    // 100 in the balance: the first minute at admission, then nine more.
    let c = carrier(1, 60_000);
    let (id, heard) = live(&w, c.clone(), US).await;
    assert_eq!(heard, ["answered", "ended completed"]);
    let call = palisade_store::calls::get(w.svc.db.reader(), &w.scope, &id).await.unwrap().unwrap();
    assert_eq!((call.status.as_str(), call.error_code.as_deref()), ("completed", Some("insufficient_credits")));
    // Ten minutes paid ahead, until the balance ran out...
    assert_eq!(call.prepaid, 100);
    // ...and the end bills what the call used by the service's clock (the
    // test's, which stood still: one minute); the rest comes back.
    assert_eq!(w.balance().await, 90);
    // The line came down at the carrier too.
    assert_eq!(c.hangups.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn paying_the_next_minute_holds_the_budget_and_the_balance() {
    let w = world().await;
    let id = w.identity(Id { budget: Some(25), ..Id::default() }).await;
    let c = admitted(w.call(&id, US, None).await);
    // Not answered yet: nothing to pay.
    assert_eq!(w.svc.extend_call(&w.scope, &c.id).await.unwrap(), crate::life::Extension::Over);
    assert!(w.svc.call_progress(&w.scope, &c.id, "in_progress", true).await.unwrap());
    assert_eq!(w.svc.extend_call(&w.scope, &c.id).await.unwrap(), crate::life::Extension::Paid);
    // The ledger names the minute paid: the call's second.
    assert_eq!(w.count("credit_ledger", &format!("reference = '{}-m2'", c.id)).await, 1);
    // 20 of 25 spent: the third minute is over the budget; nothing charged.
    let unpaid = w.svc.extend_call(&w.scope, &c.id).await.unwrap();
    assert_eq!(unpaid, crate::life::Extension::Unpaid("monthly_budget"));
    assert_eq!(w.balance().await, 80);
    let call = palisade_store::calls::get(w.svc.db.reader(), &w.scope, &c.id).await.unwrap().unwrap();
    assert_eq!(call.prepaid, 20);
    // Over: nothing more is paid.
    w.svc.end_call(&w.scope, &c.id, "hangup", None, None).await.unwrap().unwrap();
    assert_eq!(w.svc.extend_call(&w.scope, &c.id).await.unwrap(), crate::life::Extension::Over);
    assert_eq!(w.balance().await, 90, "the end bills one minute and refunds the other");
}

/// The sandbox, or a carrier that reaches real phones (a trunk).
struct Reaching(bool);

impl Carrier for Reaching {
    fn place_call<'a>(&'a self, _: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>> {
        Box::pin(std::future::ready(Err(CarrierError::Unavailable)))
    }
    fn callee_hangs_up<'a>(&'a self, _: &'a str) -> BoxFut<'a, ()> {
        Box::pin(std::future::ready(()))
    }
    fn hang_up<'a>(&'a self, _: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn send_message<'a>(&'a self, _: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>> {
        Box::pin(std::future::ready(Err(CarrierError::Unavailable)))
    }
    fn delivery_report<'a>(&'a self, _: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn send_code<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn reaches_phones(&self) -> bool {
        self.0
    }
}

#[test]
fn numbers_must_be_verified_when_the_operator_says_so_or_the_carrier_reaches_phones() {
    let rule = |required: bool, carrier: Option<bool>| crate::NumberRule {
        required,
        carrier: carrier.map(|r| Arc::new(Reaching(r)) as Arc<dyn Carrier>),
    };
    assert!(!rule(false, None).applies());
    assert!(!rule(false, Some(false)).applies());
    assert!(rule(false, Some(true)).applies());
    assert!(rule(true, None).applies());
    assert!(rule(true, Some(false)).applies());
}
