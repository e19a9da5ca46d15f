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
            // Every chunk given back is kept (as many as can be in flight):
            // memory freed and allocated again is faulted in and zeroed
            // again, a large share of verification's time.
            scratch.spares.extend(spent_rx.try_iter());
            scratch.spares.truncate(SPARES);
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
    leaf_rows: Vec<LeafRow>,
    /// The events' fields, in the order read.
    event_rows: Vec<[Option<Span>; 13]>,
    /// Per event seq from the smallest one: its place in `event_rows`.
    slots: Vec<u32>,
    /// Chunks given back, to build the next ones in.
    spares: Vec<String>,
    /// Chunks that took the SQL join (its output is the same; only the
    /// tests look, to see that the client join is what runs).
    fallbacks: u32,
}

const NO_SLOT: u32 = u32::MAX;

/// Chunks kept for reuse: more than the verifier holds at once.
const SPARES: usize = 16;

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
    // COPY takes no parameters; these are integers. Binary rows: no text
    // for the server to format, none here to split, parse or unescape.
    let sql = format!(
        "COPY (SELECT leaf_index, event_seq, leaf_hash FROM audit_leaves \
         WHERE leaf_index >= {from} AND leaf_index < {to} ORDER BY leaf_index) TO STDOUT (FORMAT binary)"
    );
    copy_into(conn, &sql, &mut s.leaves).await?;
    s.leaf_rows.clear();
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    let (buf, leaf_rows) = (&s.leaves, &mut s.leaf_rows);
    let regular = binary_rows(buf, |f| match f {
        [Some(index), Some(seq), Some(hash)] => match (int8(buf, *index), int8(buf, *seq)) {
            (Some(index), Some(seq)) => {
                (min, max) = (min.min(seq), max.max(seq));
                leaf_rows.push(LeafRow { index, seq, hash: *hash });
                true
            }
            _ => false,
        },
        _ => false,
    });
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
        "COPY (SELECT {EVENT_COLUMNS} FROM audit_events WHERE seq >= {min} AND seq <= {max} ORDER BY seq) \
         TO STDOUT (FORMAT binary)"
    );
    copy_into(conn, &sql, &mut s.events).await?;
    s.slots.clear();
    s.slots.resize(span as usize, NO_SLOT);
    s.event_rows.clear();
    let (buf, slots, rows) = (&s.events, &mut s.slots, &mut s.event_rows);
    let regular = binary_rows(buf, |f| {
        let Ok(row) = <[Option<Span>; 13]>::try_from(f) else { return false };
        let slot = row[0]
            .and_then(|f| int8(buf, f))
            .filter(|seq| (min..=max).contains(seq))
            .and_then(|seq| slots.get_mut((seq - min) as usize));
        match (slot, u32::try_from(rows.len())) {
            (Some(slot), Ok(n)) if *slot == NO_SLOT => {
                *slot = n;
                rows.push(row);
                true
            }
            // A duplicate number or a row out of place.
            _ => false,
        }
    });
    if !regular {
        s.fallbacks += 1;
        return copy_joined(conn, from, to, &mut s.events).await;
    }
    let mut out = s.spares.pop().unwrap_or_default();
    out.clear();
    out.reserve(s.leaves.len() + s.events.len() + s.leaf_rows.len() * 8);
    let mut framer = Framer::default();
    let (leaves, events) = (&s.leaves[..], &s.events[..]);
    let mut ints = [(); 4].map(|_| itoa::Buffer::new());
    for leaf in &s.leaf_rows {
        let [a, b, c, d] = &mut ints;
        let mut row: [Option<&[u8]>; 16] = [None; 16];
        row[0] = Some(a.format(leaf.index).as_bytes());
        row[1] = Some(b.format(leaf.seq).as_bytes());
        row[2] = Some(leaf.hash.of(leaves));
        if let Some(event) = s.event_rows.get(s.slots[(leaf.seq - min) as usize] as usize) {
            for (i, f) in event.iter().enumerate() {
                row[3 + i] = f.map(|f| f.of(events));
            }
            // seq and ts are integers.
            row[3] = event[0].and_then(|f| int8(events, f)).map(|v| c.format(v).as_bytes());
            row[5] = event[2].and_then(|f| int8(events, f)).map(|v| d.format(v).as_bytes());
        }
        framer.push_binary(&mut out, &row);
    }
    Ok(out)
}

/// A leaf row of a binary COPY: its numbers and where its hash lies.
struct LeafRow {
    index: i64,
    seq: i64,
    hash: Span,
}

/// Where a field's bytes lie in a COPY buffer.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

impl Span {
    fn of(self, buf: &[u8]) -> &[u8] {
        buf.get(self.start..self.end).unwrap_or_default()
    }
}

/// An `int8` as binary COPY sends it: 8 bytes, big-endian.
fn int8(buf: &[u8], f: Span) -> Option<i64> {
    Some(i64::from_be_bytes(f.of(buf).try_into().ok()?))
}

/// The rows of a binary COPY (`COPY … TO STDOUT (FORMAT binary)`): calls
/// `row` with each row's fields (`None` for NULL) until it says `false`.
/// `false` when a row was refused or the data is not in that format.
fn binary_rows(buf: &[u8], mut row: impl FnMut(&[Option<Span>]) -> bool) -> bool {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let mut at = 0usize;
    // The next `n` bytes and where they start.
    let mut take = |n: usize| {
        let start = at;
        let piece = buf.get(start..start.checked_add(n)?)?;
        at += n;
        Some((start, piece))
    };
    let int = |b: Option<(usize, &[u8])>| b.and_then(|(_, b)| b.try_into().ok()).map(i32::from_be_bytes);
    if take(SIGNATURE.len()).map(|(_, b)| b) != Some(SIGNATURE) {
        return false;
    }
    // Flags, then a header extension to skip.
    let _flags = take(4);
    let Some(extension) = int(take(4)).and_then(|n| usize::try_from(n).ok()) else { return false };
    if take(extension).is_none() {
        return false;
    }
    let mut fields: Vec<Option<Span>> = Vec::with_capacity(16);
    loop {
        let count = match take(2).and_then(|(_, b)| b.try_into().ok()).map(i16::from_be_bytes) {
            // The trailer ends the data.
            Some(-1) => return true,
            Some(n) if n >= 0 => n,
            _ => return false,
        };
        fields.clear();
        for _ in 0..count {
            let field = match int(take(4)) {
                Some(-1) => None,
                Some(len) => {
                    let Ok(len) = usize::try_from(len) else { return false };
                    let Some((start, _)) = take(len) else { return false };
                    Some(Span { start, end: start + len })
                }
                None => return false,
            };
            fields.push(field);
        }
        if !row(&fields) {
            return false;
        }
    }
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
    /// Appends one record framed from a text row's 16 fields (`None`: a
    /// row not in the expected shape).
    fn push(&mut self, out: &mut String, fields: Option<&[&[u8]]>) {
        self.rec.clear();
        let ok = fields.is_some_and(|f| {
            let f = f.iter().map(|f| (*f != NULL).then_some(*f));
            build(f, &mut self.rec, unescape)
        });
        self.finish(out, ok);
    }

    /// Appends one record framed from a binary row's 16 fields (`None`
    /// for NULL): the values are the bytes themselves.
    fn push_binary(&mut self, out: &mut String, fields: &[Option<&[u8]>; 16]) {
        self.rec.clear();
        let ok = build(fields.iter().copied(), &mut self.rec, |v, rec| rec.extend_from_slice(v));
        self.finish(out, ok);
    }

    fn finish(&mut self, out: &mut String, ok: bool) {
        let text = if ok { std::str::from_utf8(&self.rec).unwrap_or("?") } else { "?" };
        out.push_str(self.ints.format(text.len()));
        out.push(':');
        out.push_str(text);
    }
}

/// A record from a row's 16 fields (`None` for NULL), each value appended
/// by `value`; `false` for a NULL where the schema allows none.
fn build<'a>(
    fields: impl Iterator<Item = Option<&'a [u8]>>,
    rec: &mut Vec<u8>,
    value: impl Fn(&[u8], &mut Vec<u8>),
) -> bool {
    let mut sep = [0u8; 4];
    let sep = FIELD_SEP.encode_utf8(&mut sep).as_bytes();
    for (i, f) in fields.enumerate() {
        if i > 0 {
            rec.extend_from_slice(sep);
        }
        // No event (its seq is NULL): the leaf alone, then `-`.
        if i == 3 && f.is_none() {
            rec.push(b'-');
            return true;
        }
        match (f, NULLABLE.contains(&i)) {
            (None, true) => rec.push(b'0'),
            (None, false) => return false,
            (Some(f), nullable) => {
                if nullable {
                    rec.push(b'1');
                }
                value(f, rec);
            }
        }
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

    /// Rows as `COPY … (FORMAT binary)` writes them.
    fn binary(rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
        out.extend_from_slice(&0i32.to_be_bytes());
        // A header extension of 3 bytes, to be skipped.
        out.extend_from_slice(&3i32.to_be_bytes());
        out.extend_from_slice(b"ext");
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in *row {
                match f {
                    Some(v) => {
                        out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        out.extend_from_slice(v);
                    }
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    fn read(data: &[u8]) -> Option<Vec<Vec<Option<Vec<u8>>>>> {
        let mut rows = Vec::new();
        binary_rows(data, |f| {
            rows.push(f.iter().map(|f| f.map(|f| f.of(data).to_vec())).collect());
            true
        })
        .then_some(rows)
    }

    #[test]
    fn binary_rows_are_read_and_anything_malformed_is_refused() {
        let seven = 7i64.to_be_bytes();
        let data = binary(&[&[Some(b"ab"), None, Some(b"")], &[Some(&seven)], &[]]);
        let rows = read(&data).unwrap();
        assert_eq!(rows, vec![vec![Some(b"ab".to_vec()), None, Some(vec![])], vec![Some(seven.to_vec())], vec![]]);
        assert_eq!(int8(&data, Span { start: data.len() - 12, end: data.len() - 4 }), Some(7));
        assert_eq!(int8(&data, Span { start: 0, end: 4 }), None);
        // Cut anywhere (the trailer too): refused, never read past the end.
        for cut in 0..data.len() {
            assert!(read(&data[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad_signature = data.clone();
        bad_signature[0] = b'X';
        // A length below -1, a field count below -1.
        let mut bad_length = binary(&[&[Some(b"ab")]]);
        bad_length[24..28].copy_from_slice(&(-2i32).to_be_bytes());
        let mut bad_count = binary(&[&[Some(b"ab")]]);
        bad_count[22..24].copy_from_slice(&(-2i16).to_be_bytes());
        for bad in [bad_signature, bad_length, bad_count, b"COPY".to_vec(), Vec::new()] {
            assert!(read(&bad).is_none(), "{bad:?}");
        }
        // A row the caller refuses stops the reading.
        let mut seen = 0;
        assert!(!binary_rows(&data, |_| {
            seen += 1;
            false
        }));
        assert_eq!(seen, 1);
    }

    /// A binary row's values are the bytes themselves: what a text row
    /// would escape (a backslash, a tab, a literal `\N`) stays a value.
    #[test]
    fn binary_rows_are_framed_like_text_rows() {
        let s = FIELD_SEP;
        let mut row: [Option<&[u8]>; 16] = [None; 16];
        let present = [(0, "0"), (1, "1"), (2, "ab"), (3, "1"), (4, "id1"), (5, "5"), (7, "system"), (9, "x.y")];
        for (i, v) in present {
            row[i] = Some(v.as_bytes());
        }
        row[13] = Some(b"\\N");
        row[15] = Some(b"{\"a\":\"b\\tc\"}");
        let mut framer = Framer::default();
        let mut out = String::new();
        framer.push_binary(&mut out, &row);
        // No event: the leaf, then `-`.
        let mut gone: [Option<&[u8]>; 16] = [None; 16];
        gone[..3].copy_from_slice(&row[..3]);
        framer.push_binary(&mut out, &gone);
        // A NULL where the schema allows none.
        let mut no_id = row;
        no_id[4] = None;
        framer.push_binary(&mut out, &no_id);
        let records = crate::audit::split_records(&out).unwrap();
        assert_eq!(
            records,
            vec![
                format!("0{s}1{s}ab{s}1{s}id1{s}5{s}0{s}system{s}0{s}x.y{s}0{s}0{s}0{s}1\\N{s}0{s}{{\"a\":\"b\\tc\"}}"),
                format!("0{s}1{s}ab{s}-"),
                "?".to_owned(),
            ]
        );
        // The same row as text COPY writes it frames the same.
        let text = b"0\t1\tab\t1\tid1\t5\t\\N\tsystem\t\\N\tx.y\t\\N\t\\N\t\\N\t\\\\N\t\\N\t{\"a\":\"b\\\\tc\"}\n";
        assert_eq!(crate::audit::split_records(&frame(text)).unwrap()[0], records[0]);
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
