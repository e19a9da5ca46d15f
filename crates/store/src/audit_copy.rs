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
            let empty = matches!(&read, Ok(c) if c.is_empty());
            if tx.send(read.map(|c| (from, c))).await.is_err() || failed {
                break;
            }
            from = match next_from(&db, to, empty).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            };
        }
        if let Some(conn) = native {
            let _ = sqlx::Connection::close(conn).await;
        }
    });
    (rx, spent)
}

/// Where the chunk after `[…, to)` starts: `to`, or after an empty chunk
/// the next leaf there is (the log has no gaps, so the scan stops at that
/// one; a leaf planted far beyond the log, up to `i64::MAX`, would
/// otherwise take forever of empty chunks to reach). `None`: nothing more
/// to read (no leaf further on, or the chunks cannot grow past `i64::MAX`).
async fn next_from(db: &Db, to: i64, empty: bool) -> Result<Option<i64>> {
    if to == i64::MAX {
        return Ok(None);
    }
    if !empty {
        return Ok(Some(to));
    }
    crate::audit::next_leaf_index(db.reader(), to).await
}

const COLUMNS: &str = "l.leaf_index, l.event_seq, l.leaf_hash, e.seq, e.id, e.ts, e.tenant_id, e.actor_type, \
    e.actor_id, e.action, e.resource_type, e.resource_id, e.source_ip, e.user_agent, e.request_id, e.details";

/// The event columns of [`COLUMNS`], `seq` first, cast to the types the
/// binary rows are read as: binary rows carry no types, so a column whose
/// type was changed behind the log's back (a `timestamp` has the 8 bytes
/// of a `bigint`) fails the cast instead of passing for the old one.
const EVENT_COLUMNS: &str = "seq::int8, id::text, ts::int8, tenant_id::text, actor_type::text, actor_id::text, \
    action::text, resource_type::text, resource_id::text, source_ip::text, user_agent::text, request_id::text, \
    details::text";

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
    // COPY takes no parameters; these are integers. Binary rows: nothing
    // for the server to format or escape, nor for us to split and unescape.
    let sql = format!(
        "COPY (SELECT leaf_index::int8, event_seq::int8, leaf_hash::text FROM audit_leaves \
         WHERE leaf_index >= {from} AND leaf_index < {to} ORDER BY leaf_index) TO STDOUT (FORMAT binary)"
    );
    copy_into(conn, &sql, &mut s.leaves).await?;
    s.leaf_rows.clear();
    let (mut min, mut max) = (i64::MAX, i64::MIN);
    let mut fields: [Option<&[u8]>; 16] = [None; 16];
    let regular = for_each_tuple(&s.leaves, 3, &mut fields[..3], |start, end, f| {
        let seq = int(f[1]);
        if let Some(seq) = seq {
            (min, max) = (min.min(seq), max.max(seq));
            s.leaf_rows.push((start, end, seq));
        }
        seq.is_some()
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
    let slots = &mut s.slots;
    let placed = for_each_tuple(&s.events, 13, &mut fields[3..], |start, end, f| {
        let slot =
            int(f[0]).filter(|seq| (min..=max).contains(seq)).and_then(|seq| slots.get_mut((seq - min) as usize));
        match (slot, u32::try_from(start), u32::try_from(end)) {
            (Some(slot), Ok(a), Ok(e)) if *slot == NO_SLOT => {
                *slot = (a, e);
                true
            }
            // A duplicate number or a row out of place.
            _ => false,
        }
    });
    if !placed {
        s.fallbacks += 1;
        return copy_joined(conn, from, to, &mut s.events).await;
    }
    let mut out = std::mem::take(&mut s.spare);
    out.clear();
    out.reserve(s.leaves.len() + s.events.len() + s.leaf_rows.len() * 8);
    let mut framer = Framer::default();
    for &(start, end, seq) in &s.leaf_rows {
        let event = s.slots[(seq - min) as usize];
        let mut ok = matches!(tuple(&s.leaves[start..end], &mut fields[..3]), Ok(Some((3, _))));
        let present = event != NO_SLOT;
        if present {
            let row = &s.events[event.0 as usize..event.1 as usize];
            ok &= matches!(tuple(row, &mut fields[3..]), Ok(Some((13, _))));
        }
        framer.push_typed(&mut out, ok.then_some((&fields, present)));
    }
    Ok(out)
}

/// Binary COPY's signature, the start of its header.
const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Calls `row` with the byte range and fields of each tuple of a binary
/// COPY output (PostgreSQL's documented format), each of exactly `n`
/// fields. `false` if the output is not in that shape or `row` said
/// `false` (then it stops there).
fn for_each_tuple<'a>(
    buf: &'a [u8],
    n: usize,
    fields: &mut [Option<&'a [u8]>],
    mut row: impl FnMut(usize, usize, &[Option<&'a [u8]>]) -> bool,
) -> bool {
    // Signature, flags, the header extension's length, the extension.
    let Some(ext) = buf.strip_prefix(SIGNATURE).and_then(|rest| be::<4>(rest, 4)) else { return false };
    let mut at = SIGNATURE.len() + 8 + u32::from_be_bytes(ext) as usize;
    loop {
        let Some(rest) = buf.get(at..) else { return false };
        match tuple(rest, fields) {
            Ok(Some((count, len))) if count == n => {
                if !row(at, at + len, &fields[..n]) {
                    return false;
                }
                at += len;
            }
            // The trailer, and nothing after it.
            Ok(None) => return at + 2 == buf.len(),
            _ => return false,
        }
    }
}

/// The binary COPY tuple at the start of `buf`: its fields into `out`
/// (`None`: NULL), their number and the tuple's length in bytes;
/// `Ok(None)` for the trailer. `Err` if it is cut short or has more fields
/// than `out` holds.
fn tuple<'a>(buf: &'a [u8], out: &mut [Option<&'a [u8]>]) -> std::result::Result<Option<(usize, usize)>, ()> {
    let count = i16::from_be_bytes(be::<2>(buf, 0).ok_or(())?);
    if count == -1 {
        return Ok(None);
    }
    let n = usize::try_from(count).map_err(|_| ())?;
    let mut at = 2;
    for slot in out.get_mut(..n).ok_or(())? {
        let len = i32::from_be_bytes(be::<4>(buf, at).ok_or(())?);
        at += 4;
        *slot = match len {
            -1 => None,
            len => {
                let end = at + usize::try_from(len).map_err(|_| ())?;
                let field = buf.get(at..end).ok_or(())?;
                at = end;
                Some(field)
            }
        };
    }
    Ok(Some((n, at)))
}

/// `N` bytes of `buf` at `at`.
fn be<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    buf.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// A `bigint` in binary form.
fn int(field: Option<&[u8]>) -> Option<i64> {
    Some(i64::from_be_bytes(field?.try_into().ok()?))
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
    /// Appends one record framed from a row's 16 fields (`None`: a row
    /// not in the expected shape).
    fn push(&mut self, out: &mut String, fields: Option<&[&[u8]]>) {
        let mut sep = [0u8; 4];
        let sep = FIELD_SEP.encode_utf8(&mut sep).as_bytes();
        self.rec.clear();
        let ok = fields.is_some_and(|f| build(f, &mut self.rec, sep));
        self.frame(out, ok);
    }

    /// Appends one record framed from a leaf's binary fields and its
    /// event's (`true`: the event is present), as the SQLite reader frames
    /// typed values; `None`: a row not in the expected shape.
    fn push_typed(&mut self, out: &mut String, row: Option<(&[Option<&[u8]>; 16], bool)>) {
        self.rec.clear();
        let ok = row.is_some_and(|(fields, present)| build_typed(fields, present, &mut self.rec));
        self.frame(out, ok);
    }

    /// `<bytes>:<record>`, or `?` for a record not built or not UTF-8.
    fn frame(&mut self, out: &mut String, ok: bool) {
        let text = if ok { std::str::from_utf8(&self.rec).unwrap_or("?") } else { "?" };
        out.push_str(self.ints.format(text.len()));
        out.push(':');
        out.push_str(text);
    }
}

/// [`build`] for binary fields: integers in the integer columns, text in
/// the others, NULL only where the schema allows it.
fn build_typed(fields: &[Option<&[u8]>; 16], present: bool, rec: &mut Vec<u8>) -> bool {
    let mut sep = [0u8; 4];
    let sep = FIELD_SEP.encode_utf8(&mut sep).as_bytes();
    let mut ints = itoa::Buffer::new();
    let last = if present { 16 } else { 3 };
    for (i, f) in fields.iter().enumerate().take(last) {
        if i > 0 {
            rec.extend_from_slice(sep);
        }
        let nullable = NULLABLE.contains(&i);
        match (f, matches!(i, 0 | 1 | 3 | 5)) {
            (None, _) if nullable => rec.push(b'0'),
            (Some(_), true) => match int(*f) {
                Some(n) => rec.extend_from_slice(ints.format(n).as_bytes()),
                None => return false,
            },
            (Some(text), false) => {
                if nullable {
                    rec.push(b'1');
                }
                rec.extend_from_slice(text);
            }
            (None, _) => return false,
        }
    }
    if !present {
        rec.extend_from_slice(sep);
        rec.push(b'-');
    }
    true
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

    /// A binary COPY output as PostgreSQL writes it: the header (with an
    /// extension of `ext` bytes), the tuples, the trailer.
    fn binary(ext: usize, rows: &[&[Option<&[u8]>]]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&(ext as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, ext));
        for row in rows {
            out.extend_from_slice(&(row.len() as i16).to_be_bytes());
            for f in *row {
                match f {
                    None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                }
            }
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        out
    }

    /// A tuple read: its byte range and its fields (`None`: NULL).
    type Read = (usize, usize, Vec<Option<Vec<u8>>>);

    fn collect(buf: &[u8], n: usize) -> Option<Vec<Read>> {
        let mut fields = [None; 16];
        let mut rows = Vec::new();
        let ok = for_each_tuple(buf, n, &mut fields[..n], |start, end, f| {
            rows.push((start, end, f.iter().map(|f| f.map(<[u8]>::to_vec)).collect()));
            true
        });
        ok.then_some(rows)
    }

    #[test]
    fn binary_copy_is_read_by_its_documented_format() {
        let five = 5i64.to_be_bytes();
        let rows: [&[Option<&[u8]>]; 2] = [&[Some(&five), None, Some(b"ab")], &[None, Some(b""), Some(b"c")]];
        for ext in [0, 4] {
            let buf = binary(ext, &rows);
            let got = collect(&buf, 3).unwrap();
            assert_eq!(got.len(), 2);
            assert_eq!(got[0].2, vec![Some(five.to_vec()), None, Some(b"ab".to_vec())]);
            assert_eq!(got[1].2, vec![None, Some(vec![]), Some(b"c".to_vec())]);
            // Each range is its tuple, and parses alone to the same fields.
            let first = 19 + ext;
            assert_eq!((got[0].0, got[0].1, got[1].0), (first, first + 2 + 12 + 4 + 6, first + 2 + 12 + 4 + 6));
            assert_eq!(got[1].1, buf.len() - 2);
            let mut f = [None; 3];
            assert_eq!(tuple(&buf[got[1].0..got[1].1], &mut f), Ok(Some((3, got[1].1 - got[1].0))));
            assert_eq!(int(f[0]), None);
            assert_eq!(int(Some(&five)), Some(5));
            assert_eq!(int(Some(&five[1..])), None);
        }
        let buf = binary(0, &rows);
        // No rows: header and trailer only.
        assert_eq!(collect(&binary(0, &[]), 3), Some(vec![]));
        // Another number of fields, a cut, anything after the trailer, text
        // COPY, another signature: not read.
        assert_eq!(collect(&buf, 2), None);
        assert_eq!(collect(&buf, 4), None);
        for cut in [1, 2, 3, 10, 20, buf.len() - 1] {
            assert_eq!(collect(&buf[..buf.len() - cut], 3), None, "cut {cut}");
        }
        assert_eq!(collect(&[buf.as_slice(), b"x"].concat(), 3), None);
        assert_eq!(collect(b"5\t\\N\tab\n", 3), None);
        let mut other = buf.clone();
        other[0] = b'Q';
        assert_eq!(collect(&other, 3), None);
        // A header extension longer than what follows.
        let mut long = buf.clone();
        long[15..19].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(collect(&long, 3), None);
        // The callback stops the reading.
        let mut fields = [None; 3];
        let mut seen = 0;
        assert!(!for_each_tuple(&buf, 3, &mut fields, |_, _, _| {
            seen += 1;
            false
        }));
        assert_eq!(seen, 1);
        // A length below -1, more fields than room, a field count below -1.
        let mut bad = 1i16.to_be_bytes().to_vec();
        bad.extend_from_slice(&(-2i32).to_be_bytes());
        let (four, below, trailer) = (4i16.to_be_bytes(), (-2i16).to_be_bytes(), (-1i16).to_be_bytes());
        let mut f = [None; 3];
        assert_eq!(tuple(&bad, &mut f), Err(()));
        assert_eq!(tuple(&four, &mut f), Err(()));
        assert_eq!(tuple(&below, &mut f), Err(()));
        assert_eq!(tuple(&trailer, &mut f), Ok(None));
        assert_eq!(tuple(&[0], &mut f), Err(()));
    }

    #[test]
    fn binary_fields_are_framed_like_the_typed_sqlite_rows() {
        let s = FIELD_SEP;
        let (leaf, seq, ts) = (0i64.to_be_bytes(), 1i64.to_be_bytes(), 5i64.to_be_bytes());
        let mut f: [Option<&[u8]>; 16] = [None; 16];
        let values: [(usize, &[u8]); 10] = [
            (0, &leaf),
            (1, &seq),
            (2, b"ab"),
            (3, &seq),
            (4, b"id1"),
            (5, &ts),
            (7, b"system"),
            (9, b"x.y"),
            (13, b"ua\tb"),
            (15, b"{}"),
        ];
        for (i, v) in values {
            f[i] = Some(v);
        }
        let mut rec = Vec::new();
        assert!(build_typed(&f, true, &mut rec));
        assert_eq!(
            String::from_utf8(rec.clone()).unwrap(),
            format!("0{s}1{s}ab{s}1{s}id1{s}5{s}0{s}system{s}0{s}x.y{s}0{s}0{s}0{s}1ua\tb{s}0{s}{{}}")
        );
        // No event: the leaf's fields and `-`.
        rec.clear();
        assert!(build_typed(&f, false, &mut rec));
        assert_eq!(String::from_utf8(rec).unwrap(), format!("0{s}1{s}ab{s}-"));
        // A NULL where the schema has none, an integer of another width: the
        // careful path decides.
        for (i, v) in [(7, None), (2, None), (5, Some(&b"5"[..])), (0, Some(&leaf[..4]))] {
            let mut bad = f;
            bad[i] = v;
            assert!(!build_typed(&bad, true, &mut Vec::new()), "field {i}");
        }
        // Bytes that are not UTF-8 make the record `?`.
        let mut framer = Framer::default();
        let mut out = String::new();
        let mut bad = f;
        bad[9] = Some(b"\xff");
        framer.push_typed(&mut out, Some((&bad, true)));
        framer.push_typed(&mut out, None);
        framer.push_typed(&mut out, Some((&f, false)));
        let leaf_only = format!("0{s}1{s}ab{s}-");
        assert_eq!(out, format!("1:?1:?{}:{leaf_only}", leaf_only.len()));
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
