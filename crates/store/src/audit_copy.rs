//! Full verification's read: the leaves and their records, chunk after
//! chunk, read ahead of the verifier on a task of their own. On PostgreSQL
//! the rows come by `COPY … TO STDOUT` on a native connection, far faster
//! than building each chunk as one string in SQL; they are framed here
//! exactly as [`crate::audit::leaf_fields_chunk`] frames them.

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::audit::FIELD_SEP;
use crate::{Db, Result};

/// Chunks `[from, from + chunk)` of leaves `0..=last`, in order, read one
/// ahead of the receiver. Dropping the receiver stops the reading. Chunks
/// sent back on the returned sender once read are reused: a chunk is
/// megabytes, and fresh ones cost page faults.
pub fn leaf_chunks(
    db: &Db,
    last: i64,
    chunk: i64,
) -> (mpsc::Receiver<Result<(i64, String)>>, std::sync::mpsc::Sender<String>) {
    let (tx, rx) = mpsc::channel(2);
    let (spent, spent_rx) = std::sync::mpsc::channel::<String>();
    let db = db.clone();
    tokio::spawn(async move {
        let mut native = match db.native_postgres().await {
            Some(Ok(conn)) => Some(conn),
            Some(Err(e)) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
            None => None,
        };
        if let Some(conn) = native.as_mut() {
            if let Err(e) = session(conn).await {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
        let mut scratch = Scratch::default();
        let mut from = 0i64;
        while from <= last {
            let to = from.saturating_add(chunk);
            if let Some(buf) = spent_rx.try_iter().last() {
                scratch.spare = buf;
            }
            let read = match native.as_mut() {
                Some(conn) => copy_chunk(conn, from, to, &mut scratch).await,
                None => crate::audit::leaf_fields_chunk(&db, from, to).await,
            };
            let failed = read.is_err();
            if tx.send(read.map(|c| (from, c))).await.is_err() || failed {
                break;
            }
            from = to;
        }
        if let Some(conn) = native {
            let _ = sqlx::Connection::close(conn).await;
        }
    });
    (rx, spent)
}

const COLUMNS: &str = "l.leaf_index, l.event_seq, l.leaf_hash, e.seq, e.id, e.ts, e.tenant_id, e.actor_type, \
    e.actor_id, e.action, e.resource_type, e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details";

/// The event columns of [`COLUMNS`], `seq` first.
const EVENT_COLUMNS: &str = "seq, id, ts, tenant_id, actor_type, actor_id, action, resource_type, resource_id, \
    source_ip, user_agent, request_id, details";

/// Columns that may be NULL in a present event: tagged `0` (NULL) or
/// `1` + value.
const NULLABLE: [usize; 7] = [6, 8, 10, 11, 12, 13, 14];

/// Planner settings for the reading connection (its own, closed after):
/// plain index range scans, already in order. Without statistics (a log
/// just written) PostgreSQL may otherwise sort, hash the whole events
/// table per chunk, or compile the query.
const SESSION: &str = "SET max_parallel_workers_per_gather = 0; SET jit = off; \
    SET enable_bitmapscan = off; SET enable_sort = off; SET enable_seqscan = off";

/// Buffers kept from chunk to chunk.
#[derive(Default)]
struct Scratch {
    leaves: Vec<u8>,
    events: Vec<u8>,
    /// Per leaf: (start, end) of its COPY line in `leaves`, event seq.
    leaf_rows: Vec<(usize, usize, i64)>,
    /// Per event seq from the smallest one: (start, end) in `events`.
    slots: Vec<(u32, u32)>,
    /// A chunk given back, to build the next one in.
    spare: String,
    /// Chunks that took the SQL join (its output is the same; only the
    /// tests look, to see that the client join is what runs).
    fallbacks: u32,
}

const NO_SLOT: (u32, u32) = (u32::MAX, u32::MAX);

async fn session(conn: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::Executor::execute(conn, SESSION).await?;
    Ok(())
}

async fn copy_into(conn: &mut sqlx::PgConnection, sql: &str, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let mut stream = conn.copy_out_raw(sql).await?;
    while let Some(bytes) = stream.next().await {
        out.extend_from_slice(&bytes?);
    }
    Ok(())
}

/// Leaves `[from, to)` with their records. The leaves and their events are
/// read as two index range scans and joined here: a join in SQL costs
/// PostgreSQL an index probe per leaf (or, without statistics, a scan of
/// the whole events table per chunk). Anything unusual (events far apart,
/// a number that does not parse, a duplicate) takes the SQL join, whose
/// output is the reference.
async fn copy_chunk(conn: &mut sqlx::PgConnection, from: i64, to: i64, s: &mut Scratch) -> Result<String> {
    // Both reads in one snapshot: a retention run committing between them
    // would show leaves whose events are gone (a false alarm).
    sqlx::Executor::execute(&mut *conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
    let read = copy_chunk_in(conn, from, to, s).await;
    let ended = sqlx::Executor::execute(&mut *conn, if read.is_ok() { "COMMIT" } else { "ROLLBACK" }).await;
    let out = read?;
    ended?;
    Ok(out)
}

async fn copy_chunk_in(conn: &mut sqlx::PgConnection, from: i64, to: i64, s: &mut Scratch) -> Result<String> {
    // COPY takes no parameters; these are integers.
    let sql = format!(
        "COPY (SELECT leaf_index, event_seq, leaf_hash FROM audit_leaves \
         WHERE leaf_index >= {from} AND leaf_index < {to} ORDER BY leaf_index) TO STDOUT"
    );
    copy_into(conn, &sql, &mut s.leaves).await?;
    s.leaf_rows.clear();
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    let mut regular = true;
    let mut at = 0;
    while at < s.leaves.len() {
        let end = memchr::memchr(b'\n', &s.leaves[at..]).map_or(s.leaves.len(), |i| at + i);
        let line = &s.leaves[at..end];
        let seq = line.split(|b| *b == b'\t').nth(1).and_then(parse_int);
        match seq {
            Some(seq) => {
                (min, max) = (min.min(seq), max.max(seq));
                s.leaf_rows.push((at, end, seq));
            }
            None => regular = false,
        }
        at = end + 1;
    }
    if s.leaf_rows.is_empty() && regular {
        return Ok(String::new());
    }
    // The events between the leaves' smallest and largest: about as many
    // as leaves while the log is in sequence order (it is, but for events
    // that committed late).
    let span = max.saturating_sub(min).saturating_add(1);
    if !regular || span > 4 * (to - from).max(1) + 1024 {
        s.fallbacks += 1;
        return copy_joined(conn, from, to, &mut s.events).await;
    }
    let sql = format!(
        "COPY (SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq >= {min} AND seq <= {max} ORDER BY seq) TO STDOUT"
    );
    copy_into(conn, &sql, &mut s.events).await?;
    s.slots.clear();
    s.slots.resize(span as usize, NO_SLOT);
    let mut at = 0;
    while at < s.events.len() {
        let end = memchr::memchr(b'\n', &s.events[at..]).map_or(s.events.len(), |i| at + i);
        let line = &s.events[at..end];
        let tab = memchr::memchr(b'\t', line).unwrap_or(line.len());
        let slot = parse_int(&line[..tab])
            .filter(|seq| (min..=max).contains(seq))
            .and_then(|seq| s.slots.get_mut((seq - min) as usize));
        match (slot, u32::try_from(at), u32::try_from(end)) {
            (Some(slot), Ok(a), Ok(e)) if *slot == NO_SLOT => *slot = (a, e),
            // A duplicate number or a line out of place.
            _ => {
                s.fallbacks += 1;
                return copy_joined(conn, from, to, &mut s.events).await;
            }
        }
        at = end + 1;
    }
    let mut out = std::mem::take(&mut s.spare);
    out.clear();
    out.reserve(s.leaves.len() + s.events.len() + s.leaf_rows.len() * 8);
    let mut framer = Framer::default();
    let mut fields: [&[u8]; 16] = [&[]; 16];
    for &(start, end, seq) in &s.leaf_rows {
        let (mut n, mut ok) = (0, true);
        for f in s.leaves[start..end].split(|b| *b == b'\t') {
            ok &= n < 3;
            if let Some(slot) = fields.get_mut(n) {
                *slot = f;
            }
            n += 1;
        }
        let event = s.slots[(seq - min) as usize];
        if event == NO_SLOT {
            fields[3..].fill(NULL);
            n += 13;
        } else {
            for f in s.events[event.0 as usize..event.1 as usize].split(|b| *b == b'\t') {
                ok &= n < 16;
                if let Some(slot) = fields.get_mut(n) {
                    *slot = f;
                }
                n += 1;
            }
        }
        framer.push(&mut out, (ok && n == 16).then_some(&fields[..]));
    }
    Ok(out)
}

/// The reference form: the join done by PostgreSQL.
async fn copy_joined(conn: &mut sqlx::PgConnection, from: i64, to: i64, raw: &mut Vec<u8>) -> Result<String> {
    let sql = format!(
        "COPY (SELECT {COLUMNS} FROM audit_leaves l LEFT JOIN audit_events e ON e.seq = l.event_seq \
         WHERE l.leaf_index >= {from} AND l.leaf_index < {to} ORDER BY l.leaf_index) TO STDOUT"
    );
    copy_into(conn, &sql, raw).await?;
    Ok(frame(raw))
}

/// An integer as COPY writes it; `None` for anything else.
fn parse_int(f: &[u8]) -> Option<i64> {
    std::str::from_utf8(f).ok()?.parse().ok()
}

const NULL: &[u8] = b"\\N";

/// COPY's text rows as length-prefixed records of [`FIELD_SEP`]-joined
/// fields. A row not in the expected shape becomes `?`, which the
/// verifier's fast path refuses (its careful path then judges the leaf).
fn frame(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + raw.len() / 8);
    let mut framer = Framer::default();
    let mut fields: [&[u8]; 16] = [&[]; 16];
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut n = 0;
        for f in line.split(|b| *b == b'\t') {
            if let Some(slot) = fields.get_mut(n) {
                *slot = f;
            }
            n += 1;
        }
        framer.push(&mut out, (n == 16).then_some(&fields[..]));
    }
    out
}

#[derive(Default)]
struct Framer {
    rec: Vec<u8>,
    ints: itoa::Buffer,
}

impl Framer {
    /// Appends one record framed from a row's 16 fields (`None`: a row
    /// not in the expected shape).
    fn push(&mut self, out: &mut String, fields: Option<&[&[u8]]>) {
        let mut sep = [0u8; 4];
        let sep = FIELD_SEP.encode_utf8(&mut sep).as_bytes();
        self.rec.clear();
        let ok = fields.is_some_and(|f| build(f, &mut self.rec, sep));
        let text = if ok { std::str::from_utf8(&self.rec).unwrap_or("?") } else { "?" };
        out.push_str(self.ints.format(text.len()));
        out.push(':');
        out.push_str(text);
    }
}

fn build(fields: &[&[u8]], rec: &mut Vec<u8>, sep: &[u8]) -> bool {
    let present = fields[3] != NULL;
    let last = if present { 16 } else { 3 };
    for (i, f) in fields.iter().enumerate().take(last) {
        if i > 0 {
            rec.extend_from_slice(sep);
        }
        match (*f == NULL, NULLABLE.contains(&i)) {
            (true, true) => rec.push(b'0'),
            (true, false) => return false,
            (false, nullable) => {
                if nullable {
                    rec.push(b'1');
                }
                unescape(f, rec);
            }
        }
    }
    if !present {
        rec.extend_from_slice(sep);
        rec.push(b'-');
    }
    true
}

/// Undoes COPY's text escapes (`\\`, `\n`, `\t`, `\r`, `\b`, `\f`, `\v`).
fn unescape(f: &[u8], out: &mut Vec<u8>) {
    if !f.contains(&b'\\') {
        out.extend_from_slice(f);
        return;
    }
    let mut it = f.iter();
    while let Some(&b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match it.next() {
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'r') => out.push(b'\r'),
            Some(b'b') => out.push(0x08),
            Some(b'f') => out.push(0x0c),
            Some(b'v') => out.push(0x0b),
            Some(&other) => out.push(other),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_are_framed_like_the_sql_form() {
        let s = FIELD_SEP;
        let raw = b"0\t1\tab\t1\tid1\t5\t\\N\tsystem\t\\N\tx.y\t\\N\t\\N\t\\N\tua\\tb\\\\c\\nd\t\\N\t{}\n\
1\t2\tcd\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\n\
2\t3\tef\t3\t\\N\t5\t\\N\tsystem\t\\N\tx\t\\N\t\\N\t\\N\t\\N\t\\N\t{}\n";
        let framed = frame(raw);
        let records = crate::audit::split_records(&framed).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(
            records[0],
            format!("0{s}1{s}ab{s}1{s}id1{s}5{s}0{s}system{s}0{s}x.y{s}0{s}0{s}0{s}1ua\tb\\c\nd{s}0{s}{{}}")
        );
        assert_eq!(records[1], format!("1{s}2{s}cd{s}-"));
        // A NULL where the schema allows none: the careful path decides.
        assert_eq!(records[2], "?");
    }

    /// The join done here gives exactly what PostgreSQL's join gives:
    /// leaves out of sequence order, a leaf whose event is gone, an event
    /// in no leaf, escaped characters and NULLs, and events far apart (the
    /// SQL join then), whatever the chunk size.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn the_client_join_equals_the_sql_join() {
        let (db, _dropper) = crate::pg_batch::tests::test_postgres().await;
        for seq in [1i64, 2, 3, 4, 5, 6, 5000] {
            let agent = (seq % 2 == 0).then(|| format!("ua\t{seq}\\x\ny\u{1f}"));
            sqlx::query(
                "INSERT INTO audit_events (seq, id, ts, tenant_id, actor_type, action, user_agent, details) \
                 OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, 't1', 'system', 'x.y', $4, '{\"a\":1}')",
            )
            .bind(seq)
            .bind(format!("e{seq}"))
            .bind(1_700_000_000_000 + seq)
            .bind(agent)
            .execute(db.reader())
            .await
            .unwrap();
        }
        // Leaf -> event; event 99 does not exist, event 6 is in no leaf.
        for (leaf, seq) in [(0, 2), (1, 1), (2, 99), (3, 3), (4, 5000), (5, 4), (6, 5)] {
            sqlx::query("INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES ($1, $2, $3)")
                .bind(leaf as i64)
                .bind(seq as i64)
                .bind(format!("{leaf:064x}"))
                .execute(db.reader())
                .await
                .unwrap();
        }
        let mut conn = db.native_postgres().await.unwrap().unwrap();
        let mut scratch = Scratch::default();
        for chunk in [1, 2, 3, 4, 100] {
            let (mut chunks, spent) = leaf_chunks(&db, 6, chunk);
            let mut records = 0;
            while let Some(next) = chunks.recv().await {
                let (from, text) = next.unwrap();
                let reference = copy_joined(&mut conn, from, from + chunk, &mut scratch.events).await.unwrap();
                assert_eq!(text, reference, "chunk {chunk} from {from}");
                assert!(!text.contains('?'), "{text}");
                records += crate::audit::split_records(&text).unwrap().len();
                // Given back with something left in it: it is cleared for reuse.
                let mut text = text;
                text.push_str("9:leftover");
                let _ = spent.send(text);
            }
            assert_eq!(records, 7, "chunk {chunk}");
        }
        // The client join is what runs: the SQL join only for a chunk whose
        // events lie far apart (leaf 4's event 5000 with other leaves' of
        // 1..=5, beyond 4 x chunk + 1024), and either gives the same records.
        for (chunk, fallbacks) in [(1i64, 0), (2, 1), (3, 1), (4, 1), (100, 1), (1500, 0)] {
            let mut s = Scratch::default();
            let mut from = 0;
            while from <= 6 {
                let text = copy_chunk(&mut conn, from, from + chunk, &mut s).await.unwrap();
                let reference = copy_joined(&mut conn, from, from + chunk, &mut scratch.events).await.unwrap();
                assert_eq!(text, reference, "chunk {chunk} from {from}");
                from += chunk;
            }
            assert_eq!(s.fallbacks, fallbacks, "chunk {chunk}");
        }
    }
}
