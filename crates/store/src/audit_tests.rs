//! The audit store over a real (SQLite) database: events in, the log's
//! integration steps and tenant trees written as statement lists, and every
//! read of them (heads, leaves, nodes, checkpoints, the event feed, the
//! verifier's chunks, retention). The hashes are placeholders: the store
//! keeps what it is given, and `palisade-audit` computes them.

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};

use crate::audit::*;
use crate::{Db, Stmt};

async fn open(dir: &std::path::Path) -> Db {
    let db = Db::connect(&format!("sqlite://{}/audit.db", dir.display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

fn event(id: &str, ts: i64, tenant: Option<&TenantId>) -> NewAuditRow {
    NewAuditRow {
        id: id.into(),
        ts,
        tenant_id: tenant.map(|t| t.to_string()),
        actor_type: "user".into(),
        actor_id: Some(format!("u-{id}")),
        action: format!("act.{id}"),
        resource_type: Some("key".into()),
        resource_id: Some(format!("k-{id}")),
        source_ip: Some(format!("10.0.0.{ts}")),
        user_agent: Some(format!("ua-{id}")),
        request_id: Some(format!("req-{id}")),
        details: format!("{{\"n\":\"{id}\"}}"),
    }
}

/// Every field of a row, to compare a read with what was written.
fn fields(r: &AuditRow) -> Vec<Option<String>> {
    vec![
        Some(r.id.clone()),
        Some(r.ts.to_string()),
        r.tenant_id.clone(),
        Some(r.actor_type.clone()),
        r.actor_id.clone(),
        Some(r.action.clone()),
        r.resource_type.clone(),
        r.resource_id.clone(),
        r.source_ip.clone(),
        r.user_agent.clone(),
        r.request_id.clone(),
        Some(r.details.clone()),
    ]
}

fn new_fields(r: &NewAuditRow) -> Vec<Option<String>> {
    vec![
        Some(r.id.clone()),
        Some(r.ts.to_string()),
        r.tenant_id.clone(),
        Some(r.actor_type.clone()),
        r.actor_id.clone(),
        Some(r.action.clone()),
        r.resource_type.clone(),
        r.resource_id.clone(),
        r.source_ip.clone(),
        r.user_agent.clone(),
        r.request_id.clone(),
        Some(r.details.clone()),
    ]
}

fn ids(rows: &[AuditRow]) -> Vec<&str> {
    rows.iter().map(|r| r.id.as_str()).collect()
}

fn checkpoint(size: i64) -> CheckpointRow {
    CheckpointRow {
        tree_size: size,
        root_hash: format!("root{size}"),
        ts: 100 + size,
        body: format!("body{size}"),
        signature: format!("sig{size}"),
        key_id: "k".into(),
    }
}

fn tenant_checkpoint(tenant: &TenantId, size: i64) -> TenantCheckpointRow {
    TenantCheckpointRow {
        tenant_id: tenant.to_string(),
        tree_size: size,
        root_hash: format!("troot{size}"),
        ts: 200 + size,
        body: format!("tbody{size}"),
        signature: format!("tsig{size}"),
        key_id: "k".into(),
    }
}

/// The log of the tests below:
/// - events e1 (a, ts 1000), e2 (platform, 1001), e3 (b, 1002), e4 (a, 1003),
///   e5 (a, 1004), numbered 1 to 5;
/// - the first integration makes e1..e4 leaves 0..3 (hashes `l<i>`), with
///   nodes and the checkpoint of size 4; tenant a's tree holds leaves 0 and
///   3, b's leaf 2; e5 waits.
struct Log {
    _dir: tempfile::TempDir,
    db: Db,
    a: TenantId,
    b: TenantId,
    events: Vec<NewAuditRow>,
}

async fn log() -> Log {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    let mut events = vec![
        event("e1", 1000, Some(&a)),
        event("e2", 1001, None),
        event("e3", 1002, Some(&b)),
        event("e4", 1003, Some(&a)),
        event("e5", 1004, Some(&a)),
    ];
    // Optional fields left empty are read back as NULL.
    events[1].actor_id = None;
    events[1].resource_type = None;
    events[1].resource_id = None;
    events[1].source_ip = None;
    events[1].user_agent = None;
    events[1].request_id = None;
    // Two in one statement, one as a one-row list, two as a two-row list.
    insert(db.reader(), &events[..2]).await.unwrap();
    db.write_all(vec![insert_stmt(vec![events[2].clone()])]).await.unwrap();
    db.write_all(vec![insert_stmt(events[3..].to_vec())]).await.unwrap();
    assert_eq!(pending_count(db.reader()).await.unwrap(), 5);

    let leaves: Vec<(i64, i64, String)> = (0..4).map(|i| (i, i + 1, format!("l{i}"))).collect();
    let nodes = vec![(1, 0, "n10".to_owned()), (1, 1, "n11".to_owned()), (2, 0, "n20".to_owned())];
    let mut stmts = integrate_stmts(0, "f4", &leaves, &nodes, checkpoint(4));
    let (sa, sb) = (a.to_string(), b.to_string());
    stmts.extend(tenant_stmts(
        &[(sa.clone(), 0, 0, "ta0".into()), (sb.clone(), 0, 2, "tb0".into()), (sa.clone(), 1, 3, "ta1".into())],
        &[(sa.clone(), 1, 0, "tan".into())],
        &[(sa.clone(), 2, "fa".into()), (sb.clone(), 1, "fb".into())],
        &[tenant_checkpoint(&a, 2), tenant_checkpoint(&b, 1)],
    ));
    assert_eq!(db.write_guarded(stmts).await.unwrap().map(|_| ()), Ok(()));
    Log { _dir: dir, db, a, b, events }
}

impl Log {
    /// The second integration: e5 becomes leaf 4, tenant a's third.
    async fn integrate_e5(&self) {
        let sa = self.a.to_string();
        let mut stmts = integrate_stmts(4, "f5", &[(4, 5, "l4".into())], &[], checkpoint(5));
        stmts.extend(tenant_stmts(
            &[(sa.clone(), 2, 4, "ta2".into())],
            &[],
            &[(sa.clone(), 3, "fa3".into())],
            &[tenant_checkpoint(&self.a, 3)],
        ));
        assert_eq!(self.db.write_guarded(stmts).await.unwrap().map(|_| ()), Ok(()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_stored_field_by_field_in_every_insert_form() {
    let l = log().await;
    let rows = pending_batch(l.db.reader(), 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![5]);
    assert_eq!(fields(&rows[0]), new_fields(&l.events[4]));
    // All five, as written, each with its number.
    let all: Vec<AuditRow> =
        sqlx::query_as("SELECT * FROM audit_events ORDER BY seq").fetch_all(l.db.reader()).await.unwrap();
    assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    for (row, new) in all.iter().zip(&l.events) {
        assert_eq!(fields(row), new_fields(new));
    }
    // Only the one-row form is a fixed text that PostgreSQL may merge with
    // other lists'; a many-row form is built for its size.
    let one = insert_stmt(vec![event("x", 1, None)]);
    assert!(matches!(one.merge, crate::write::Merge::Rows));
    assert!(!one.is_dynamic());
    let two = insert_stmt(vec![event("x", 1, None), event("y", 2, None)]);
    assert!(matches!(two.merge, crate::write::Merge::No));
    assert!(two.is_dynamic());
    assert_eq!(two.args().len(), 24);
    assert!(two.sql().ends_with(&format!(", ({})", (13..=24).map(|k| format!("${k}")).collect::<Vec<_>>().join(", "))));
    // Three rows: the third value list is numbered on from the second.
    let mut tx = l.db.begin().await.unwrap();
    insert(&mut *tx, &[event("x1", 1, None), event("x2", 2, None), event("x3", 3, None)]).await.unwrap();
    let got: Vec<AuditRow> =
        sqlx::query_as("SELECT * FROM audit_events WHERE seq > 5 ORDER BY seq").fetch_all(&mut *tx).await.unwrap();
    assert_eq!(
        got.iter().map(fields).collect::<Vec<_>>(),
        ["x1", "x2", "x3"].iter().zip(1..).map(|(id, ts)| new_fields(&event(id, ts, None))).collect::<Vec<_>>()
    );
    tx.rollback().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_integration_moves_the_head_and_writes_leaves_nodes_and_checkpoints() {
    let l = log().await;
    let db = &l.db;
    assert_eq!(read_head(db.reader()).await.unwrap(), (4, "f4".to_owned()));
    assert_eq!(read_head_full(db.reader()).await.unwrap(), (4, "f4".to_owned(), 4));
    assert_eq!(head(db.reader()).await.unwrap(), (4, "f4".to_owned(), 4));
    assert_eq!(tenant_size(db.reader()).await.unwrap(), 4);
    assert_eq!(max_leaf_index(db.reader()).await.unwrap(), Some(3));
    let mut tx = db.begin().await.unwrap();
    assert_eq!(lock_head(&mut tx).await.unwrap(), (4, "f4".to_owned()));
    tx.rollback().await.unwrap();
    for i in 0..4 {
        assert_eq!(leaf_hash_at(db.reader(), i).await.unwrap(), Some(format!("l{i}")));
        let leaf = leaf_by_seq(db.reader(), i + 1).await.unwrap().unwrap();
        assert_eq!((leaf.leaf_index, leaf.leaf_hash), (i, format!("l{i}")));
    }
    assert_eq!(leaf_hash_at(db.reader(), 4).await.unwrap(), None);
    assert!(leaf_by_seq(db.reader(), 5).await.unwrap().is_none());
    assert_eq!(node_hash_at(db.reader(), 1, 1).await.unwrap(), Some("n11".into()));
    assert_eq!(node_hash_at(db.reader(), 2, 0).await.unwrap(), Some("n20".into()));
    assert_eq!(node_hash_at(db.reader(), 2, 1).await.unwrap(), None);
    // The leaves' events left the queue; e5 waits.
    assert_eq!(pending_count(db.reader()).await.unwrap(), 1);
    assert!(any_pending(db.reader()).await.unwrap());
    assert!(tenant_pending(db.reader(), Some(l.a)).await.unwrap());
    assert!(!tenant_pending(db.reader(), Some(l.b)).await.unwrap());
    assert!(tenant_pending(db.reader(), None).await.unwrap());

    // A second integrator that read the same head is refused, and writes nothing.
    let again = integrate_stmts(0, "g", &[(0, 5, "x".into())], &[], checkpoint(1));
    assert_eq!(db.write_guarded(again).await.unwrap(), Err(HEAD_MOVED));
    assert_eq!(read_head(db.reader()).await.unwrap(), (4, "f4".to_owned()));

    l.integrate_e5().await;
    assert_eq!(head(db.reader()).await.unwrap(), (5, "f5".to_owned(), 5));
    assert_eq!(pending_count(db.reader()).await.unwrap(), 0);
    assert!(!any_pending(db.reader()).await.unwrap());
    assert!(!tenant_pending(db.reader(), Some(l.a)).await.unwrap());
    assert!(!tenant_pending(db.reader(), None).await.unwrap());
    assert!(pending_batch(db.reader(), 10).await.unwrap().is_empty());

    let sizes = |c: Vec<CheckpointRow>| c.into_iter().map(|c| (c.tree_size, c.root_hash)).collect::<Vec<_>>();
    assert_eq!(sizes(all_checkpoints(db.reader()).await.unwrap()), vec![(4, "root4".into()), (5, "root5".into())]);
    assert_eq!(sizes(latest_checkpoints(db.reader(), 1).await.unwrap()), vec![(5, "root5".into())]);
    assert_eq!(
        sizes(latest_checkpoints(db.reader(), 5).await.unwrap()),
        vec![(5, "root5".into()), (4, "root4".into())]
    );
    assert_eq!(sizes(checkpoints_after(db.reader(), 4).await.unwrap()), vec![(5, "root5".into())]);
    assert_eq!(sizes(checkpoints_after(db.reader(), 0).await.unwrap()).len(), 2);
    let c = latest_checkpoints(db.reader(), 1).await.unwrap().remove(0);
    assert_eq!((c.ts, c.body, c.signature, c.key_id), (105, "body5".into(), "sig5".into(), "k".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_integrations_are_written_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    const N: i64 = 150;
    let tenants: Vec<String> = (0..N).map(|_| TenantId::new().to_string()).collect();
    let events: Vec<NewAuditRow> = (0..N)
        .map(|i| NewAuditRow { tenant_id: Some(tenants[i as usize].clone()), ..event(&format!("e{i}"), i, None) })
        .collect();
    insert(db.reader(), &events).await.unwrap();
    let leaves: Vec<(i64, i64, String)> = (0..N).map(|i| (i, i + 1, format!("l{i}"))).collect();
    let nodes: Vec<(i64, i64, String)> = (0..N).map(|i| (1, i, format!("n{i}"))).collect();
    let mut stmts = integrate_stmts(0, "f", &leaves, &nodes, checkpoint(N));
    let tleaves: Vec<_> = (0..N).map(|i| (tenants[i as usize].clone(), 0, i, format!("t{i}"))).collect();
    let tnodes: Vec<_> = (0..N).map(|i| (tenants[i as usize].clone(), 1, 0, format!("tn{i}"))).collect();
    let theads: Vec<_> = (0..N).map(|i| (tenants[i as usize].clone(), 1, format!("tf{i}"))).collect();
    let tcps: Vec<_> = tenants
        .iter()
        .map(|t| TenantCheckpointRow { tenant_id: t.clone(), ..tenant_checkpoint(&TenantId::new(), 1) })
        .collect();
    stmts.extend(tenant_stmts(&tleaves, &tnodes, &theads, &tcps));
    db.write_all(stmts).await.unwrap();

    assert_eq!(head(db.reader()).await.unwrap(), (N, "f".to_owned(), N));
    assert_eq!(pending_count(db.reader()).await.unwrap(), 0);
    for i in 0..N {
        assert_eq!(leaf_hash_at(db.reader(), i).await.unwrap(), Some(format!("l{i}")), "leaf {i}");
        assert_eq!(node_hash_at(db.reader(), 1, i).await.unwrap(), Some(format!("n{i}")), "node {i}");
        let t = &tenants[i as usize];
        assert_eq!(tenant_leaf_hash_at(db.reader(), t, 0).await.unwrap(), Some(format!("t{i}")), "tenant leaf {i}");
        assert_eq!(tenant_node_hash_at(db.reader(), t, 1, 0).await.unwrap(), Some(format!("tn{i}")));
    }
    let heads = tenant_heads(db.reader(), &tenants).await.unwrap();
    assert_eq!(heads.len(), N as usize);
    for (t, size, frontier) in heads {
        let i = tenants.iter().position(|x| *x == t).unwrap();
        assert_eq!((size, frontier), (1, format!("tf{i}")));
    }
    let cps = all_tenant_checkpoints(db.reader()).await.unwrap();
    let mut got: Vec<_> = cps.iter().map(|c| c.tenant_id.clone()).collect();
    got.sort();
    let mut want = tenants.clone();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_trees_are_read_per_tenant() {
    let l = log().await;
    let (db, a, b) = (&l.db, l.a, l.b);
    let (sa, sb) = (a.to_string(), b.to_string());
    let unknown = TenantId::new();

    let mut heads = tenant_heads(db.reader(), &[sa.clone(), sb.clone(), unknown.to_string()]).await.unwrap();
    heads.sort_by_key(|h| h.1);
    assert_eq!(heads, vec![(sb.clone(), 1, "fb".to_owned()), (sa.clone(), 2, "fa".to_owned())]);
    assert!(tenant_heads(db.reader(), &[]).await.unwrap().is_empty());
    assert_eq!(tenant_head(db.reader(), a).await.unwrap(), (2, "fa".to_owned(), 2, Some(3)));
    assert_eq!(tenant_head(db.reader(), b).await.unwrap(), (1, "fb".to_owned(), 1, Some(2)));
    assert_eq!(tenant_head(db.reader(), unknown).await.unwrap(), (0, String::new(), 0, None));

    let at = tenant_events_at_leaves(db.reader(), 0, 4).await.unwrap();
    assert_eq!(
        at.iter().map(|(i, r)| (*i, r.id.as_str(), r.seq)).collect::<Vec<_>>(),
        vec![(0, "e1", 1), (2, "e3", 3), (3, "e4", 4)]
    );
    assert_eq!(tenant_events_at_leaves(db.reader(), 1, 3).await.unwrap().len(), 1);

    assert_eq!(tenant_leaf_of_event(db.reader(), a, 4).await.unwrap(), Some((1, "ta1".to_owned())));
    assert_eq!(tenant_leaf_of_event(db.reader(), b, 4).await.unwrap(), None);
    assert_eq!(tenant_leaf_hash_at(db.reader(), &sa, 1).await.unwrap(), Some("ta1".into()));
    assert_eq!(tenant_leaf_hash_at(db.reader(), &sb, 1).await.unwrap(), None);
    assert_eq!(tenant_node_hash_at(db.reader(), &sa, 1, 0).await.unwrap(), Some("tan".into()));
    assert_eq!(tenant_node_hash_at(db.reader(), &sb, 1, 0).await.unwrap(), None);

    let entries = tenant_tree_entries(db.reader(), 0, 4).await.unwrap();
    let mut entries: Vec<_> = entries.into_iter().collect();
    entries.sort();
    assert_eq!(
        entries,
        vec![(0, (sa.clone(), "ta0".into())), (2, (sb.clone(), "tb0".into())), (3, (sa.clone(), "ta1".into()))]
    );

    l.integrate_e5().await;
    let cps = latest_tenant_checkpoints(db.reader(), a, 1).await.unwrap();
    assert_eq!(cps.iter().map(|c| (c.tenant_id.as_str(), c.tree_size)).collect::<Vec<_>>(), vec![(sa.as_str(), 3)]);
    let c = &cps[0];
    assert_eq!((c.root_hash.as_str(), c.ts, c.body.as_str(), c.signature.as_str()), ("troot3", 203, "tbody3", "tsig3"));
    assert_eq!(
        latest_tenant_checkpoints(db.reader(), a, 5).await.unwrap().iter().map(|c| c.tree_size).collect::<Vec<_>>(),
        vec![3, 2]
    );
    let all = all_tenant_checkpoints(db.reader()).await.unwrap();
    let mut all: Vec<_> = all.iter().map(|c| (c.tenant_id.clone(), c.tree_size)).collect();
    all.sort();
    let mut want = vec![(sa.clone(), 2), (sa.clone(), 3), (sb.clone(), 1)];
    want.sort();
    assert_eq!(all, want);

    // The tenant's recent events, newest first, with their tenant leaves.
    let scope = TenantScope::for_system(a);
    let recent = recent_of_tenant(db.reader(), &scope, 10).await.unwrap();
    assert_eq!(
        recent.iter().map(|(r, leaf)| (r.id.as_str(), leaf.clone())).collect::<Vec<_>>(),
        vec![("e5", Some((2, "ta2".into()))), ("e4", Some((1, "ta1".into()))), ("e1", Some((0, "ta0".into())))]
    );
    assert_eq!(recent_of_tenant(db.reader(), &scope, 1).await.unwrap().len(), 1);
    assert_eq!(fields(&event_of_tenant(db.reader(), &scope, "e4").await.unwrap().unwrap()), new_fields(&l.events[3]));
    assert!(event_of_tenant(db.reader(), &scope, "e3").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_trees_catch_up_once_and_never_past_the_log() {
    let l = log().await;
    let db = &l.db;
    db.write_all(vec![Stmt::new("UPDATE audit_head SET tenant_size = 1 WHERE id = 1")]).await.unwrap();
    assert_eq!(tenant_size(db.reader()).await.unwrap(), 1);
    // Past the log's size: refused.
    assert_eq!(db.write_guarded(vec![tenant_catch_up_stmt(1, 5)]).await.unwrap(), Err(HEAD_MOVED));
    // From a marker that moved: refused.
    assert_eq!(db.write_guarded(vec![tenant_catch_up_stmt(0, 3)]).await.unwrap(), Err(HEAD_MOVED));
    assert_eq!(db.write_guarded(vec![tenant_catch_up_stmt(1, 3)]).await.unwrap(), Ok(vec![1]));
    assert_eq!(read_head_full(db.reader()).await.unwrap(), (4, "f4".to_owned(), 3));
    assert_eq!(db.write_guarded(vec![tenant_catch_up_stmt(3, 4)]).await.unwrap(), Ok(vec![1]));
    assert_eq!(tenant_size(db.reader()).await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_reads_sequenced_events_by_reader_and_filter() {
    let l = log().await;
    let (db, a) = (&l.db, l.a);
    let scope = TenantScope::for_system(a);
    let proof = SysadminProof::verified();
    assert_eq!(Reader::Tenant(&scope).tenant(), Some(a));
    assert_eq!(Reader::Operator(&proof, Some(l.b)).tenant(), Some(l.b));
    assert_eq!(Reader::Operator(&proof, None).tenant(), None);

    let all = AuditFilter { limit: 100, ..AuditFilter::default() };
    // A tenant reads its own tree, numbered by it; e5 is not sequenced yet.
    let rows = list(db.reader(), Reader::Tenant(&scope), &all).await.unwrap();
    assert_eq!(ids(&rows), vec!["e1", "e4"]);
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(fields(&rows[1]), new_fields(&l.events[3]));
    let after = AuditFilter { after_seq: Some(1), ..all.clone() };
    assert_eq!(ids(&list(db.reader(), Reader::Tenant(&scope), &after).await.unwrap()), vec!["e4"]);
    // The operator reads the platform's numbers.
    let rows = list(db.reader(), Reader::Operator(&proof, None), &all).await.unwrap();
    assert_eq!(ids(&rows), vec!["e1", "e2", "e3", "e4"]);
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    let rows = list(db.reader(), Reader::Operator(&proof, Some(a)), &all).await.unwrap();
    assert_eq!(ids(&rows), vec!["e1", "e4"]);
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 4]);
    let by_action = AuditFilter { action: Some("act.e3".into()), ..all.clone() };
    assert_eq!(ids(&list(db.reader(), Reader::Operator(&proof, None), &by_action).await.unwrap()), vec!["e3"]);
    let window = AuditFilter { since_ms: Some(1001), until_ms: Some(1003), ..all.clone() };
    assert_eq!(ids(&list(db.reader(), Reader::Operator(&proof, None), &window).await.unwrap()), vec!["e2", "e3"]);
    let one = AuditFilter { limit: 1, ..all.clone() };
    assert_eq!(ids(&list(db.reader(), Reader::Operator(&proof, None), &one).await.unwrap()), vec!["e1"]);
}

/// The separator-joined fields of a present event, as the fast path reads them.
fn record(index: i64, hash: &str, seq: i64, e: &NewAuditRow) -> String {
    let tagged = |v: &Option<String>| v.as_ref().map_or("0".to_owned(), |v| format!("1{v}"));
    [
        index.to_string(),
        seq.to_string(),
        hash.to_owned(),
        seq.to_string(),
        e.id.clone(),
        e.ts.to_string(),
        tagged(&e.tenant_id),
        e.actor_type.clone(),
        tagged(&e.actor_id),
        e.action.clone(),
        tagged(&e.resource_type),
        tagged(&e.resource_id),
        tagged(&e.source_ip),
        tagged(&e.user_agent),
        tagged(&e.request_id),
        e.details.clone(),
    ]
    .join(&FIELD_SEP.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verifiers_chunks_hold_every_leaf_and_its_record() {
    let l = log().await;
    let db = &l.db;
    let chunk = leaf_fields_chunk(db, 0, 4).await.unwrap();
    let records = split_records(&chunk).unwrap();
    let want: Vec<String> = (0..4).map(|i| record(i, &format!("l{i}"), i + 1, &l.events[i as usize])).collect();
    assert_eq!(records, want);
    assert_eq!(split_records(&leaf_fields_chunk(db, 1, 3).await.unwrap()).unwrap(), want[1..3].to_vec());
    assert_eq!(leaf_fields_chunk(db, 4, 10).await.unwrap(), "");

    let text = leaf_chunk(db, 0, 4).await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);
    for (i, line) in lines.iter().enumerate() {
        let e = &l.events[i];
        assert!(
            line.starts_with(&format!(
                "{i} {} l{i} [\"palisade-audit-leaf/v1\",{},\"{}\",{},",
                i + 1,
                i + 1,
                e.id,
                e.ts
            )),
            "{line}"
        );
    }
    assert_eq!(leaf_chunk(db, 4, 10).await.unwrap(), "");

    // An event row of a type the integrator never writes (text for its
    // time): its record is one the fast path refuses.
    db.write_all(vec![Stmt::new(
        "INSERT INTO audit_events (id, ts, actor_type, action, details) VALUES ('odd', 'soon', 'user', 'x', '{}')",
    )])
    .await
    .unwrap();
    l.integrate_e5().await;
    db.write_all(integrate_stmts(5, "f6", &[(5, 6, "l5".into())], &[], checkpoint(6))).await.unwrap();
    let records = leaf_fields_chunk(db, 4, 6).await.unwrap();
    assert_eq!(split_records(&records).unwrap(), vec![record(4, "l4", 5, &l.events[4]), "?".to_owned()]);

    // Expired records: the leaf stays, its record is `-`.
    let mut tx = db.begin().await.unwrap();
    let statement = ExpiryRow { up_to_leaf: 2, ts: 9, body: "b".into(), signature: "s".into(), key_id: "k".into() };
    assert_eq!(expire(&mut tx, &statement).await.unwrap(), 2);
    tx.commit().await.unwrap();
    let sep = FIELD_SEP;
    assert_eq!(
        split_records(&leaf_fields_chunk(db, 0, 3).await.unwrap()).unwrap(),
        vec![format!("0{sep}1{sep}l0{sep}-"), format!("1{sep}2{sep}l1{sep}-"), want[2].clone()]
    );
    assert!(leaf_chunk(db, 0, 1).await.unwrap().starts_with("0 1 l0 -"));
}

#[test]
fn records_split_by_their_length_prefix() {
    let sep = FIELD_SEP;
    let chunk = format!("3:a:b1:x0:3:{sep}{sep}:");
    assert_eq!(split_records(&chunk), Some(vec!["a:b", "x", "", &format!("{sep}{sep}:")[..]]));
    assert_eq!(split_records(""), Some(vec![]));
    assert_eq!(split_records("4:abc"), None);
    assert_eq!(split_records("x:abc"), None);
    assert_eq!(split_records("3abc"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_only_what_a_signed_statement_covers() {
    let l = log().await;
    let db = &l.db;
    let mut tx = db.begin().await.unwrap();
    assert_eq!(first_leaf_not_before(&mut *tx, 0).await.unwrap(), 0);
    assert_eq!(first_leaf_not_before(&mut *tx, 1002).await.unwrap(), 2);
    assert_eq!(first_leaf_not_before(&mut *tx, 1003).await.unwrap(), 3);
    // All older (e5 is no leaf yet): the tree's size.
    assert_eq!(first_leaf_not_before(&mut *tx, 1004).await.unwrap(), 4);
    assert_eq!(expired_up_to(&mut *tx).await.unwrap(), 0);
    tx.rollback().await.unwrap();

    let mut tx = db.begin().await.unwrap();
    let statement = ExpiryRow { up_to_leaf: 3, ts: 9, body: "b".into(), signature: "s".into(), key_id: "k".into() };
    assert_eq!(expire(&mut tx, &statement).await.unwrap(), 3);
    assert_eq!(expired_up_to(&mut *tx).await.unwrap(), 3);
    tx.commit().await.unwrap();
    let left: Vec<i64> =
        sqlx::query_scalar("SELECT seq FROM audit_events ORDER BY seq").fetch_all(db.reader()).await.unwrap();
    assert_eq!(left, vec![4, 5]);
    let all = all_expiries(db.reader()).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.up_to_leaf, e.ts, e.body.as_str(), e.signature.as_str(), e.key_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(3, 9, "b", "s", "k")]
    );
    // The statement is what lets the rows go: one further up removes one more.
    let mut tx = db.begin().await.unwrap();
    let statement = ExpiryRow { up_to_leaf: 4, ..statement };
    assert_eq!(expire(&mut tx, &statement).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(all_expiries(db.reader()).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_log_and_events_behind_its_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    assert_eq!(max_leaf_index(db.reader()).await.unwrap(), None);
    let mut tx = db.begin().await.unwrap();
    assert_eq!(first_leaf_not_before(&mut *tx, 0).await.unwrap(), 0);
    tx.rollback().await.unwrap();
    assert!(!any_pending(db.reader()).await.unwrap());
    assert!(unlogged_events(db.reader(), 10).await.unwrap().is_empty());

    let l = log().await;
    // Rows taken out of the queue without becoming leaves.
    insert(l.db.reader(), &[event("e6", 2000, None), event("e7", 2001, None), event("e8", 2002, None)]).await.unwrap();
    l.db.write_all(vec![Stmt::new("DELETE FROM audit_pending WHERE seq IN (6, 8)")]).await.unwrap();
    assert_eq!(unlogged_events(l.db.reader(), 10).await.unwrap(), vec![6, 8]);
    assert_eq!(unlogged_events(l.db.reader(), 1).await.unwrap(), vec![6]);
    assert_eq!(unlogged_events_serial(&l.db, 10).await.unwrap(), vec![6, 8]);
}

/// A schema altered behind the store's back (an attacker with write access
/// to the database): a NULL where the schema forbids one, or an integer
/// where only text is stored, makes a record the verifier's fast path
/// refuses, never one that passes for a genuine value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_schema_forbids_go_to_the_careful_path() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut c = sqlx::AnyConnection::connect(&format!("sqlite://{}/audit.db", dir.path().display())).await.unwrap();
    for sql in [
        "ALTER TABLE audit_events RENAME TO audit_events_old",
        // No types: no NOT NULL, and no TEXT affinity turning integers into text.
        "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, id, ts, tenant_id, actor_type, actor_id, action, \
         resource_type, resource_id, source_ip, user_agent, request_id, details)",
        "INSERT INTO audit_events (seq, id, ts, actor_type, action, details) VALUES (1, 'e1', 5, 'user', 'x', NULL)",
        "INSERT INTO audit_events (seq, id, ts, actor_type, action, details) VALUES (2, 7, 5, 'user', 'x', '{}')",
        "INSERT INTO audit_events (seq, id, ts, actor_type, action, details) VALUES (3, 'e3', 5, 'user', 'x', '{}')",
        "INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES (0, 1, 'h0'), (1, 2, 'h1'), (2, 3, 'h2')",
    ] {
        sqlx::query(sql).execute(&mut c).await.unwrap();
    }
    c.close().await.unwrap();
    let chunk = leaf_fields_chunk(&db, 0, 3).await.unwrap();
    let genuine = ["2", "3", "h2", "3", "e3", "5", "0", "user", "0", "x", "0", "0", "0", "0", "0", "{}"]
        .join(&FIELD_SEP.to_string());
    assert_eq!(split_records(&chunk).unwrap(), vec!["?", "?", genuine.as_str()]);
}

/// A tenant's own retention in the store: its leaves, rows and records by
/// leaf range, its statements, and the removal its statement allows (and
/// the database refuses beyond it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_statements_leaves_and_removal() {
    let l = log().await;
    let (db, r) = (&l.db, l.db.reader());
    let a = TenantScope::for_sysadmin(&SysadminProof::verified(), l.a);
    let b = TenantScope::for_sysadmin(&SysadminProof::verified(), l.b);
    assert_eq!(tenant_rows_between(r, &a, 0, 4).await.unwrap(), vec![(0, 0, "ta0".into()), (3, 1, "ta1".into())]);
    assert_eq!(tenant_rows_between(r, &a, 1, 3).await.unwrap(), vec![]);
    assert!(tenant_has_records_between(r, &a, 3, 4).await.unwrap());
    assert!(!tenant_has_records_between(r, &a, 1, 3).await.unwrap());
    assert!(!tenant_has_records_between(r, &b, 0, 2).await.unwrap());
    assert!(tenant_has_records_between(r, &b, 2, 3).await.unwrap());
    assert_eq!(oldest_leaf_of(r, &a).await.unwrap(), Some(0));
    assert_eq!(tenant_expired_up_to(r, &a).await.unwrap(), 0);
    assert!(all_tenant_expiries(r).await.unwrap().is_empty());

    let row = ExpiryRow { up_to_leaf: 3, ts: 9, body: "b".into(), signature: "s".into(), key_id: "k".into() };
    let mut tx = db.begin().await.unwrap();
    record_tenant_expiry(&mut tx, &a, &row).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!((tenant_expired_up_to(r, &a).await.unwrap(), tenant_expired_up_to(r, &b).await.unwrap()), (3, 0));
    let all = all_tenant_expiries(r).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|(t, e)| (t.clone(), e.up_to_leaf, e.ts, e.body.as_str(), e.signature.as_str(), e.key_id.as_str()))
            .collect::<Vec<_>>(),
        vec![(l.a.to_string(), 3, 9, "b", "s", "k")]
    );
    // Beyond the statement the database refuses; within it a's record goes, not b's.
    let mut tx = db.begin().await.unwrap();
    assert!(remove_tenant_expired(&mut tx, &a, 4, 10).await.is_err());
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(remove_tenant_expired(&mut tx, &b, 3, 10).await.is_err(), "b has no statement");
    tx.rollback().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(remove_tenant_expired(&mut tx, &a, 3, 10).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(oldest_leaf_of(r, &a).await.unwrap(), Some(3));
    let left: Vec<String> = sqlx::query_scalar("SELECT id FROM audit_events ORDER BY seq").fetch_all(r).await.unwrap();
    assert_eq!(left, vec!["e2", "e3", "e4", "e5"]);
    // A second statement further up, and a batch of one.
    let mut tx = db.begin().await.unwrap();
    record_tenant_expiry(&mut tx, &a, &ExpiryRow { up_to_leaf: 4, ..row }).await.unwrap();
    assert_eq!(remove_tenant_expired(&mut tx, &a, 4, 1).await.unwrap(), 1);
    assert_eq!(remove_tenant_expired(&mut tx, &a, 4, 1).await.unwrap(), 0);
    tx.commit().await.unwrap();
    assert_eq!(oldest_leaf_of(r, &a).await.unwrap(), None);
}

/// The verifier's reader skips an empty stretch of leaves to the next leaf
/// there is, and stops where chunks cannot grow: a leaf planted far beyond
/// the log is reached at once, one at `i64::MAX` ends the reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_jumps_to_a_far_leaf_and_ends_at_the_last_index() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let mut c = sqlx::AnyConnection::connect(&format!("sqlite://{}/audit.db", dir.path().display())).await.unwrap();
    let far = 1_000_000i64;
    sqlx::query(&format!(
        "INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES \
         (0, 1, 'h0'), (1, 2, 'h1'), (2, 3, 'h2'), ({far}, 4, 'h3'), ({}, 5, 'h4')",
        i64::MAX
    ))
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    let r = db.reader();
    assert_eq!(next_leaf_index(r, 0).await.unwrap(), Some(0));
    assert_eq!(next_leaf_index(r, 3).await.unwrap(), Some(far));
    assert_eq!(next_leaf_index(r, far).await.unwrap(), Some(far));
    assert_eq!(next_leaf_index(r, far + 1).await.unwrap(), Some(i64::MAX));
    let (mut chunks, _spent) = crate::audit_copy::leaf_chunks(&db, i64::MAX, 2);
    let mut read = Vec::new();
    let all = async {
        while let Some(next) = chunks.recv().await {
            let (from, text) = next.unwrap();
            read.push((from, split_records(&text).unwrap().len()));
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), all).await.expect("the reading ends");
    assert_eq!(read, [(0, 2), (2, 1), (4, 0), (far, 1), (far + 2, 0), (i64::MAX, 0)]);
    // Up to the last leaf asked for, no further.
    let (mut chunks, _spent) = crate::audit_copy::leaf_chunks(&db, 3, 2);
    let mut froms = Vec::new();
    while let Some(next) = chunks.recv().await {
        froms.push(next.unwrap().0);
    }
    assert_eq!(froms, [0, 2]);
}
