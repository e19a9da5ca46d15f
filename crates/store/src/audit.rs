//! The audit table. Rows are only ever inserted.

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub id: String,
    pub ts: i64,
    pub tenant_id: Option<String>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

/// An event to append; `seq` is assigned by the database.
#[derive(Debug, Clone, Default)]
pub struct NewAuditRow {
    pub id: String,
    pub ts: i64,
    pub tenant_id: Option<String>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

const INSERT: &str = "INSERT INTO audit_events (id, ts, tenant_id, actor_type, actor_id, action, resource_type, \
    resource_id, source_ip, user_agent, request_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// The insert of `n` rows: [`INSERT`] with more value lists.
fn insert_sql(n: usize) -> String {
    let mut sql = INSERT.to_owned();
    for i in 1..n {
        let marks: Vec<String> = (1..=12).map(|k| format!("${}", i * 12 + k)).collect();
        sql.push_str(&format!(", ({})", marks.join(", ")));
    }
    sql
}

/// Inserts the rows of one event (usually one row) in one statement.
pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, rows: &[NewAuditRow]) -> Result<()> {
    let sql = insert_sql(rows.len());
    let mut q = sqlx::query(&sql);
    for r in rows {
        q = q
            .bind(&r.id)
            .bind(r.ts)
            .bind(&r.tenant_id)
            .bind(&r.actor_type)
            .bind(&r.actor_id)
            .bind(&r.action)
            .bind(&r.resource_type)
            .bind(&r.resource_id)
            .bind(&r.source_ip)
            .bind(&r.user_agent)
            .bind(&r.request_id)
            .bind(&r.details);
    }
    q.execute(ex).await?;
    Ok(())
}

/// [`insert`] as a statement for [`crate::Db::write_all`], so the event
/// commits with the statements of the action it records.
pub fn insert_stmt(rows: Vec<NewAuditRow>) -> crate::Stmt {
    let one = rows.len() == 1;
    let st = if one { crate::Stmt::new(INSERT) } else { crate::Stmt::dynamic(insert_sql(rows.len())) };
    let st = rows.into_iter().fold(st, |st, r| {
        st.bind(r.id)
            .bind(r.ts)
            .bind(r.tenant_id)
            .bind(r.actor_type)
            .bind(r.actor_id)
            .bind(r.action)
            .bind(r.resource_type)
            .bind(r.resource_id)
            .bind(r.source_ip)
            .bind(r.user_agent)
            .bind(r.request_id)
            .bind(r.details)
    });
    // Only the one-row form has the fixed text that concurrent lists share.
    if one {
        st.merged_as_rows()
    } else {
        st
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after_seq: Option<i64>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub actor_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: i64,
}

/// Whose events to read: one tenant's, or (operator only) the platform's,
/// optionally narrowed to one tenant.
pub enum Reader<'a> {
    Tenant(&'a TenantScope),
    Operator(&'a SysadminProof, Option<TenantId>),
}

impl Reader<'_> {
    /// The one tenant read, if any.
    pub fn tenant(&self) -> Option<TenantId> {
        match self {
            Reader::Tenant(scope) => Some(scope.tenant_id()),
            Reader::Operator(_, tenant) => *tenant,
        }
    }
}

/// The position in the log after the event numbered `$2` (the cursor):
/// its leaf. A number that is no leaf (a cursor from before the feed
/// paged by leaf, or made up) starts after the nearest sequenced event
/// before it; nothing, from the start.
const CURSOR_LEAF: &str = "COALESCE((SELECT leaf_index FROM audit_leaves WHERE event_seq = $2), \
    (SELECT leaf_index FROM audit_leaves WHERE event_seq < $2 ORDER BY event_seq DESC LIMIT 1), -1)";

/// The filters of [`AuditFilter`] as `$3`…`$8`. Optional filters are bound
/// as NULL and short-circuited in SQL, so the statement text is fixed and
/// every value is a bound parameter.
const FILTERS: &str = "($3 IS NULL OR e.action = $3) AND ($4 IS NULL OR e.resource_type = $4) \
    AND ($5 IS NULL OR e.resource_id = $5) AND ($6 IS NULL OR e.actor_id = $6) \
    AND ($7 IS NULL OR e.ts >= $7) AND ($8 IS NULL OR e.ts < $8)";

/// Events after the cursor, in the log's order (leaf order). Only events
/// already sequenced into the log are read: a leaf is given to a committed
/// event only, after every leaf before it, so a reader that follows the
/// cursor never passes an event that becomes visible later.
pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    reader: Reader<'_>,
    f: &AuditFilter,
) -> Result<Vec<AuditRow>> {
    let sql = match reader {
        // The tenant's own tree, in its order, numbered by it: `seq` is the
        // event's place in the tenant's sequence (its tenant leaf + 1), and
        // the cursor is such a number. The events' own tenant is checked
        // too (the tree's column is not hashed), outside: inside,
        // PostgreSQL counts the tenant twice and walks the whole log.
        Reader::Tenant(_) => format!(
            "SELECT * FROM (SELECT t.tenant_index + 1 AS seq, {EVENT_FIELDS} FROM audit_tenant_tree t \
               JOIN audit_leaves l ON l.leaf_index = t.leaf_index JOIN audit_events e ON e.seq = l.event_seq \
             WHERE t.tenant_id = $1 AND t.tenant_index >= $2 AND {FILTERS} \
             ORDER BY t.tenant_index LIMIT $9) page WHERE page.tenant_id = $1"
        ),
        // The operator reads the platform's numbers, in the log's order.
        Reader::Operator(_, Some(_)) => format!(
            "SELECT * FROM (SELECT {EVENT_COLS} FROM audit_tenant_tree t \
               JOIN audit_leaves l ON l.leaf_index = t.leaf_index JOIN audit_events e ON e.seq = l.event_seq \
             WHERE t.tenant_id = $1 AND t.leaf_index > {CURSOR_LEAF} AND {FILTERS} \
             ORDER BY t.leaf_index LIMIT $9) page WHERE page.tenant_id = $1"
        ),
        Reader::Operator(_, None) => format!(
            "SELECT {EVENT_COLS} FROM audit_leaves l JOIN audit_events e ON e.seq = l.event_seq \
             WHERE ($1 IS NULL OR e.tenant_id = $1) AND l.leaf_index > {CURSOR_LEAF} AND {FILTERS} \
             ORDER BY l.leaf_index LIMIT $9"
        ),
    };
    Ok(sqlx::query_as(&sql)
        .bind(reader.tenant().map(|t| t.to_string()))
        .bind(f.after_seq.unwrap_or(0))
        .bind(&f.action)
        .bind(&f.resource_type)
        .bind(&f.resource_id)
        .bind(&f.actor_id)
        .bind(f.since_ms)
        .bind(f.until_ms)
        .bind(f.limit)
        .fetch_all(ex)
        .await?)
}

/// Whether committed events of `tenant` (of anyone when `None`) wait to be
/// sequenced into the log.
pub async fn tenant_pending<'c>(ex: impl Executor<'c, Database = Any>, tenant: Option<TenantId>) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM (SELECT 1 FROM audit_pending p WHERE EXISTS \
           (SELECT 1 FROM audit_events e WHERE e.seq = p.seq AND ($1 IS NULL OR e.tenant_id = $1)) LIMIT 1) x",
    )
    .bind(tenant.map(|t| t.to_string()))
    .fetch_one(ex)
    .await?
        > 0)
}

// ---- The verifiable log: sequencing, nodes, checkpoints ----

/// [`EVENT_COLS`] but `seq`.
const EVENT_FIELDS: &str = "e.id, e.ts, e.tenant_id, e.actor_type, e.actor_id, e.action, e.resource_type, \
    e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details";

const EVENT_COLS: &str = "e.seq, e.id, e.ts, e.tenant_id, e.actor_type, e.actor_id, e.action, e.resource_type, \
    e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details";

/// Locks the log head for this transaction and returns (tree size, frontier).
pub async fn lock_head(tx: &mut crate::Tx) -> Result<(i64, String)> {
    // A no-op update takes the row lock on PostgreSQL (and the write lock on SQLite).
    sqlx::query("UPDATE audit_head SET tree_size = tree_size WHERE id = 1").execute(&mut **tx).await?;
    Ok(sqlx::query_as("SELECT tree_size, frontier FROM audit_head WHERE id = 1").fetch_one(&mut **tx).await?)
}

/// (tree size, frontier, number of leaves present), read in one statement
/// so that a concurrent integration cannot fall between them.
pub async fn head<'c>(ex: impl Executor<'c, Database = Any>) -> Result<(i64, String, i64)> {
    Ok(sqlx::query_as(
        "SELECT h.tree_size, h.frontier, (SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM audit_leaves) \
         FROM audit_head h WHERE h.id = 1",
    )
    .fetch_one(ex)
    .await?)
}

/// The current head: (tree size, frontier, leaves placed in tenant trees).
pub async fn read_head_full<'c>(ex: impl Executor<'c, Database = Any>) -> Result<(i64, String, i64)> {
    Ok(sqlx::query_as("SELECT tree_size, frontier, tenant_size FROM audit_head WHERE id = 1").fetch_one(ex).await?)
}

/// The current head: (tree size, frontier).
pub async fn read_head<'c>(ex: impl Executor<'c, Database = Any>) -> Result<(i64, String)> {
    Ok(sqlx::query_as("SELECT tree_size, frontier FROM audit_head WHERE id = 1").fetch_one(ex).await?)
}

/// Events committed but not yet in the tree, oldest first.
pub async fn pending_batch<'c>(ex: impl Executor<'c, Database = Any>, limit: i64) -> Result<Vec<AuditRow>> {
    Ok(sqlx::query_as(&format!(
        // The limit inside: events are looked up one by one by key. A join
        // of the two tables let PostgreSQL's planner walk the whole log from
        // its start to the first pending event (a merge join), a cost that
        // grew with the log.
        "SELECT {EVENT_COLS} FROM audit_events e \
         WHERE e.seq IN (SELECT seq FROM audit_pending ORDER BY seq LIMIT $1) ORDER BY e.seq"
    ))
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Refusal reason when another integrator moved the head first.
pub const HEAD_MOVED: &str = "audit_head_moved";

/// Rows per multi-row insert: few round trips on PostgreSQL, and short
/// enough that binding stays cheap (drivers look parameters up by name).
const ROWS_PER_INSERT: usize = 64;

/// One integration step as an atomic list: move the head from `old_size`
/// (guarded, so a concurrent integrator's step is refused rather than
/// doubled), add the leaves and completed nodes, dequeue what they cover
/// and store the signed checkpoint.
pub fn integrate_stmts(
    old_size: i64,
    frontier: &str,
    leaves: &[(i64, i64, String)],
    nodes: &[(i64, i64, String)],
    checkpoint: CheckpointRow,
) -> Vec<crate::Stmt> {
    // The leaves go to their tenants' trees in the same write, so the
    // tenant trees must be caught up with the log (`tenant_size`).
    let head = crate::Stmt::new(
        "UPDATE audit_head SET tree_size = $1, frontier = $2, tenant_size = $1 \
         WHERE id = 1 AND tree_size = $3 AND tenant_size = $3",
    )
    .bind(checkpoint.tree_size)
    .bind(frontier)
    .bind(old_size)
    .or_refuse(HEAD_MOVED);
    let mut out = vec![head];
    out.extend(insert_many("audit_leaves (leaf_index, event_seq, leaf_hash)", leaves));
    out.extend(insert_many("audit_nodes (level, node_index, hash)", nodes));
    // By the events' numbers, not through the new leaves: a list's
    // statements must not depend on each other's effects.
    for chunk in leaves.chunks(ROWS_PER_INSERT) {
        let marks: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = format!("DELETE FROM audit_pending WHERE seq IN ({})", marks.join(", "));
        out.push(chunk.iter().fold(crate::Stmt::dynamic(sql), |st, (_, seq, _)| st.bind(*seq)));
    }
    out.push(
        crate::Stmt::new(
            "INSERT INTO audit_checkpoints (tree_size, root_hash, ts, body, signature, key_id) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(checkpoint.tree_size)
        .bind(checkpoint.root_hash)
        .bind(checkpoint.ts)
        .bind(checkpoint.body)
        .bind(checkpoint.signature)
        .bind(checkpoint.key_id),
    );
    out
}

/// Multi-row inserts of `(int, int, text)` rows.
fn insert_many(table_cols: &str, rows: &[(i64, i64, String)]) -> Vec<crate::Stmt> {
    rows.chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let mut sql = format!("INSERT INTO {table_cols} VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3));
            }
            chunk.iter().fold(crate::Stmt::dynamic(sql), |st, (a, b, c)| st.bind(*a).bind(*b).bind(c.as_str()))
        })
        .collect()
}

// ---- Tenant trees ----

/// A signed checkpoint of one tenant's tree.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantCheckpointRow {
    pub tenant_id: String,
    pub tree_size: i64,
    pub root_hash: String,
    pub ts: i64,
    pub body: String,
    pub signature: String,
    pub key_id: String,
}

/// One step of the tenant trees, as statements for the integration's
/// atomic list: leaves `(tenant, tenant_index, leaf_index, hash)`, nodes
/// `(tenant, level, index, hash)`, new heads `(tenant, size, frontier)`
/// and the checkpoints signing them.
pub fn tenant_stmts(
    leaves: &[(String, i64, i64, String)],
    nodes: &[(String, i64, i64, String)],
    heads: &[(String, i64, String)],
    checkpoints: &[TenantCheckpointRow],
) -> Vec<crate::Stmt> {
    let mut out = insert_many4("audit_tenant_tree (tenant_id, tenant_index, leaf_index, leaf_hash)", leaves);
    out.extend(insert_many4("audit_tenant_nodes (tenant_id, level, node_index, hash)", nodes));
    // One statement per chunk of heads (each tenant once: an upsert may not
    // touch a row twice).
    for chunk in heads.chunks(ROWS_PER_INSERT) {
        let mut sql = "INSERT INTO audit_tenant_heads (tenant_id, tree_size, frontier) VALUES ".to_owned();
        for i in 0..chunk.len() {
            sql.push_str(&format!("{}(${}, ${}, ${})", if i > 0 { "," } else { "" }, i * 3 + 1, i * 3 + 2, i * 3 + 3));
        }
        sql.push_str(
            " ON CONFLICT (tenant_id) DO UPDATE SET tree_size = excluded.tree_size, frontier = excluded.frontier",
        );
        out.push(chunk.iter().fold(crate::Stmt::dynamic(sql), |st, (tenant, size, frontier)| {
            st.bind(tenant.as_str()).bind(*size).bind(frontier.as_str())
        }));
    }
    for chunk in checkpoints.chunks(ROWS_PER_INSERT / 2) {
        let mut sql = "INSERT INTO audit_tenant_checkpoints (tenant_id, tree_size, root_hash, ts, body, signature, key_id) VALUES ".to_owned();
        for i in 0..chunk.len() {
            let marks: Vec<String> = (1..=7).map(|k| format!("${}", i * 7 + k)).collect();
            sql.push_str(&format!("{}({})", if i > 0 { "," } else { "" }, marks.join(", ")));
        }
        out.push(chunk.iter().fold(crate::Stmt::dynamic(sql), |st, c| {
            st.bind(c.tenant_id.as_str())
                .bind(c.tree_size)
                .bind(c.root_hash.as_str())
                .bind(c.ts)
                .bind(c.body.as_str())
                .bind(c.signature.as_str())
                .bind(c.key_id.as_str())
        }));
    }
    out
}

/// Places leaves `[from, to)` of the log in tenant trees (the log's older
/// leaves, when tenant trees were introduced): guarded on the marker.
pub fn tenant_catch_up_stmt(from: i64, to: i64) -> crate::Stmt {
    crate::Stmt::new("UPDATE audit_head SET tenant_size = $1 WHERE id = 1 AND tenant_size = $2 AND tree_size >= $1")
        .bind(to)
        .bind(from)
        .or_refuse(HEAD_MOVED)
}

fn insert_many4(table_cols: &str, rows: &[(String, i64, i64, String)]) -> Vec<crate::Stmt> {
    rows.chunks(ROWS_PER_INSERT)
        .map(|chunk| {
            let mut sql = format!("INSERT INTO {table_cols} VALUES ");
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${})", i * 4 + 1, i * 4 + 2, i * 4 + 3, i * 4 + 4));
            }
            chunk.iter().fold(crate::Stmt::dynamic(sql), |st, (t, a, b, c)| {
                st.bind(t.as_str()).bind(*a).bind(*b).bind(c.as_str())
            })
        })
        .collect()
}

/// The heads `(tenant, size, frontier)` of these tenants' trees (a tenant
/// without a tree has none).
pub async fn tenant_heads<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenants: &[String],
) -> Result<Vec<(String, i64, String)>> {
    if tenants.is_empty() {
        return Ok(Vec::new());
    }
    let marks: Vec<String> = (1..=tenants.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT tenant_id, tree_size, frontier FROM audit_tenant_heads WHERE tenant_id IN ({})",
        marks.join(", ")
    );
    let q = tenants.iter().fold(sqlx::query_as(&sql), |q, t| q.bind(t));
    Ok(q.fetch_all(ex).await?)
}

/// One tenant's head: (size, frontier, tenant leaves present, highest leaf
/// of the log among them), read in one statement. Every part walks the
/// tenant's own rows by the primary key (tenant order is log order), never
/// the platform's log: a tenant's cost does not grow with others' activity.
pub async fn tenant_head<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenant: TenantId,
) -> Result<(i64, String, i64, Option<i64>)> {
    Ok(sqlx::query_as(
        "SELECT COALESCE((SELECT tree_size FROM audit_tenant_heads WHERE tenant_id = $1), 0), \
           COALESCE((SELECT frontier FROM audit_tenant_heads WHERE tenant_id = $1), ''), \
           (SELECT COALESCE(MAX(tenant_index) + 1, 0) FROM audit_tenant_tree WHERE tenant_id = $1), \
           (SELECT leaf_index FROM audit_tenant_tree WHERE tenant_id = $1 \
              ORDER BY tenant_index DESC LIMIT 1)",
    )
    .bind(tenant.to_string())
    .fetch_one(ex)
    .await?)
}

#[derive(sqlx::FromRow)]
struct LeafAndEvent {
    leaf_index: i64,
    #[sqlx(flatten)]
    row: AuditRow,
}

/// The tenants' events among leaves `[from, to)` of the log, in order.
pub async fn tenant_events_at_leaves<'c>(
    ex: impl Executor<'c, Database = Any>,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, AuditRow)>> {
    let rows: Vec<LeafAndEvent> = sqlx::query_as(&format!(
        "SELECT l.leaf_index, {EVENT_COLS} FROM audit_leaves l JOIN audit_events e ON e.seq = l.event_seq \
         WHERE l.leaf_index >= $1 AND l.leaf_index < $2 AND e.tenant_id IS NOT NULL ORDER BY l.leaf_index"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.leaf_index, r.row)).collect())
}

/// The newest `n` checkpoints of one tenant's tree, newest first.
pub async fn latest_tenant_checkpoints<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenant: TenantId,
    n: i64,
) -> Result<Vec<TenantCheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, tree_size, root_hash, ts, body, signature, key_id FROM audit_tenant_checkpoints \
         WHERE tenant_id = $1 ORDER BY tree_size DESC LIMIT $2",
    )
    .bind(tenant.to_string())
    .bind(n)
    .fetch_all(ex)
    .await?)
}

/// Every tenant checkpoint, for full verification, in no particular order:
/// sorting them all costs PostgreSQL more (a sort spilled to disk, in
/// parallel workers) than reading them.
pub async fn all_tenant_checkpoints<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<TenantCheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, tree_size, root_hash, ts, body, signature, key_id FROM audit_tenant_checkpoints",
    )
    .fetch_all(ex)
    .await?)
}

/// An event's place in its tenant's tree: (tenant index, tenant leaf hash).
pub async fn tenant_leaf_of_event<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenant: TenantId,
    event_seq: i64,
) -> Result<Option<(i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT t.tenant_index, t.leaf_hash FROM audit_leaves l JOIN audit_tenant_tree t ON t.leaf_index = l.leaf_index \
         WHERE l.event_seq = $1 AND t.tenant_id = $2",
    )
    .bind(event_seq)
    .bind(tenant.to_string())
    .fetch_optional(ex)
    .await?)
}

pub async fn tenant_leaf_hash_at<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenant: &str,
    index: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT leaf_hash FROM audit_tenant_tree WHERE tenant_id = $1 AND tenant_index = $2")
        .bind(tenant)
        .bind(index)
        .fetch_optional(ex)
        .await?)
}

pub async fn tenant_node_hash_at<'c>(
    ex: impl Executor<'c, Database = Any>,
    tenant: &str,
    level: i64,
    index: i64,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT hash FROM audit_tenant_nodes WHERE tenant_id = $1 AND level = $2 AND node_index = $3",
    )
    .bind(tenant)
    .bind(level)
    .bind(index)
    .fetch_optional(ex)
    .await?)
}

/// The tenant tree entries of leaves `[from, to)` of the log:
/// leaf index -> (tenant, tenant leaf hash).
pub async fn tenant_tree_entries<'c>(
    ex: impl Executor<'c, Database = Any>,
    from: i64,
    to: i64,
) -> Result<std::collections::HashMap<i64, (String, String)>> {
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT leaf_index, tenant_id, leaf_hash FROM audit_tenant_tree WHERE leaf_index >= $1 AND leaf_index < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|(l, t, h)| (l, (t, h))).collect())
}

/// Leaves of the log placed in tenant trees.
pub async fn tenant_size<'c>(ex: impl Executor<'c, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT tenant_size FROM audit_head WHERE id = 1").fetch_one(ex).await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CheckpointRow {
    pub tree_size: i64,
    pub root_hash: String,
    pub ts: i64,
    pub body: String,
    pub signature: String,
    pub key_id: String,
}

/// The newest `n` checkpoint rows, newest first.
pub async fn latest_checkpoints<'c>(ex: impl Executor<'c, Database = Any>, n: i64) -> Result<Vec<CheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT tree_size, root_hash, ts, body, signature, key_id FROM audit_checkpoints ORDER BY tree_size DESC LIMIT $1",
    )
    .bind(n)
    .fetch_all(ex)
    .await?)
}

/// The checkpoint rows above `tree_size`, smallest first.
pub async fn checkpoints_after<'c>(
    ex: impl Executor<'c, Database = Any>,
    tree_size: i64,
) -> Result<Vec<CheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT tree_size, root_hash, ts, body, signature, key_id FROM audit_checkpoints \
         WHERE tree_size > $1 ORDER BY tree_size",
    )
    .bind(tree_size)
    .fetch_all(ex)
    .await?)
}

pub async fn any_pending<'c>(ex: impl Executor<'c, Database = Any>) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM (SELECT 1 FROM audit_pending LIMIT 1) p")
        .fetch_one(ex)
        .await?
        > 0)
}

/// Events written but not yet integrated into the tree (and so covered by
/// no checkpoint): normal for a moment on a live server, and what a crash
/// leaves until the next start integrates them.
pub async fn pending_count<'c>(ex: impl Executor<'c, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM audit_pending").fetch_one(ex).await?)
}

pub async fn all_checkpoints<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<CheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT tree_size, root_hash, ts, body, signature, key_id FROM audit_checkpoints ORDER BY tree_size",
    )
    .fetch_all(ex)
    .await?)
}

/// A leaf's place in the tree.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LeafOfEvent {
    pub leaf_index: i64,
    pub leaf_hash: String,
}

/// One of the tenant's events by id.
pub async fn event_of_tenant<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    event_id: &str,
) -> Result<Option<AuditRow>> {
    Ok(sqlx::query_as(&format!("SELECT {EVENT_COLS} FROM audit_events e WHERE e.tenant_id = $1 AND e.id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(event_id)
        .fetch_optional(ex)
        .await?)
}

#[derive(sqlx::FromRow)]
struct EventWithLeaf {
    #[sqlx(flatten)]
    row: AuditRow,
    tenant_index: Option<i64>,
    leaf_hash: Option<String>,
}

/// The tenant's most recent events (newest first), for spot verification,
/// each with its place in the tenant's tree once it has one:
/// (tenant index, tenant leaf hash).
pub async fn recent_of_tenant<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    limit: i64,
) -> Result<Vec<(AuditRow, Option<(i64, String)>)>> {
    let rows: Vec<EventWithLeaf> = sqlx::query_as(&format!(
        "SELECT {EVENT_COLS}, t.tenant_index, t.leaf_hash FROM audit_events e \
           LEFT JOIN audit_leaves l ON l.event_seq = e.seq \
           LEFT JOIN audit_tenant_tree t ON t.leaf_index = l.leaf_index AND t.tenant_id = $1 \
         WHERE e.tenant_id = $1 ORDER BY e.seq DESC LIMIT $2"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(limit)
    .fetch_all(ex)
    .await?;
    Ok(rows.into_iter().map(|r| (r.row, r.tenant_index.zip(r.leaf_hash))).collect())
}

pub async fn leaf_by_seq<'c>(ex: impl Executor<'c, Database = Any>, seq: i64) -> Result<Option<LeafOfEvent>> {
    Ok(sqlx::query_as("SELECT leaf_index, leaf_hash FROM audit_leaves WHERE event_seq = $1")
        .bind(seq)
        .fetch_optional(ex)
        .await?)
}

pub async fn leaf_hash_at<'c>(ex: impl Executor<'c, Database = Any>, index: i64) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT leaf_hash FROM audit_leaves WHERE leaf_index = $1")
        .bind(index)
        .fetch_optional(ex)
        .await?)
}

pub async fn node_hash_at<'c>(ex: impl Executor<'c, Database = Any>, level: i64, index: i64) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT hash FROM audit_nodes WHERE level = $1 AND node_index = $2")
        .bind(level)
        .bind(index)
        .fetch_optional(ex)
        .await?)
}

/// Events that are neither in the tree nor waiting to be sequenced:
/// rows inserted behind the log's back.
pub async fn unlogged_events<'c>(ex: impl Executor<'c, Database = Any>, limit: i64) -> Result<Vec<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT e.seq FROM audit_events e \
         WHERE NOT EXISTS (SELECT 1 FROM audit_leaves l WHERE l.event_seq = e.seq) \
           AND NOT EXISTS (SELECT 1 FROM audit_pending p WHERE p.seq = e.seq) \
         ORDER BY e.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// [`unlogged_events`] as full verification runs it, beside its scan of
/// the log: on PostgreSQL without parallel workers. They would triple the
/// CPU it costs (each builds the shared hash of a whole table) to finish
/// sooner a query that is not what verification waits for; alone it
/// merges the two tables' indexes.
pub async fn unlogged_events_serial(db: &crate::Db, limit: i64) -> Result<Vec<i64>> {
    if db.dialect() == crate::Dialect::Sqlite {
        return unlogged_events(db.reader(), limit).await;
    }
    let mut tx = db.reader().begin().await?;
    sqlx::query("SET LOCAL max_parallel_workers_per_gather = 0").execute(&mut *tx).await?;
    let out = unlogged_events(&mut *tx, limit).await?;
    tx.rollback().await?;
    Ok(out)
}

/// Leaves `[from, to)` as text, one line per leaf in order:
/// `<leaf_index> <event_seq> <leaf_hash> <record>`, where `<record>` is the
/// event as a JSON array in leaf-field order, encoded by the database (`-`
/// when the event row is gone). One round trip per chunk instead of one row
/// per leaf: full verification reads millions of records.
pub async fn leaf_chunk(db: &crate::Db, from: i64, to: i64) -> Result<String> {
    const FIELDS: &str = "'palisade-audit-leaf/v1', e.seq, e.id, e.ts, e.tenant_id, e.actor_type, e.actor_id, \
        e.action, e.resource_type, e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details";
    let sql = match db.dialect() {
        crate::Dialect::Sqlite => format!(
            "SELECT COALESCE(group_concat(l.leaf_index || ' ' || l.event_seq || ' ' || l.leaf_hash || ' ' || \
               CASE WHEN e.seq IS NULL THEN '-' ELSE json_array({FIELDS}) END, char(10) ORDER BY l.leaf_index), '') \
             FROM audit_leaves l LEFT JOIN audit_events e ON e.seq = l.event_seq \
             WHERE l.leaf_index >= $1 AND l.leaf_index < $2"
        ),
        crate::Dialect::Postgres => format!(
            "SELECT COALESCE(string_agg(l.leaf_index::text || ' ' || l.event_seq::text || ' ' || l.leaf_hash || ' ' || \
               CASE WHEN e.seq IS NULL THEN '-' ELSE json_build_array({FIELDS})::text END, E'\\n' ORDER BY l.leaf_index), '') \
             FROM audit_leaves l LEFT JOIN audit_events e ON e.seq = l.event_seq \
             WHERE l.leaf_index >= $1 AND l.leaf_index < $2"
        ),
    };
    Ok(sqlx::query_scalar(&sql).bind(from).bind(to).fetch_one(db.reader()).await?)
}

pub async fn max_leaf_index<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MAX(leaf_index) FROM audit_leaves").fetch_one(ex).await?)
}

/// The smallest leaf index at or above `from`.
pub async fn next_leaf_index<'c>(ex: impl Executor<'c, Database = Any>, from: i64) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MIN(leaf_index) FROM audit_leaves WHERE leaf_index >= $1")
        .bind(from)
        .fetch_one(ex)
        .await?)
}

/// Separator of the fields in a [`leaf_fields_chunk`] record.
pub const FIELD_SEP: char = '\u{1f}';

/// Like [`leaf_chunk`], but each record is `index, event_seq, leaf_hash`
/// and then the event's raw fields (or `-`), joined by [`FIELD_SEP`]; see
/// [`split_records`]. The database only concatenates; the verifier encodes
/// and hashes. This is the fast path of full verification.
pub async fn leaf_fields_chunk(db: &crate::Db, from: i64, to: i64) -> Result<String> {
    if let Some(conn) = db.open_sqlite_reader() {
        let conn = conn?;
        return tokio::task::spawn_blocking(move || leaf_fields_chunk_sqlite(&conn, from, to))
            .await
            .map_err(|e| crate::StoreError::Corrupt(format!("chunk reader stopped: {e}")))?;
    }
    let cols = [
        "l.leaf_index",
        "l.event_seq",
        "l.leaf_hash",
        "e.seq",
        "e.id",
        "e.ts",
        "e.tenant_id",
        "e.actor_type",
        "e.actor_id",
        "e.action",
        "e.resource_type",
        "e.resource_id",
        "e.source_ip",
        "e.user_agent",
        "e.request_id",
        "e.details",
    ];
    let (text, chr, agg) = match db.dialect() {
        crate::Dialect::Sqlite => ("TEXT", "char", "group_concat"),
        crate::Dialect::Postgres => ("text", "chr", "string_agg"),
    };
    let f = format!("{chr}(31)");
    let nullable = [
        "e.tenant_id",
        "e.actor_id",
        "e.resource_type",
        "e.resource_id",
        "e.source_ip",
        "e.user_agent",
        "e.request_id",
    ];
    // Nullable columns are tagged: `0` for NULL, `1` + the value otherwise,
    // so no value can pass for a NULL.
    let field = |c: &str| {
        if nullable.contains(&c) {
            format!("CASE WHEN {c} IS NULL THEN '0' ELSE '1' || {c} END")
        } else {
            format!("CAST({c} AS {text})")
        }
    };
    let head = cols[..3].iter().map(|c| field(c)).collect::<Vec<_>>().join(&format!(" || {f} || "));
    let event = cols[3..].iter().map(|c| field(c)).collect::<Vec<_>>().join(&format!(" || {f} || "));
    // Records are length-prefixed (`<bytes>:<record>`), so a separator
    // character inside a value can shift fields within its own record (the
    // verifier then takes the slow path) but never the record boundaries.
    let sql = format!(
        "SELECT COALESCE({agg}(octet_length(rec) || ':' || rec, '' ORDER BY leaf_index), '') FROM ( \
           SELECT l.leaf_index AS leaf_index, \
             {head} || {f} || CASE WHEN e.seq IS NULL THEN '-' ELSE {event} END AS rec \
           FROM audit_leaves l LEFT JOIN audit_events e ON e.seq = l.event_seq \
           WHERE l.leaf_index >= $1 AND l.leaf_index < $2) t"
    );
    Ok(sqlx::query_scalar(&sql).bind(from).bind(to).fetch_one(db.reader()).await?)
}

/// [`leaf_fields_chunk`] on SQLite, read directly: sqlx's per-row cost would
/// dominate full verification. Produces exactly what the SQL form does.
fn leaf_fields_chunk_sqlite(conn: &rusqlite::Connection, from: i64, to: i64) -> Result<String> {
    use rusqlite::types::ValueRef;
    // Columns 0-2 are the leaf, 3-15 the event; these may be NULL in a
    // present event and are tagged `0` (NULL) or `1` + value.
    const NULLABLE: [usize; 7] = [6, 8, 10, 11, 12, 13, 14];
    let mut stmt = conn.prepare_cached(
        "SELECT l.leaf_index, l.event_seq, l.leaf_hash, e.seq, e.id, e.ts, e.tenant_id, e.actor_type, e.actor_id, \
           e.action, e.resource_type, e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details \
         FROM audit_leaves l LEFT JOIN audit_events e ON e.seq = l.event_seq \
         WHERE l.leaf_index >= ?1 AND l.leaf_index < ?2 ORDER BY l.leaf_index",
    )?;
    let mut rows = stmt.query([from, to])?;
    let mut out = String::with_capacity(((to - from).max(0) as usize).min(1 << 16) * 256);
    let mut ints = itoa::Buffer::new();
    let mut rec: Vec<u8> = Vec::with_capacity(1024);
    while let Some(row) = rows.next()? {
        rec.clear();
        // Only the storage types the integrator wrote pass: a BLOB or REAL
        // standing in for text or an integer goes to the careful path.
        let mut odd = false;
        let event_present = !matches!(row.get_ref(3)?, ValueRef::Null);
        let last = if event_present { 16 } else { 3 };
        for i in 0..last {
            if i > 0 {
                rec.extend_from_slice(FIELD_SEP.encode_utf8(&mut [0; 4]).as_bytes());
            }
            let v = row.get_ref(i)?;
            let integer_column = matches!(i, 0 | 1 | 3 | 5);
            match v {
                ValueRef::Null if NULLABLE.contains(&i) => rec.push(b'0'),
                ValueRef::Integer(n) if integer_column => rec.extend_from_slice(ints.format(n).as_bytes()),
                ValueRef::Text(t) if !integer_column => {
                    if NULLABLE.contains(&i) {
                        rec.push(b'1');
                    }
                    rec.extend_from_slice(t);
                }
                _ => odd = true,
            }
        }
        if !event_present {
            rec.extend_from_slice(FIELD_SEP.encode_utf8(&mut [0; 4]).as_bytes());
            rec.push(b'-');
        }
        // Bytes no genuine record holds become a record the verifier's fast
        // path refuses, so the careful path judges this leaf.
        let text = if odd { "?" } else { std::str::from_utf8(&rec).unwrap_or("?") };
        out.push_str(ints.format(text.len()));
        out.push(':');
        out.push_str(text);
    }
    Ok(out)
}

/// Splits a [`leaf_fields_chunk`] into its records. `None` if the framing
/// is broken (which the database never produces).
pub fn split_records(chunk: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = chunk;
    while !rest.is_empty() {
        let (len, tail) = rest.split_once(':')?;
        let len: usize = len.parse().ok()?;
        out.push(tail.get(..len)?);
        rest = tail.get(len..)?;
    }
    Some(out)
}

// ---- Retention ----

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExpiryRow {
    pub up_to_leaf: i64,
    pub ts: i64,
    pub body: String,
    pub signature: String,
    pub key_id: String,
}

pub async fn all_expiries<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<ExpiryRow>> {
    Ok(sqlx::query_as("SELECT up_to_leaf, ts, body, signature, key_id FROM audit_expiries ORDER BY up_to_leaf")
        .fetch_all(ex)
        .await?)
}

/// The first leaf (in tree order) whose record is not older than `cutoff_ms`,
/// or the tree size if all are: leaves before it form the expirable range.
pub async fn first_leaf_not_before<'c>(ex: impl Executor<'c, Database = Any>, cutoff_ms: i64) -> Result<i64> {
    // One statement: the range and the tree size in the same snapshot.
    Ok(sqlx::query_scalar(
        "SELECT COALESCE((SELECT MIN(l.leaf_index) FROM audit_leaves l JOIN audit_events e ON e.seq = l.event_seq \
                          WHERE e.ts >= $1), \
                         (SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM audit_leaves))",
    )
    .bind(cutoff_ms)
    .fetch_one(ex)
    .await?)
}

pub async fn expired_up_to<'c>(ex: impl Executor<'c, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_expiries").fetch_one(ex).await?)
}

/// Records the signed statement, then removes the covered event rows.
/// Returns how many rows were removed.
pub async fn expire(tx: &mut crate::Tx, statement: &ExpiryRow) -> Result<u64> {
    sqlx::query("INSERT INTO audit_expiries (up_to_leaf, ts, body, signature, key_id) VALUES ($1, $2, $3, $4, $5)")
        .bind(statement.up_to_leaf)
        .bind(statement.ts)
        .bind(&statement.body)
        .bind(&statement.signature)
        .bind(&statement.key_id)
        .execute(&mut **tx)
        .await?;
    let r =
        sqlx::query("DELETE FROM audit_events WHERE seq IN (SELECT event_seq FROM audit_leaves WHERE leaf_index < $1)")
            .bind(statement.up_to_leaf)
            .execute(&mut **tx)
            .await?;
    Ok(r.rows_affected())
}

// ---- A tenant's own retention ----

/// How far the tenant's own retention statements reach (0: none).
pub async fn tenant_expired_up_to<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_tenant_expiries WHERE tenant_id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_one(ex)
        .await?)
}

/// Records the tenant's signed statement; its records go afterwards, in
/// batches ([`remove_tenant_expired`]).
pub async fn record_tenant_expiry(tx: &mut crate::Tx, scope: &TenantScope, statement: &ExpiryRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_tenant_expiries (tenant_id, up_to_leaf, ts, body, signature, key_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(statement.up_to_leaf)
    .bind(statement.ts)
    .bind(&statement.body)
    .bind(&statement.signature)
    .bind(&statement.key_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes at most `limit` of the tenant's records before leaf `up_to`
/// (what its signed statement covers; the database's guard checks its
/// stored statements too). How many went.
pub async fn remove_tenant_expired(tx: &mut crate::Tx, scope: &TenantScope, up_to: i64, limit: i64) -> Result<u64> {
    let r = sqlx::query(
        "DELETE FROM audit_events WHERE seq IN (\
           SELECT e.seq FROM audit_events e JOIN audit_leaves l ON l.event_seq = e.seq \
           WHERE e.tenant_id = $1 AND l.leaf_index < $2 \
           ORDER BY e.seq LIMIT $3)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(up_to)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Every tenant's retention statements, `(tenant id, statement)`.
pub async fn all_tenant_expiries<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<(String, ExpiryRow)>> {
    let rows: Vec<(String, i64, i64, String, String, String)> = sqlx::query_as(
        "SELECT tenant_id, up_to_leaf, ts, body, signature, key_id FROM audit_tenant_expiries \
         ORDER BY tenant_id, up_to_leaf",
    )
    .fetch_all(ex)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, up_to_leaf, ts, body, signature, key_id)| (t, ExpiryRow { up_to_leaf, ts, body, signature, key_id }))
        .collect())
}

/// The leaf of the tenant's oldest record still present (by event order).
pub async fn oldest_leaf_of<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT l.leaf_index FROM audit_events e JOIN audit_leaves l ON l.event_seq = e.seq \
         WHERE e.tenant_id = $1 ORDER BY e.seq LIMIT 1",
    )
    .bind(scope.tenant_id().to_string())
    .fetch_optional(ex)
    .await?)
}

/// The tenant's tree rows on leaves `[from, to)` of the log: `(leaf,
/// tenant index, leaf hash)`, in order.
pub async fn tenant_rows_between<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, i64, String)>> {
    Ok(sqlx::query_as(
        "SELECT leaf_index, tenant_index, leaf_hash FROM audit_tenant_tree \
         WHERE tenant_id = $1 AND leaf_index >= $2 AND leaf_index < $3 ORDER BY leaf_index",
    )
    .bind(scope.tenant_id().to_string())
    .bind(from)
    .bind(to)
    .fetch_all(ex)
    .await?)
}

/// Whether the tenant has a record on leaves `[from, to)` of the log.
pub async fn tenant_has_records_between<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    from: i64,
    to: i64,
) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COUNT(*) FROM (SELECT 1 FROM audit_events e JOIN audit_leaves l ON l.event_seq = e.seq \
         WHERE e.tenant_id = $1 AND l.leaf_index >= $2 AND l.leaf_index < $3 LIMIT 1) x",
    )
    .bind(scope.tenant_id().to_string())
    .bind(from)
    .bind(to)
    .fetch_one(ex)
    .await?
        > 0)
}
