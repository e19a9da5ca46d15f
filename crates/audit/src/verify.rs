//! Full verification of the log, from the database and the checkpoint
//! file, trusting only the audit public key: every record is re-hashed, the
//! tree is rebuilt, and every signed checkpoint must match it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use palisade_store::audit::{split_records, AuditRow};
use palisade_store::Db;

use crate::checkpoint::{Checkpoint, Verifier};
use crate::log::{leaf_hash_of, LeafFields, LogError};

const CHUNK: i64 = 20_000;

struct Leaf<'a> {
    index: u64,
    seq: i64,
    hash: Hash,
    /// The record as the database encoded it; `None` if the row is gone.
    record: Option<&'a str>,
}

/// (leaf index, leaf hash, problem with the record if any, whether the
/// problem is only that the record row is gone)
type Checked = (u64, Hash, Option<String>, bool);

/// Fast path: re-encodes the raw fields exactly as the integrator did and
/// hashes them. `Err(())` when the record is not in the expected shape.
/// A tagged nullable column: `0` is NULL, `1…` a value.
fn nullable(s: &str) -> Result<Option<&str>, ()> {
    match s.as_bytes().first() {
        Some(b'0') if s.len() == 1 => Ok(None),
        Some(b'1') => Ok(Some(&s[1..])),
        _ => Err(()),
    }
}

/// Leaf index of the log -> (tenant, tenant leaf hash).
type TenantEntries = std::collections::HashMap<i64, (String, String)>;

/// The parts of a fast-path record: leaf index, event seq, leaf hash and
/// the event's fields (`None` when the event row is gone).
type Parsed<'a> = (u64, i64, Hash, Option<LeafFields<'a>>);

fn parse_fields(record: &str) -> Result<Parsed<'_>, ()> {
    use palisade_store::audit::FIELD_SEP;
    let opt = nullable;
    let mut f = [""; 16];
    let mut n = 0;
    let mut start = 0;
    // The separator is one byte (ASCII), so the pieces are whole characters.
    let sep = u8::try_from(FIELD_SEP).map_err(|_| ())?;
    for end in memchr::memchr_iter(sep, record.as_bytes()).chain(std::iter::once(record.len())) {
        *f.get_mut(n).ok_or(())? = record.get(start..end).ok_or(())?;
        n += 1;
        start = end + 1;
    }
    let index: u64 = f[0].parse().map_err(|_| ())?;
    let event_seq: i64 = f[1].parse().map_err(|_| ())?;
    let hash = merkle::decode_hash(f[2]).ok_or(())?;
    if n == 4 && f[3] == "-" {
        return Ok((index, event_seq, hash, None));
    }
    if n != 16 {
        return Err(());
    }
    let fields = LeafFields {
        seq: f[3].parse().map_err(|_| ())?,
        id: f[4],
        ts: f[5].parse().map_err(|_| ())?,
        tenant_id: opt(f[6])?,
        actor_type: f[7],
        actor_id: opt(f[8])?,
        action: f[9],
        resource_type: opt(f[10])?,
        resource_id: opt(f[11])?,
        source_ip: opt(f[12])?,
        user_agent: opt(f[13])?,
        request_id: opt(f[14])?,
        details: f[15],
    };
    Ok((index, event_seq, hash, Some(fields)))
}

fn check_fields(record: &str, buf: &mut Vec<u8>) -> Result<Checked, ()> {
    check_parsed(&parse_fields(record)?, buf)
}

fn check_parsed(parsed: &Parsed<'_>, buf: &mut Vec<u8>) -> Result<Checked, ()> {
    let (index, event_seq, hash, fields) = parsed;
    let (index, hash) = (*index, *hash);
    let Some(fields) = fields else {
        return Ok((index, hash, Some(format!("record seq {event_seq} (leaf {index}) was deleted")), true));
    };
    fields.encode(buf);
    if merkle::leaf_hash(buf) != hash {
        // Let the slow path judge (and word) it: a value holding a field
        // separator lands here as well as a real edit.
        return Err(());
    }
    Ok((index, hash, None, false))
}

/// The record of leaf `index` decoded the slow way (the fast path could
/// not read it, yet it hashes to its leaf).
/// Read again, so believed only if it still hashes to its leaf.
async fn slow_row(db: &Db, index: u64) -> Result<Option<AuditRow>, LogError> {
    let i = index as i64;
    let chunk = palisade_store::audit::leaf_chunk(db, i, i + 1).await?;
    Ok(chunk
        .lines()
        .next()
        .and_then(parse_line)
        .and_then(|l| l.record.and_then(decode_record).filter(|r| leaf_hash_of(r) == l.hash)))
}

/// Checks one record of a [`palisade_store::audit::leaf_fields_chunk`].
async fn check_piece(
    db: &Db,
    record: &str,
    index: u64,
    buf: &mut Vec<u8>,
) -> Result<Result<Checked, String>, LogError> {
    match check_fields(record, buf) {
        Ok(checked) => Ok(Ok(checked)),
        // Not the expected shape, or not matching: the slow way decides.
        Err(()) => slow_check(db, index).await,
    }
}

/// Checks that leaves `[from, to)` are all present with records that still
/// hash to them. Retention runs this before signing a range away, so rows
/// deleted or edited behind the log's back are never blessed.
/// How far the retention statements in the database reach, from their
/// signed bodies only (a row's columns open the database's guard but vouch
/// for nothing): the platform's cut under `""`, each tenant's under its id.
pub(crate) async fn signed_cuts(db: &Db, verifier: &Verifier) -> Result<HashMap<String, u64>, LogError> {
    let mut cuts: HashMap<String, u64> = HashMap::new();
    for r in palisade_store::audit::all_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        if let Some((up_to, _)) = verifier.verify_expiry(&cp) {
            let c = cuts.entry(String::new()).or_default();
            *c = (*c).max(up_to);
        }
    }
    for (_, r) in palisade_store::audit::all_tenant_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        if let Some(e) = verifier.verify_tenant_expiry(&cp) {
            let c = cuts.entry(e.tenant).or_default();
            *c = (*c).max(e.up_to_leaf);
        }
    }
    Ok(cuts)
}

/// Checks that leaves `[from, to)` are all present with records that still
/// hash to them. Retention runs this before signing a range away, so rows
/// deleted or edited behind the log's back are never blessed. A record
/// already gone under a signed statement (the platform's, or that of the
/// tenant the stored tenant tree names for its leaf) is no sign of
/// tampering here; whether the tenant tree was rewritten to name another
/// tenant is for `verify_log`, which rebuilds each tenant's tree against
/// its statements' roots.
pub async fn check_range(db: &Db, verifier: &Verifier, from: u64, to: u64) -> Result<Option<String>, LogError> {
    check_range_of(db, verifier, from, to, None).await
}

/// A tenant's tree rows on a range of leaves, by leaf: `(tenant index,
/// tenant leaf hash)`, for [`check_range_of`].
pub(crate) struct TenantRows<'a> {
    pub tenant: &'a str,
    pub rows: HashMap<i64, (i64, Hash)>,
}

/// [`check_range`], and with `tenant` each of its rows in the range must be
/// the tenant leaf of the very record checked against the log there (a
/// present record of the tenant), and each such record must have one: one
/// read of each record for both, so what is checked is what is signed.
pub(crate) async fn check_range_of(
    db: &Db,
    verifier: &Verifier,
    from: u64,
    to: u64,
    tenant: Option<&TenantRows<'_>>,
) -> Result<Option<String>, LogError> {
    let mut buf = Vec::with_capacity(1024);
    let mut expected = from;
    let mut start = from as i64;
    // Read at the first gone record; once more if one seems uncovered (a
    // statement another instance signed meanwhile).
    let mut cuts: Option<(HashMap<String, u64>, bool)> = None;
    while (start as u64) < to {
        let end = (start + CHUNK).min(to as i64);
        let chunk = palisade_store::audit::leaf_fields_chunk(db, start, end).await?;
        let Some(records) = split_records(&chunk) else {
            return Ok(Some(format!("leaves from {start} are unreadable")));
        };
        let mut entries: Option<TenantEntries> = None;
        for record in records {
            let (index, _, problem, gone) = match check_piece(db, record, expected, &mut buf).await? {
                Ok(checked) => checked,
                Err(problem) => return Ok(Some(problem)),
            };
            if index != expected {
                return Ok(Some(format!("leaf {expected} is missing")));
            }
            if let Some(t) = tenant {
                let row = t.rows.get(&(index as i64));
                // A record not there (or altered) is judged below like any
                // other: gone only under a signed cut (another instance's,
                // signed meanwhile, included).
                let mismatch = match &problem {
                    Some(_) => false,
                    None => !tenant_row_matches(db, record, index, t.tenant, row, &mut buf).await?,
                };
                if mismatch {
                    return Ok(Some(format!("the tenant tree's leaf at {index} is not the tenant's record there")));
                }
            }
            if let Some(problem) = problem {
                if !gone {
                    return Ok(Some(problem));
                }
                if entries.is_none() {
                    entries = Some(palisade_store::audit::tenant_tree_entries(db.reader(), start, end).await?);
                }
                let tenant = entries.as_ref().and_then(|e| e.get(&(index as i64))).map_or("", |(t, _)| t.as_str());
                loop {
                    let (c, reloaded) = match cuts.as_mut() {
                        Some(c) => c,
                        None => cuts.insert((signed_cuts(db, verifier).await?, false)),
                    };
                    let covered = |t: &str| c.get(t).is_some_and(|b| index < *b);
                    if covered("") || (!tenant.is_empty() && covered(tenant)) {
                        break;
                    }
                    if *reloaded {
                        return Ok(Some(problem));
                    }
                    *c = signed_cuts(db, verifier).await?;
                    *reloaded = true;
                }
            }
            expected += 1;
        }
        start = end;
    }
    Ok((expected != to).then(|| format!("leaf {expected} is missing")))
}

/// Whether `record` (present, at leaf `index`, checked against the log)
/// and the tenant's `row` there agree: a record of `tenant` has a row that
/// is its tenant leaf; anyone else's has none.
async fn tenant_row_matches(
    db: &Db,
    record: &str,
    index: u64,
    tenant: &str,
    row: Option<&(i64, Hash)>,
    buf: &mut Vec<u8>,
) -> Result<bool, LogError> {
    let tenant_hash = |fields: &LeafFields<'_>, at: i64, buf: &mut Vec<u8>| {
        LeafFields { seq: at + 1, ..*fields }.encode_as(crate::tenant::TENANT_LEAF, buf);
        merkle::leaf_hash(buf)
    };
    // Only a read that hashed to its leaf says whose the record is.
    let parsed = parse_fields(record).ok().filter(|p| matches!(check_parsed(p, buf), Ok((_, _, None, false))));
    let (owner, hash) = match parsed {
        Some((_, _, _, Some(fields))) => {
            (fields.tenant_id.map(str::to_owned), row.map(|(at, _)| tenant_hash(&fields, *at, buf)))
        }
        // A record the fast path cannot read: the slow way.
        _ => match slow_row(db, index).await? {
            Some(r) => (r.tenant_id.clone(), row.map(|(at, _)| crate::tenant::tenant_leaf_hash(&r, at + 1))),
            None => return Ok(false),
        },
    };
    Ok(match row {
        Some((_, stored)) => owner.as_deref() == Some(tenant) && hash.as_ref() == Some(stored),
        None => owner.as_deref() != Some(tenant),
    })
}

/// Slow path for one leaf: the database encodes the record as JSON.
async fn slow_check(db: &Db, index: u64) -> Result<Result<Checked, String>, LogError> {
    let i = index as i64;
    // A value the database cannot even encode (a BLOB, bytes that are not
    // UTF-8) is a record that was altered, not a reason to stop.
    let chunk = match palisade_store::audit::leaf_chunk(db, i, i + 1).await {
        Ok(chunk) => chunk,
        Err(e) => {
            tracing::warn!(leaf = index, error = %e, "audit record unreadable");
            return Ok(Err(format!("leaf {index}: its record is unreadable, so it was altered")));
        }
    };
    let Some(leaf) = chunk.lines().next().and_then(parse_line) else {
        return Ok(Err(format!("leaf {index} is unreadable")));
    };
    Ok(Ok((leaf.index, leaf.hash, check_record(&leaf).err(), leaf.record.is_none())))
}

fn parse_line(line: &str) -> Option<Leaf<'_>> {
    let mut parts = line.splitn(4, ' ');
    let index = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    let hash = merkle::decode_hash(parts.next()?)?;
    let record = parts.next()?;
    Some(Leaf { index, seq, hash, record: (record != "-").then_some(record) })
}

/// The record must hash to its leaf. Fast path: the database's own JSON
/// encoding is usually byte-identical to the leaf encoding (SHA-256 makes a
/// match conclusive). Otherwise decode the fields and encode them exactly
/// as the integrator did.
fn check_record(leaf: &Leaf<'_>) -> Result<(), String> {
    let Some(record) = leaf.record else {
        return Err(format!("record seq {} (leaf {}) was deleted", leaf.seq, leaf.index));
    };
    if merkle::leaf_hash(record.as_bytes()) == leaf.hash {
        return Ok(());
    }
    let altered = |id: &str| format!("record seq {} (id {id}, leaf {}) was altered", leaf.seq, leaf.index);
    let row = decode_record(record).ok_or_else(|| altered("?"))?;
    if leaf_hash_of(&row) == leaf.hash {
        Ok(())
    } else {
        Err(altered(&row.id))
    }
}

fn decode_record(record: &str) -> Option<AuditRow> {
    let v: Vec<serde_json::Value> = serde_json::from_str(record).ok()?;
    if v.len() != 14 {
        return None;
    }
    let s = |i: usize| v[i].as_str().map(str::to_owned);
    let opt = |i: usize| if v[i].is_null() { Some(None) } else { v[i].as_str().map(|x| Some(x.to_owned())) };
    Some(AuditRow {
        seq: v[1].as_i64()?,
        id: s(2)?,
        ts: v[3].as_i64()?,
        tenant_id: opt(4)?,
        actor_type: s(5)?,
        actor_id: opt(6)?,
        action: s(7)?,
        resource_type: opt(8)?,
        resource_id: opt(9)?,
        source_ip: opt(10)?,
        user_agent: opt(11)?,
        request_id: opt(12)?,
        details: s(13)?,
    })
}
/// A record as the hashing stage left it.
struct Pre {
    /// Its bytes in the chunk.
    start: usize,
    end: usize,
    /// Leaf index and hash, when the record is present and re-hashes to
    /// its leaf (the fast path's verdict, taken ahead of the scan).
    good: Option<(u64, Hash)>,
    /// Its tenant leaf, when good, a tenant's and placed.
    tenant: Option<TenantPre>,
}

struct TenantPre {
    /// The tenant id's bytes in the chunk.
    start: usize,
    end: usize,
    /// The tenant's records the stage counted up to this one.
    counted: i64,
    /// The tenant leaf number it was hashed as, and its hash.
    seq: i64,
    hash: Hash,
}

/// A chunk with its records checked ahead; `pres` is `None` when the
/// chunk's framing is broken.
struct Staged {
    from: i64,
    chunk: String,
    pres: Option<Vec<Pre>>,
}

/// From the scan back to the stage.
enum Back {
    /// A record list to reuse.
    Pres(Vec<Pre>),
    /// A tenant's leaves the stage did not count (the careful path pushed
    /// them), as of some leaf: the tenant's next number minus the stage's
    /// count. Grows along the log, so the largest reported is the one.
    Missed(String, i64),
}

/// Per tenant: records counted, leaves missed.
type Counts = std::collections::HashMap<String, (i64, i64)>;

/// The records' ranges in a [`split_records`] chunk; `false` if its
/// framing is broken (then `out` holds nothing to use).
fn record_ranges(chunk: &str, out: &mut Vec<Pre>) -> bool {
    out.clear();
    let mut at = 0;
    while at < chunk.len() {
        let Some(colon) = memchr::memchr(b':', &chunk.as_bytes()[at..]) else { return false };
        let Ok(len) = chunk[at..at + colon].parse::<usize>() else { return false };
        let start = at + colon + 1;
        let Some(end) = start.checked_add(len).filter(|&e| chunk.get(start..e).is_some()) else { return false };
        out.push(Pre { start, end, good: None, tenant: None });
        at = end;
    }
    true
}

/// The per-record work that needs no state but a count per tenant, done
/// ahead of the scan on a thread of its own: parse, re-encode and hash
/// each record, and its tenant leaf as the tenant's next one by the
/// stage's count (the scan checks that number). The rest of the record
/// is encoded once for both leaves.
fn stage_chunk(
    chunk: &str,
    placed: u64,
    counts: &mut Counts,
    out: &mut Vec<Pre>,
    bufs: &mut (Vec<u8>, Vec<u8>),
) -> bool {
    if !record_ranges(chunk, out) {
        return false;
    }
    let (head, rest) = bufs;
    for pre in out.iter_mut() {
        let record = &chunk[pre.start..pre.end];
        let Ok((index, _, hash, Some(fields))) = parse_fields(record) else { continue };
        rest.clear();
        fields.encode_rest(rest);
        crate::log::encode_head(crate::log::LEAF, fields.seq, head);
        if merkle::leaf_hash_parts(head, rest) != hash {
            continue;
        }
        pre.good = Some((index, hash));
        let Some(tenant) = fields.tenant_id.filter(|_| index < placed) else { continue };
        let c = match counts.get_mut(tenant) {
            Some(c) => c,
            None => counts.entry(tenant.to_owned()).or_default(),
        };
        c.0 += 1;
        let seq = c.0 + c.1;
        crate::log::encode_head(crate::tenant::TENANT_LEAF, seq, head);
        let start = tenant.as_ptr() as usize - chunk.as_ptr() as usize;
        pre.tenant = Some(TenantPre {
            start,
            end: start + tenant.len(),
            counted: c.0,
            seq,
            hash: merkle::leaf_hash_parts(head, rest),
        });
    }
    true
}

/// Runs [`stage_chunk`] over the chunks as they come, one ahead of the scan.
fn stage(
    mut chunks: tokio::sync::mpsc::Receiver<palisade_store::Result<(i64, String)>>,
    placed: u64,
) -> (tokio::sync::mpsc::Receiver<palisade_store::Result<Staged>>, std::sync::mpsc::Sender<Back>) {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (back_tx, back) = std::sync::mpsc::channel();
    tokio::task::spawn_blocking(move || {
        let mut counts = Counts::new();
        // Every list given back is kept: a few are in flight at once.
        let mut spare: Vec<Vec<Pre>> = Vec::new();
        let mut bufs = (Vec::with_capacity(64), Vec::with_capacity(1024));
        while let Some(next) = chunks.blocking_recv() {
            for b in back.try_iter() {
                match b {
                    Back::Pres(v) => spare.push(v),
                    Back::Missed(tenant, n) => {
                        let c = counts.entry(tenant).or_default();
                        c.1 = c.1.max(n);
                    }
                }
            }
            let staged = next.map(|(from, chunk)| {
                let mut pres = spare.pop().unwrap_or_default();
                let ok = stage_chunk(&chunk, placed, &mut counts, &mut pres, &mut bufs);
                Staged { from, chunk, pres: ok.then_some(pres) }
            });
            if tx.blocking_send(staged).is_err() {
                break;
            }
        }
    });
    (rx, back_tx)
}

use crate::merkle::{self, Frontier, Hash};

#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    /// Events written but not yet integrated: not in `records`, covered by
    /// no checkpoint, and so not vouched for by this verification.
    pub pending: u64,
    /// What is wrong, the first bad record first. Empty when intact.
    pub problems: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads the JSON-lines file. `None` when the file does not exist; a line
/// that is not a signed note is returned as a note with an empty signature,
/// so it is reported rather than skipped.
pub fn read_checkpoint_file(path: &Path) -> std::io::Result<Option<Vec<Checkpoint>>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| {
                    serde_json::from_str(l).unwrap_or(Checkpoint {
                        body: String::new(),
                        signature: String::new(),
                        key_id: String::new(),
                    })
                })
                .collect(),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes every signed checkpoint and retention statement in the database
/// whose signature verifies, in order, to `path` (created 0600, replaced if
/// it exists) as JSON lines: a witness copy of the whole cluster's chain,
/// for `palisade audit verify --witness`. Returns (notes written, notes
/// skipped because they do not verify).
pub async fn export_checkpoints(db: &Db, verifier: &Verifier, path: &Path) -> Result<(usize, usize), LogError> {
    let mut notes: Vec<(u64, Checkpoint)> = Vec::new();
    let mut skipped = 0;
    for r in palisade_store::audit::all_checkpoints(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        match verifier.verify(&cp) {
            Some(h) if h.tree_size as i64 == r.tree_size => notes.push((h.tree_size, cp)),
            _ => skipped += 1,
        }
    }
    for r in palisade_store::audit::all_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        match verifier.verify_expiry(&cp) {
            Some((up_to, _)) => notes.push((up_to, cp)),
            None => skipped += 1,
        }
    }
    for (_, r) in palisade_store::audit::all_tenant_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        match verifier.verify_tenant_expiry(&cp) {
            Some(e) => notes.push((e.up_to_leaf, cp)),
            None => skipped += 1,
        }
    }
    // Stable: a statement follows the checkpoint of the same size.
    notes.sort_by_key(|(size, _)| *size);
    let text: String = notes.iter().map(|(_, cp)| serde_json::to_string(cp).unwrap_or_default() + "\n").collect();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(|e| LogError::File(std::io::Error::other(e)))??;
    Ok((notes.len(), skipped))
}

/// How [`verify_log`] paces its scan: leaves read per chunk, and leaves
/// between two calls of its progress callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    pub(crate) chunk: i64,
    pub(crate) progress_every: u64,
}

const PACE: Pace = Pace { chunk: CHUNK, progress_every: 100_000 };

/// Verifies the whole log: the records in the database against the signed
/// checkpoints in the database and in each witness file given (a file that
/// does not exist is reported, unless the log is empty). `progress` gets
/// the number of leaves checked every 100 000 leaves, and at the end.
pub async fn verify_log(
    db: &Db,
    verifier: &Verifier,
    witness_files: &[&Path],
    progress: impl FnMut(u64),
) -> Result<Report, LogError> {
    verify_log_paced(db, verifier, witness_files, progress, PACE).await
}

/// [`verify_log`] at another pace (the unit tests read a few leaves per
/// chunk, so a small log spans several).
pub(crate) async fn verify_log_paced(
    db: &Db,
    verifier: &Verifier,
    witness_files: &[&Path],
    mut progress: impl FnMut(u64),
    pace: Pace,
) -> Result<Report, LogError> {
    let mut report = Report::default();

    // Signed statements, from every place. A checkpoint that does not
    // verify is itself evidence of tampering.
    let mut all: Vec<(String, Checkpoint)> = palisade_store::audit::all_checkpoints(db.reader())
        .await?
        .into_iter()
        .map(|r| ("database".to_owned(), Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id }))
        .collect();
    let db_has_log = !all.is_empty() || palisade_store::audit::max_leaf_index(db.reader()).await?.is_some();
    for path in witness_files {
        match read_checkpoint_file(path)? {
            Some(notes) => all.extend(notes.into_iter().map(|c| ("checkpoint file".to_owned(), c))),
            // Without the file, only the database vouches for itself.
            None if db_has_log => {
                report.problems.push(format!(
                    "the checkpoint file {} is missing: the log cannot be checked against it",
                    path.display()
                ));
            }
            None => {}
        }
    }
    // Each table holds its own kind of statement, and a row's columns (what
    // the database's guard reads) say no more than its signed body. Read
    // before the tenant trees' placed size below: every statement was
    // signed within the size placed then, and that size only grows.
    let mut all_expiries: Vec<(String, Checkpoint)> = Vec::new();
    for r in palisade_store::audit::all_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        if verifier.verify_tenant_expiry(&cp).is_some()
            || verifier.verify_expiry(&cp).is_some_and(|(up_to, _)| up_to as i64 != r.up_to_leaf)
        {
            report.problems.push(format!("a retention statement row claims leaf {} its body does not", r.up_to_leaf));
            continue;
        }
        all_expiries.push(("database".to_owned(), cp));
    }
    for (tenant, r) in palisade_store::audit::all_tenant_expiries(db.reader()).await? {
        let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
        if verifier.verify_tenant_expiry(&cp).is_none_or(|e| e.up_to_leaf as i64 != r.up_to_leaf || e.tenant != tenant)
        {
            report.problems.push(format!("a retention statement row of tenant {tenant} claims what its body does not"));
            continue;
        }
        all_expiries.push(("database".to_owned(), cp));
    }
    // The leaves are read after the checkpoints of the database and the
    // files, never before: a log growing meanwhile then shows leaves past
    // its newest checkpoint read, never a checkpoint past its last leaf
    // (which is what a truncated log shows). The reader starts now, so the
    // first chunks arrive while the signatures below are checked.
    let last = palisade_store::audit::max_leaf_index(db.reader()).await?.unwrap_or(-1);
    let (chunks, spent) = palisade_store::audit_copy::leaf_chunks(db, last, pace.chunk);
    // The hashing stage starts at once too: loading the tenants'
    // checkpoints below takes a while on a large log.
    let placed = u64::try_from(palisade_store::audit::tenant_size(db.reader()).await?).unwrap_or(0);
    let (mut chunks, back) = stage(chunks, placed);
    all_expiries.extend(all.iter().filter(|(_, c)| c.is_expiry()).cloned());
    all.retain(|(_, c)| !c.is_expiry());
    // The signatures are checked on a thread of their own while the tenant
    // checkpoints are read (both take a while with many batches).
    let checked = {
        let verifier = verifier.clone();
        tokio::task::spawn_blocking(move || {
            let mut problems = Vec::new();
            let mut signed: BTreeMap<u64, Hash> = BTreeMap::new();
            // Records below this leaf may be gone: a signed retention statement says so.
            let mut expired_below = 0u64;
            // A tenant's own statements: its records below the leaf may be
            // gone, and its tree's first leaves must have the signed root.
            let mut tenant_expired: HashMap<String, u64> = HashMap::new();
            let mut tenant_roots: Vec<crate::checkpoint::TenantExpiry> = Vec::new();
            for (source, st) in &all_expiries {
                if let Some((up_to, _)) = verifier.verify_expiry(st) {
                    expired_below = expired_below.max(up_to);
                } else if let Some(e) = verifier.verify_tenant_expiry(st) {
                    let below = tenant_expired.entry(e.tenant.clone()).or_default();
                    *below = (*below).max(e.up_to_leaf);
                    tenant_roots.push(e);
                } else {
                    problems.push(format!("a retention statement in the {source} has an invalid signature or format"));
                }
            }
            // The database and the file hold the same notes: check each once
            // (signature checks dominate verification of a log with many batches).
            let mut seen = std::collections::HashSet::new();
            for (source, cp) in &all {
                if !seen.insert((cp.body.as_str(), cp.signature.as_str(), cp.key_id.as_str())) {
                    continue;
                }
                match verifier.verify(cp) {
                    Some(head) => {
                        if let Some(prev) = signed.insert(head.tree_size, head.root) {
                            if prev != head.root {
                                problems.push(format!(
                                    "two signed checkpoints disagree about the tree at size {}",
                                    head.tree_size
                                ));
                            }
                        }
                    }
                    None => problems.push(format!("a checkpoint in the {source} has an invalid signature or format")),
                }
            }
            (expired_below, tenant_expired, tenant_roots, signed, problems)
        })
    };

    // The tenant trees are rebuilt alongside, from the same records.
    let tenant_checkpoints = palisade_store::audit::all_tenant_checkpoints(db.reader()).await?;
    let (expired_below, tenant_expired, tenant_roots, signed, problems) =
        checked.await.map_err(|e| LogError::File(std::io::Error::other(e)))?;
    report.problems.extend(problems);
    let mut tenants = crate::tenant::Rebuild::new(tenant_checkpoints, verifier);
    // A tenant statement's root is a signed checkpoint of the tenant's tree:
    // a record of anyone else counted as the tenant's (to excuse its
    // removal) changes the tree it vouches for.
    for e in &tenant_roots {
        tenants.trust(&e.tenant, e.tree.size, e.tree.root);
    }
    // The stored tenant leaves of the chunk being read, once one of its
    // records turns out expired.
    let mut expired_entries: Option<(i64, TenantEntries)> = None;

    // Rebuild the tree from the records themselves, a chunk at a time.
    let mut frontier = Frontier::default();
    let mut last_good_size = 0u64;
    let mut buf = Vec::with_capacity(1024);
    // The check for records outside the log reads both tables whole: run
    // beside the scan, the database does it while the records are checked.
    let strays = palisade_store::audit::unlogged_events_serial(db, 10);
    let mut upcoming = signed.iter().peekable();
    // Where each tenant statement cuts the log, the tenant's tree must hold
    // exactly its signed number of leaves: a record of anyone else counted
    // as the tenant's (to excuse its removal) makes one too many.
    let mut cuts: Vec<(u64, String, crate::checkpoint::TenantCut)> =
        tenant_roots.iter().map(|e| (e.up_to_leaf, e.tenant.clone(), e.tree)).collect();
    cuts.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut cuts = cuts.into_iter().peekable();
    let scan = async {
        'scan: while let Some(next) = chunks.recv().await {
            let Staged { from, chunk, pres } = next?;
            let Some(pres) = pres else {
                report.problems.push(format!("leaves from {from} are unreadable"));
                break 'scan;
            };
            for pre in &pres {
                let record = &chunk[pre.start..pre.end];
                let index = frontier.size();
                while let Some((at, tenant, cut)) = cuts.next_if(|c| c.0 <= index) {
                    if let Some(problem) = tenants.cut(&tenant, at, &cut) {
                        report.problems.push(problem);
                        break 'scan;
                    }
                }
                tenants.at(index);
                let hash = if let Some((i, hash)) = pre.good.filter(|(i, _)| *i == index) {
                    // Checked ahead: the record is present and hashes to
                    // its leaf. Its tenant leaf counts only if hashed with
                    // the tenant's next number.
                    if let Some(t) = pre.tenant.as_ref().filter(|_| i < placed) {
                        let tenant = &chunk[t.start..t.end];
                        if let Err(next) = tenants.push_hashed(tenant, t.seq, t.hash) {
                            match parse_fields(record) {
                                Ok((_, _, _, Some(fields))) => tenants.push(&fields),
                                _ => report.problems.push(format!("leaf {index}: its record is unreadable")),
                            }
                            let _ = back.send(Back::Missed(tenant.to_owned(), next - t.counted));
                        }
                    }
                    hash
                } else {
                    // Parsed once: the tenant leaf below reuses the fields.
                    let parsed = parse_fields(record).ok();
                    let fast = parsed.as_ref().map(|p| check_parsed(p, &mut buf));
                    // The fields read are believed only if they hashed to the leaf.
                    let parsed = parsed.filter(|_| matches!(fast, Some(Ok(_))));
                    let checked = match fast {
                        Some(Ok(checked)) => Ok(checked),
                        // Not the expected shape, or not matching: the slow way decides.
                        _ => slow_check(db, index).await?,
                    };
                    let leaf = match checked {
                        Ok(l) => l,
                        Err(problem) => {
                            report.problems.push(problem);
                            break 'scan;
                        }
                    };
                    if leaf.0 != index {
                        report.problems.push(format!(
                            "leaf {index} is missing: records were deleted from the tree (next present is leaf {})",
                            leaf.0
                        ));
                        break 'scan;
                    }
                    if let Some(problem) = leaf.2 {
                        // A record that is gone: its tenant leaf as stored,
                        // if the leaf is placed in the tenants' trees.
                        let entry = if leaf.3 && index < placed {
                            if expired_entries.as_ref().is_none_or(|(f, _)| *f != from) {
                                let entries =
                                    palisade_store::audit::tenant_tree_entries(db.reader(), from, from + pace.chunk)
                                        .await?;
                                expired_entries = Some((from, entries));
                            }
                            expired_entries.as_ref().and_then(|(_, e)| e.get(&(index as i64)))
                        } else {
                            None
                        };
                        // Gone by the platform's statement, or by its own
                        // tenant's (a stored tenant naming another tenant
                        // puts the leaf in that tenant's tree, whose signed
                        // roots then fail).
                        let by_tenant =
                            entry.is_some_and(|(t, _)| tenant_expired.get(t).is_some_and(|below| index < *below));
                        let expired = leaf.3 && (index < expired_below || by_tenant);
                        if !expired {
                            report.problems.push(problem);
                            break 'scan;
                        }
                        // The tenant's signed roots still vouch for its leaf.
                        if let Some((tenant, h)) = entry {
                            match merkle::decode_hash(h) {
                                Some(h) => tenants.push_hash(tenant, h),
                                None => tenants.fail(tenant, format!("tenant leaf of leaf {index} is unreadable")),
                            }
                        }
                    } else if index < placed {
                        match &parsed {
                            Some((_, _, _, Some(fields))) => tenants.push(fields),
                            _ => match slow_row(db, index).await? {
                                Some(row) => tenants.push(&LeafFields::of(&row)),
                                None => report.problems.push(format!("leaf {index}: its record is unreadable")),
                            },
                        }
                    }
                    leaf.1
                };
                frontier.push(hash, |_, _, _| {});
                let size = frontier.size();
                // The tree grows by one: the next signed size is the only
                // one it can reach.
                while upcoming.next_if(|(s, _)| **s < size).is_some() {}
                if let Some((_, root)) = upcoming.next_if(|(s, _)| **s == size) {
                    if *root != frontier.root() {
                        report.problems.push(format!(
                            "the tree at size {size} does not match its signed checkpoint: records among leaves \
                         {last_good_size}..{} were altered, reordered or replaced",
                            size - 1
                        ));
                        break 'scan;
                    }
                    last_good_size = size;
                }
                if size % pace.progress_every == 0 {
                    progress(size);
                }
            }
            let _ = back.send(Back::Pres(pres));
            let _ = spent.send(chunk);
        }
        Ok::<(), LogError>(())
    };
    let (scanned, strays) = tokio::join!(scan, strays);
    scanned?;
    let strays = strays?;
    if report.problems.is_empty() {
        // Cuts at the log's end (one past it means a truncated log, which
        // its signed checkpoints show).
        for (at, tenant, cut) in cuts {
            if let Some(problem) = tenants.cut(&tenant, at, &cut) {
                report.problems.push(problem);
                break;
            }
        }
    }
    report.records = frontier.size();
    report.checkpoints = signed.len() as u64;
    report.pending = u64::try_from(palisade_store::audit::pending_count(db.reader()).await?).unwrap_or(0);
    progress(report.records);

    if report.problems.is_empty() {
        let max = signed.keys().next_back().copied().unwrap_or(0);
        if max > report.records {
            report.problems.push(format!(
                "the log was truncated: a signed checkpoint covers {max} records but only {} remain (first missing: leaf {})",
                report.records, report.records
            ));
        } else if report.records > max {
            // The integrator signs every batch in the transaction that adds
            // it, so a leaf no checkpoint covers was added behind its back.
            report.problems.push(format!(
                "leaves {max}..{} are not covered by any signed checkpoint: they were added behind the log's back",
                report.records - 1
            ));
        }
        if u64::try_from(last).is_ok_and(|last| last >= report.records) {
            // A leaf the scan never reached: placed beyond the log's end.
            report.problems.push(format!(
                "leaf {last} lies beyond the log's {} leaves: it was added behind the log's back",
                report.records
            ));
        }
        if let Some(seq) = strays.first() {
            report
                .problems
                .push(format!("record seq {seq} is not part of the log: it was inserted behind the log's back"));
        }
    }
    // The tenant trees, once the log itself holds up (a problem of the log
    // shows in its tenants' trees too; it is named once, as the log's).
    if report.problems.is_empty() {
        report.problems.extend(tenants.finish());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use palisade_store::audit::FIELD_SEP;

    use super::*;

    fn row() -> AuditRow {
        AuditRow {
            seq: 5,
            id: "e5".into(),
            ts: 1_700_000_000_000,
            tenant_id: Some("t1".into()),
            actor_type: "user".into(),
            actor_id: None,
            action: "key.created".into(),
            resource_type: Some("api_key".into()),
            resource_id: Some("".into()),
            source_ip: Some("192.0.2.1".into()),
            user_agent: None,
            request_id: Some("r1".into()),
            details: r#"{"a":"b"}"#.into(),
        }
    }

    /// A record as `leaf_fields_chunk` frames it.
    fn fields_record(index: u64, r: &AuditRow, hash: &Hash) -> String {
        let tag = |v: &Option<String>| v.as_ref().map_or("0".to_owned(), |s| format!("1{s}"));
        [
            index.to_string(),
            r.seq.to_string(),
            hex::encode(hash),
            r.seq.to_string(),
            r.id.clone(),
            r.ts.to_string(),
            tag(&r.tenant_id),
            r.actor_type.clone(),
            tag(&r.actor_id),
            r.action.clone(),
            tag(&r.resource_type),
            tag(&r.resource_id),
            tag(&r.source_ip),
            tag(&r.user_agent),
            tag(&r.request_id),
            r.details.clone(),
        ]
        .join(&FIELD_SEP.to_string())
    }

    #[test]
    fn nullable_columns_are_tagged() {
        assert_eq!(nullable("0"), Ok(None));
        assert_eq!(nullable("1"), Ok(Some("")));
        assert_eq!(nullable("10"), Ok(Some("0")));
        for bad in ["", "00", "01", "2x", "x"] {
            assert_eq!(nullable(bad), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn the_fast_path_rehashes_the_fields() {
        let r = row();
        let h = leaf_hash_of(&r);
        let mut buf = Vec::new();
        assert_eq!(check_fields(&fields_record(7, &r, &h), &mut buf), Ok((7, h, None, false)));
        let sep = FIELD_SEP.to_string();
        let deleted = ["7", "5", &hex::encode(h), "-"].join(&sep);
        let problem = Some("record seq 5 (leaf 7) was deleted".to_owned());
        assert_eq!(check_fields(&deleted, &mut buf), Ok((7, h, problem, true)));
        // Anything else goes to the slow path: an edit, a NULL turned into
        // an empty value, a field too many or too few, a malformed number.
        let edited = AuditRow { details: r#"{"a":"c"}"#.into(), ..row() };
        let emptied = AuditRow { user_agent: Some(String::new()), ..row() };
        let full = fields_record(7, &r, &h);
        for bad in [
            fields_record(7, &edited, &h),
            fields_record(7, &emptied, &h),
            format!("{full}{sep}x"),
            full.rsplit_once(FIELD_SEP).unwrap().0.to_owned(),
            ["7", "5", &hex::encode(h), "5"].join(&sep),
            full.replacen('7', "x", 1),
        ] {
            assert_eq!(check_fields(&bad, &mut buf), Err(()), "{bad:?}");
        }
    }

    fn framed(records: &[String]) -> String {
        records.iter().map(|r| format!("{}:{r}", r.len())).collect()
    }

    /// The stage's verdicts and hashes are the fast path's and
    /// `tenant_leaf_hash`'s: each tenant's leaves numbered by its own
    /// count plus what the scan reported missed, records past the placed
    /// ones or without a tenant given no tenant leaf, and anything the
    /// fast path refuses left to the scan.
    #[test]
    fn the_stage_hashes_records_and_tenant_leaves_like_the_reference() {
        let a = |seq: i64| AuditRow { seq, id: format!("e{seq}"), tenant_id: Some("a".into()), ..row() };
        let b = |seq: i64| AuditRow { seq, id: format!("e{seq}"), tenant_id: Some("b\"\u{1}".into()), ..row() };
        let none = AuditRow { tenant_id: None, ..row() };
        let edited = AuditRow { details: "{}".into(), ..a(14) };
        let rows = [a(10), b(11), none, a(13), edited.clone(), b(15), a(16), a(17)];
        let mut records: Vec<String> =
            rows.iter().enumerate().map(|(i, r)| fields_record(i as u64, r, &leaf_hash_of(r))).collect();
        // Leaf 4's record was edited after hashing.
        records[4] = fields_record(4, &edited, &leaf_hash_of(&a(14)));
        let sep = FIELD_SEP.to_string();
        records.push(["8", "18", &hex::encode([7u8; 32]), "-"].join(&sep));
        let chunk = framed(&records);
        let mut counts = Counts::new();
        // The scan reported one leaf of `b` it pushed itself.
        counts.insert("b\"\u{1}".into(), (0, 1));
        let (mut out, mut bufs) = (Vec::new(), (Vec::new(), Vec::new()));
        // Leaves from 7 on are not placed in the tenant trees yet.
        assert!(stage_chunk(&chunk, 7, &mut counts, &mut out, &mut bufs));
        assert_eq!(out.len(), 9);
        let expected = [(0, Some(1)), (1, Some(2)), (2, None), (3, Some(2)), (5, Some(3)), (6, Some(3)), (7, None)];
        for (i, tenant_seq) in expected {
            let (pre, r) = (&out[i], &rows[i]);
            assert_eq!(&chunk[pre.start..pre.end], records[i], "{i}");
            assert_eq!(pre.good, Some((i as u64, leaf_hash_of(r))), "{i}");
            let t = pre.tenant.as_ref().map(|t| (&chunk[t.start..t.end], t.seq, t.hash));
            let reference =
                tenant_seq.map(|n| (r.tenant_id.as_deref().unwrap(), n, crate::tenant::tenant_leaf_hash(r, n)));
            assert_eq!(t, reference, "{i}");
        }
        for i in [4, 8] {
            assert!(out[i].good.is_none() && out[i].tenant.is_none(), "{i}");
        }
        assert_eq!(out[5].tenant.as_ref().map(|t| t.counted), Some(2));
        assert_eq!(counts["a"], (3, 0));
        // Broken framing: nothing to use.
        for bad in [format!("{chunk}x"), format!("{chunk}9:ab"), "x:1".to_owned()] {
            assert!(!stage_chunk(&bad, 7, &mut Counts::new(), &mut out, &mut bufs), "{bad:?}");
        }
        assert!(stage_chunk("", 7, &mut Counts::new(), &mut out, &mut bufs) && out.is_empty());
    }

    #[test]
    fn the_slow_path_decodes_the_record() {
        let r = row();
        let h = leaf_hash_of(&r);
        let exact = String::from_utf8(crate::log::leaf_data(&r)).unwrap();
        // PostgreSQL writes its JSON with spaces: other bytes, the same fields.
        let spaced = exact.replace(',', ", ");
        for record in [&exact, &spaced] {
            let line = format!("7 5 {} {record}", hex::encode(h));
            let leaf = parse_line(&line).unwrap();
            assert_eq!((leaf.index, leaf.seq, leaf.hash, leaf.record), (7, 5, h, Some(record.as_str())));
            assert_eq!(check_record(&leaf), Ok(()));
        }
        let check = |record: &str| check_record(&parse_line(&format!("7 5 {} {record}", hex::encode(h))).unwrap());
        let altered = exact.replace("key.created", "key.deleted");
        assert_eq!(check(&altered), Err("record seq 5 (id e5, leaf 7) was altered".into()));
        assert_eq!(check(r#"["short"]"#), Err("record seq 5 (id ?, leaf 7) was altered".into()));
        assert_eq!(check("-"), Err("record seq 5 (leaf 7) was deleted".into()));
        let gone = format!("7 5 {} -", hex::encode(h));
        assert_eq!(parse_line(&gone).unwrap().record, None);
        assert!(parse_line("7 5 nothex -").is_none());
        assert!(decode_record(&exact[..exact.len() - 1]).is_none());
    }

    #[test]
    fn reports_and_checkpoint_files() {
        let mut report = Report::default();
        assert!(report.intact());
        report.problems.push("x".into());
        assert!(!report.intact());

        let dir = std::env::temp_dir().join(format!("palisade-audit-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("checkpoints.jsonl");
        assert!(read_checkpoint_file(&path).unwrap().is_none());
        let cp = Checkpoint { body: "b\n".into(), signature: "s".into(), key_id: "k".into() };
        let line = serde_json::to_string(&cp).unwrap();
        std::fs::write(&path, format!("{line}\n\n  \nnot json\n{line}\n")).unwrap();
        let read = read_checkpoint_file(&path).unwrap().unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!((&read[0], &read[2]), (&cp, &cp));
        assert_eq!((read[1].body.as_str(), read[1].signature.as_str()), ("", ""));
        // Not a file: an error, not "no checkpoints".
        assert!(read_checkpoint_file(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
