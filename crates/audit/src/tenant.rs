//! Tenant trees: each tenant's events as a Merkle tree of its own, in the
//! log's order, so a tenant's sequence numbers, proofs and tree sizes count
//! its own events only. A tenant leaf is the event's record with the
//! tenant's sequence number in place of the platform's (see docs/audit.md).

use std::collections::{BTreeMap, HashMap};

use palisade_store::audit::{AuditRow, TenantCheckpointRow};

use crate::checkpoint::{Checkpoint, Signer, Verifier};
use crate::log::{LeafFields, LogError};
use crate::merkle::{self, Frontier, Hash};

/// The first value of a tenant leaf's array.
pub const TENANT_LEAF: &str = "palisade-audit-tenant-leaf/v1";

/// The bytes a tenant leaf commits to: the record with `tenant_seq`.
pub fn tenant_leaf_data(r: &AuditRow, tenant_seq: i64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    LeafFields { seq: tenant_seq, ..LeafFields::of(r) }.encode_as(TENANT_LEAF, &mut buf);
    buf
}

pub fn tenant_leaf_hash(r: &AuditRow, tenant_seq: i64) -> Hash {
    merkle::leaf_hash(&tenant_leaf_data(r, tenant_seq))
}

/// One integration step's growth of the tenant trees.
#[derive(Default)]
pub(crate) struct TenantTrees {
    /// Frontier per tenant, and whether this step grew it.
    trees: BTreeMap<String, (Frontier, bool)>,
    leaves: Vec<(String, i64, i64, String)>,
    nodes: Vec<(String, i64, i64, String)>,
    buf: Vec<u8>,
}

impl TenantTrees {
    /// Starts from the stored heads `(tenant, size, frontier)`.
    pub(crate) fn new(heads: Vec<(String, i64, String)>) -> Result<Self, LogError> {
        let mut trees = BTreeMap::new();
        for (tenant, size, frontier) in heads {
            let size = u64::try_from(size).map_err(|_| LogError::CorruptHead)?;
            let f = Frontier::decode(size, &frontier).ok_or(LogError::CorruptHead)?;
            trees.insert(tenant, (f, false));
        }
        Ok(Self { trees, ..Self::default() })
    }

    /// Adds the event at `leaf_index` of the log to its tenant's tree.
    pub(crate) fn push(&mut self, leaf_index: i64, row: &AuditRow) {
        let Some(tenant) = row.tenant_id.as_deref() else { return };
        let (f, grown) = self.trees.entry(tenant.to_owned()).or_default();
        *grown = true;
        let index = f.size() as i64;
        LeafFields { seq: index + 1, ..LeafFields::of(row) }.encode_as(TENANT_LEAF, &mut self.buf);
        let h = merkle::leaf_hash(&self.buf);
        let nodes = &mut self.nodes;
        f.push(h, |level, idx, node| {
            nodes.push((tenant.to_owned(), i64::from(level), idx as i64, hex::encode(node)));
        });
        self.leaves.push((tenant.to_owned(), index, leaf_index, hex::encode(h)));
    }

    /// The statements that store this step, one signed checkpoint per
    /// tree it grew.
    pub(crate) fn finish(self, signer: &Signer, now_ms: i64) -> Vec<palisade_store::Stmt> {
        let mut heads = Vec::new();
        let mut checkpoints = Vec::new();
        for (tenant, (f, grown)) in self.trees {
            if !grown {
                continue;
            }
            let root = f.root();
            let cp = signer.sign_tenant(&tenant, f.size(), &root, now_ms);
            heads.push((tenant.clone(), f.size() as i64, f.encode()));
            checkpoints.push(TenantCheckpointRow {
                tenant_id: tenant,
                tree_size: f.size() as i64,
                root_hash: hex::encode(root),
                ts: now_ms,
                body: cp.body,
                signature: cp.signature,
                key_id: cp.key_id,
            });
        }
        palisade_store::audit::tenant_stmts(&self.leaves, &self.nodes, &heads, &checkpoints)
    }
}

/// The distinct tenants of these rows.
pub(crate) fn tenants_of<'a>(rows: impl Iterator<Item = &'a AuditRow>) -> Vec<String> {
    let mut out: Vec<String> = rows.filter_map(|r| r.tenant_id.clone()).collect();
    out.sort();
    out.dedup();
    out
}

/// A map by tenant id. Full verification looks one up per record; the ids
/// are the platform's own, so a fast hash (seeded per process) is enough.
pub(crate) type Tenants<V> = HashMap<String, V, foldhash::fast::RandomState>;

/// Full verification of the tenant trees: rebuilt from the log's records in
/// the log's order and checked against the signed tenant checkpoints. Every
/// stored root must match the rebuilt tree; the newest checkpoint of each
/// tenant must carry a valid signature (checking all of them would cost
/// more than the rest of verification: the log's own checkpoints, all
/// signature-checked, already vouch for every record).
pub(crate) struct Rebuild {
    trees: Tenants<Rebuilt>,
    buf: Vec<u8>,
    problems: Vec<String>,
    /// The leaf of the log being pushed (`at`).
    at: u64,
}

#[derive(Default)]
struct Rebuilt {
    f: Frontier,
    roots: BTreeMap<u64, Hash>,
    broken: bool,
    /// The smallest size in `roots` not below the tree's (`u64::MAX`:
    /// none), found again only once the tree passes it: one lookup per
    /// checkpoint rather than per leaf.
    next_root: u64,
    /// For a tenant with retention statements: the SHA-256 of its leaves'
    /// places in the log so far.
    places: Option<sha2::Sha256>,
}

impl Rebuild {
    pub(crate) fn new(rows: Vec<TenantCheckpointRow>, verifier: &Verifier) -> Self {
        let mut trees: Tenants<Rebuilt> = Tenants::default();
        let mut problems = Vec::new();
        // Per tenant: its newest checkpoint and that one's size. Rows are
        // moved, not cloned: a log holds a checkpoint per batch of each
        // tenant.
        let mut newest: Tenants<(i64, Checkpoint)> = Tenants::default();
        // The rows come in no order: each one's origin is compared in
        // pieces rather than built per row.
        let origin_of = |o: &str, tenant: &str| {
            o.strip_prefix(verifier.origin()).and_then(|o| o.strip_prefix("/tenants/")) == Some(tenant)
        };
        for r in rows {
            let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
            match cp.head().filter(|h| origin_of(&h.origin, &r.tenant_id) && h.tree_size as i64 == r.tree_size) {
                Some(h) => {
                    let t = match trees.get_mut(&r.tenant_id) {
                        Some(t) => t,
                        None => trees.entry(r.tenant_id.clone()).or_default(),
                    };
                    t.roots.insert(h.tree_size, h.root);
                }
                None => problems.push(format!("a checkpoint of tenant {}'s tree has an invalid format", r.tenant_id)),
            }
            match newest.get_mut(&r.tenant_id) {
                Some(e) => {
                    if r.tree_size > e.0 {
                        *e = (r.tree_size, cp);
                    }
                }
                None => {
                    newest.insert(r.tenant_id, (r.tree_size, cp));
                }
            }
        }
        for (tenant, (size, cp)) in newest {
            if verifier.verify_tenant(&cp, &tenant).is_none_or(|h| h.tree_size as i64 != size) {
                problems.push(format!("the newest checkpoint of tenant {tenant}'s tree has an invalid signature"));
            }
        }
        Self { trees, buf: Vec::with_capacity(1024), problems, at: 0 }
    }

    /// A signed root of `tenant`'s tree at `size` from a retention
    /// statement: checked like its checkpoints (it wins over an unsigned
    /// stored one of the same size).
    pub(crate) fn trust(&mut self, tenant: &str, size: u64, root: Hash) {
        let t = self.trees.entry(tenant.to_owned()).or_default();
        t.roots.insert(size, root);
        t.places.get_or_insert_with(sha2::Digest::new);
    }

    /// The leaf of the log the next push is at.
    pub(crate) fn at(&mut self, leaf: u64) {
        self.at = leaf;
    }

    /// At leaf `at` of the log, a retention statement says `tenant`'s tree
    /// holds `size` leaves: a problem if the rebuilt tree disagrees.
    pub(crate) fn cut(&self, tenant: &str, at: u64, cut: &crate::checkpoint::TenantCut) -> Option<String> {
        let t = self.trees.get(tenant);
        let held = t.map_or(0, |t| t.f.size());
        if held != cut.size {
            return Some(format!(
                "tenant {tenant}'s tree holds {held} leaves before leaf {at}, its retention statement signed {}: \
                 another's record was counted as the tenant's, or one of its own was taken out",
                cut.size
            ));
        }
        let places: Option<Hash> = t.and_then(|t| t.places.clone()).map(|p| sha2::Digest::finalize(p).into());
        (places != Some(cut.places)).then(|| {
            format!(
                "tenant {tenant}'s leaves before leaf {at} are not where its retention statement signed them: \
                 records were moved between the tenant's tree and the log"
            )
        })
    }

    /// The next leaf of the log, if it is a tenant's.
    pub(crate) fn push(&mut self, fields: &LeafFields<'_>) {
        let Some(tenant) = fields.tenant_id else { return };
        if !self.trees.contains_key(tenant) {
            self.trees.insert(tenant.to_owned(), Rebuilt::default());
        }
        let at = self.at;
        // One lookup per leaf: full verification pushes millions.
        let Some(t) = self.trees.get_mut(tenant) else { return };
        let seq = t.f.size() as i64 + 1;
        LeafFields { seq, ..*fields }.encode_as(TENANT_LEAF, &mut self.buf);
        let h = merkle::leaf_hash(&self.buf);
        Self::grow(t, &mut self.problems, tenant, h, at);
    }

    /// The next leaf of the log, its tenant leaf hashed ahead (by the
    /// verifier's hashing stage) as that tenant's leaf `seq`. Nothing is
    /// done unless `seq` is the tenant's next number; then `Err` gives that
    /// number, and the caller pushes the fields instead.
    pub(crate) fn push_hashed(&mut self, tenant: &str, seq: i64, h: Hash) -> Result<(), i64> {
        let at = self.at;
        let t = match self.trees.get_mut(tenant) {
            Some(t) => t,
            None => self.trees.entry(tenant.to_owned()).or_default(),
        };
        let next = t.f.size() as i64 + 1;
        if t.broken {
            // A broken tree no longer grows: nothing to check.
            return Ok(());
        }
        if seq != next {
            return Err(next);
        }
        Self::grow(t, &mut self.problems, tenant, h, at);
        Ok(())
    }

    pub(crate) fn push_hash(&mut self, tenant: &str, h: Hash) {
        if !self.trees.contains_key(tenant) {
            self.trees.insert(tenant.to_owned(), Rebuilt::default());
        }
        let at = self.at;
        let Some(t) = self.trees.get_mut(tenant) else { return };
        Self::grow(t, &mut self.problems, tenant, h, at);
    }

    fn grow(t: &mut Rebuilt, problems: &mut Vec<String>, tenant: &str, h: Hash, at: u64) {
        if t.broken {
            return;
        }
        if let Some(places) = &mut t.places {
            sha2::Digest::update(places, at.to_be_bytes());
        }
        t.f.push(h, |_, _, _| {});
        let size = t.f.size();
        if t.next_root < size {
            t.next_root = t.roots.range(size..).next().map_or(u64::MAX, |(s, _)| *s);
        }
        if t.next_root == size && t.roots.get(&size).is_some_and(|root| *root != t.f.root()) {
            t.broken = true;
            problems.push(format!(
                "tenant {tenant}'s tree at size {size} does not match its signed checkpoint: \
                 its records were altered, reordered or replaced"
            ));
        }
    }

    pub(crate) fn fail(&mut self, tenant: &str, problem: String) {
        self.trees.entry(tenant.to_owned()).or_default().broken = true;
        self.problems.push(problem);
    }

    pub(crate) fn finish(self) -> Vec<String> {
        let mut problems = self.problems;
        let mut tenants: Vec<_> = self.trees.into_iter().collect();
        tenants.sort_by(|a, b| a.0.cmp(&b.0));
        for (tenant, t) in tenants {
            let max = t.roots.keys().next_back().copied().unwrap_or(0);
            if !t.broken && max > t.f.size() {
                problems.push(format!(
                    "tenant {tenant}'s tree was truncated: a signed checkpoint covers {max} of its events, \
                     the log holds {}",
                    t.f.size()
                ));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditRow {
        AuditRow {
            seq: 41,
            id: "e41".into(),
            ts: 1_700_000_000_000,
            tenant_id: Some("t1".into()),
            actor_type: "user".into(),
            actor_id: None,
            action: "key.created".into(),
            resource_type: None,
            resource_id: None,
            source_ip: None,
            user_agent: None,
            request_id: None,
            details: "{}".into(),
        }
    }

    #[test]
    fn a_tenant_leaf_is_the_record_with_the_tenants_own_number() {
        let data = tenant_leaf_data(&row(), 3);
        let text = std::str::from_utf8(&data).unwrap();
        assert!(text.starts_with(r#"["palisade-audit-tenant-leaf/v1",3,"e41",1700000000000,"t1","user""#), "{text}");
        assert_ne!(tenant_leaf_data(&row(), 4), data);
        assert_eq!(tenant_leaf_hash(&row(), 3), merkle::leaf_hash(&data));
        assert_ne!(tenant_leaf_hash(&row(), 3), tenant_leaf_hash(&row(), 4));
    }

    fn leaf(n: u8) -> Hash {
        merkle::leaf_hash(&[n])
    }

    /// A rebuild that expects tenant `a`'s tree to have these roots.
    fn rebuild(roots: &[(u64, Hash)]) -> Rebuild {
        let mut t = Rebuilt::default();
        t.roots.extend(roots.iter().copied());
        Rebuild { trees: Tenants::from_iter([("a".to_owned(), t)]), buf: Vec::new(), problems: Vec::new(), at: 0 }
    }

    fn root_of(n: u8) -> Hash {
        let mut f = Frontier::default();
        (1..=n).for_each(|i| f.push(leaf(i), |_, _, _| {}));
        f.root()
    }

    #[test]
    fn rebuilt_trees_are_checked_against_their_roots() {
        // Exactly as long as its newest checkpoint, or longer: fine.
        let mut r = rebuild(&[(2, root_of(2))]);
        r.push_hash("a", leaf(1));
        r.push_hash("a", leaf(2));
        assert!(r.finish().is_empty());
        let mut r = rebuild(&[(2, root_of(2))]);
        r.push_hash("a", leaf(1));
        r.push_hash("a", leaf(2));
        r.push_hash("a", leaf(3));
        assert!(r.finish().is_empty());
        let mut r = rebuild(&[(2, root_of(2))]);
        r.push_hash("a", leaf(1));
        r.push_hash("a", leaf(9));
        let problems = r.finish();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("does not match its signed checkpoint"));
    }

    /// Records are pushed as leaves numbered in the tenant's own sequence.
    #[test]
    fn records_become_leaves_with_the_tenants_own_numbers() {
        let (first, second) = (row(), AuditRow { seq: 57, id: "e57".into(), tenant_id: Some("a".into()), ..row() });
        let first = AuditRow { tenant_id: Some("a".into()), ..first };
        let mut f = Frontier::default();
        f.push(tenant_leaf_hash(&first, 1), |_, _, _| {});
        f.push(tenant_leaf_hash(&second, 2), |_, _, _| {});
        let mut r = rebuild(&[(2, f.root())]);
        r.push(&LeafFields::of(&first));
        r.push(&LeafFields::of(&second));
        assert!(r.finish().is_empty());
        // Swapped: the rebuilt tree no longer matches.
        let mut r = rebuild(&[(2, f.root())]);
        r.push(&LeafFields::of(&second));
        r.push(&LeafFields::of(&first));
        assert_eq!(r.finish().len(), 1);
    }

    /// The stored roots are read from every checkpoint in the right format;
    /// only each tenant's newest has its signature checked.
    #[test]
    fn checkpoints_are_read_and_each_tenants_newest_is_verified() {
        let signer = crate::db_tests::signer();
        let row = |tenant: &str, size: u64, root: &Hash| {
            let cp = signer.sign_tenant(tenant, size, root, 5);
            TenantCheckpointRow {
                tenant_id: tenant.into(),
                tree_size: size as i64,
                root_hash: hex::encode(root),
                ts: 5,
                body: cp.body,
                signature: cp.signature,
                key_id: cp.key_id,
            }
        };
        let forged = |mut r: TenantCheckpointRow| {
            r.signature = "AAAA".into();
            r
        };
        let mut other_size = row("c", 3, &root_of(3));
        other_size.tree_size = 4;
        let rows = vec![
            forged(row("a", 1, &root_of(1))),
            row("a", 2, &root_of(2)),
            row("b", 1, &root_of(1)),
            forged(row("b", 2, &root_of(2))),
            // Signed for another tenant: the origin does not match.
            TenantCheckpointRow { tenant_id: "c".into(), ..row("a", 3, &root_of(3)) },
            other_size,
        ];
        let r = Rebuild::new(rows, signer.verifier());
        let roots = |t: &str| r.trees.get(t).map(|t| t.roots.clone().into_iter().collect::<Vec<_>>());
        assert_eq!(roots("a"), Some(vec![(1, root_of(1)), (2, root_of(2))]));
        assert_eq!(roots("b"), Some(vec![(1, root_of(1)), (2, root_of(2))]));
        assert_eq!(roots("c"), None);
        let mut problems = r.problems.clone();
        problems.sort();
        assert_eq!(
            problems,
            [
                "a checkpoint of tenant c's tree has an invalid format",
                "a checkpoint of tenant c's tree has an invalid format",
                "the newest checkpoint of tenant b's tree has an invalid signature",
                "the newest checkpoint of tenant c's tree has an invalid signature",
            ]
        );
    }

    /// A leaf hashed ahead counts only under the tenant's next number.
    #[test]
    fn a_leaf_hashed_ahead_must_carry_the_next_number() {
        let mut r = rebuild(&[(2, root_of(2))]);
        assert_eq!(r.push_hashed("a", 2, leaf(1)), Err(1));
        assert_eq!(r.push_hashed("a", 1, leaf(1)), Ok(()));
        assert_eq!(r.push_hashed("a", 1, leaf(2)), Err(2));
        assert_eq!(r.push_hashed("a", 3, leaf(2)), Err(2));
        assert_eq!(r.push_hashed("a", 2, leaf(2)), Ok(()));
        assert!(r.finish().is_empty());
        // A new tenant starts at 1; a broken tree takes anything, unchecked.
        let mut r = rebuild(&[]);
        assert_eq!(r.push_hashed("b", 2, leaf(1)), Err(1));
        r.fail("b", "unreadable".into());
        assert_eq!(r.push_hashed("b", 7, leaf(1)), Ok(()));
        assert_eq!(r.finish(), vec!["unreadable".to_owned()]);
    }

    #[test]
    fn a_truncated_tree_is_reported_unless_already_broken() {
        let mut r = rebuild(&[(3, root_of(3))]);
        r.push_hash("a", leaf(1));
        r.push_hash("a", leaf(2));
        let problems = r.finish();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("truncated"), "{problems:?}");
        // A tree already failed reports that, not a truncation too.
        let mut r = rebuild(&[(3, root_of(3))]);
        r.push_hash("a", leaf(1));
        r.fail("a", "unreadable".into());
        assert_eq!(r.finish(), vec!["unreadable".to_owned()]);
    }
}
