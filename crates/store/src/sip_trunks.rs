//! SIP trunks: the operator's upstream carriers. No tenant owns one, so
//! every function an operator request reaches takes a [`SysadminProof`];
//! the rules (URI, CIDRs, sealed password) are `palisade-voice`'s.

use palisade_core::principal::SysadminProof;
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrunkRow {
    pub id: String,
    pub name: String,
    pub uri: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    pub auth_username: Option<String>,
    /// Base64 of the sealed password (see `palisade-seal`).
    pub auth_password_sealed: Option<String>,
    /// JSON array of CIDRs.
    pub source_cidrs: String,
    /// 1 or 0.
    pub enabled: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// Media policy: `required`, `preferred` or `off`.
    pub srtp: String,
    /// Calls without a verified PASSporT: `mark` them or `reject` them.
    pub stir_inbound: String,
}

const COLS: &str = "id, name, uri, transport, auth_username, auth_password_sealed, source_cidrs, enabled, \
    created_at, updated_at, srtp, stir_inbound";

/// Stores a new trunk (`created_at` and `updated_at` as given). A name
/// taken already is a unique violation.
pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof, t: &TrunkRow) -> Result<()> {
    sqlx::query(&format!("INSERT INTO sip_trunks ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"))
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.uri)
        .bind(&t.transport)
        .bind(t.auth_username.as_deref())
        .bind(t.auth_password_sealed.as_deref())
        .bind(&t.source_cidrs)
        .bind(t.enabled)
        .bind(t.created_at)
        .bind(t.updated_at)
        .bind(&t.srtp)
        .bind(&t.stir_inbound)
        .execute(ex)
        .await?;
    Ok(())
}

/// Every trunk, by name.
pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof) -> Result<Vec<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks ORDER BY name, id")).fetch_all(ex).await?)
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    id: &str,
) -> Result<Option<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks WHERE id = $1")).bind(id).fetch_optional(ex).await?)
}

/// The trunk, its row locked (PostgreSQL) until the transaction ends, so
/// that a change is made to what was read and concurrent changes do not
/// undo each other.
pub async fn lock(tx: &mut crate::Tx, _proof: &SysadminProof, id: &str) -> Result<Option<TrunkRow>> {
    let sql = match tx.dialect() {
        crate::Dialect::Postgres => format!("SELECT {COLS} FROM sip_trunks WHERE id = $1 FOR UPDATE"),
        crate::Dialect::Sqlite => format!("SELECT {COLS} FROM sip_trunks WHERE id = $1"),
    };
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&mut **tx).await?)
}

/// Writes every column but `id`, `name` and `created_at`. False when there
/// is no such trunk.
pub async fn update<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof, t: &TrunkRow) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE sip_trunks SET uri = $2, transport = $3, auth_username = $4, auth_password_sealed = $5, \
         source_cidrs = $6, enabled = $7, updated_at = $8, srtp = $9, \
         stir_inbound = $10 WHERE id = $1",
    )
    .bind(&t.id)
    .bind(&t.uri)
    .bind(&t.transport)
    .bind(t.auth_username.as_deref())
    .bind(t.auth_password_sealed.as_deref())
    .bind(&t.source_cidrs)
    .bind(t.enabled)
    .bind(t.updated_at)
    .bind(&t.srtp)
    .bind(&t.stir_inbound)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes a trunk; its name, if it had one.
pub async fn delete<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    id: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("DELETE FROM sip_trunks WHERE id = $1 RETURNING name").bind(id).fetch_optional(ex).await?)
}

/// The enabled trunks, oldest first, for the SIP edge. No proof: the edge
/// reads them on its own behalf, not for a caller, to tell which sources
/// are carriers; nothing here belongs to a tenant, and the password stays
/// sealed until the edge itself opens it to answer a trunk's challenge.
pub async fn enabled_trunks<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks WHERE enabled = 1 ORDER BY created_at, id"))
        .fetch_all(ex)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Db;

    fn row(id: &str, name: &str, enabled: bool, created_at: i64) -> TrunkRow {
        TrunkRow {
            id: id.into(),
            name: name.into(),
            uri: "sip:carrier.example".into(),
            transport: "udp".into(),
            auth_username: None,
            auth_password_sealed: None,
            source_cidrs: r#"["192.0.2.0/24"]"#.into(),
            enabled: i64::from(enabled),
            created_at,
            updated_at: created_at,
            srtp: "preferred".into(),
            stir_inbound: "mark".into(),
        }
    }

    /// The same on both dialects: the table's constraints, and the edge's
    /// view (enabled only, oldest first).
    async fn exercise(db: &Db) {
        let proof = SysadminProof::verified();
        insert(db.reader(), &proof, &row("b", "Second", true, 2)).await.unwrap();
        insert(db.reader(), &proof, &row("a", "First", true, 1)).await.unwrap();
        insert(db.reader(), &proof, &row("c", "Off", false, 0)).await.unwrap();
        let dup = insert(db.reader(), &proof, &row("d", "First", true, 3)).await.unwrap_err();
        assert!(dup.is_unique_violation(), "{dup}");
        let mut bad = row("e", "Bad transport", true, 4);
        bad.transport = "ws".into();
        assert!(insert(db.reader(), &proof, &bad).await.is_err());
        let mut half = row("f", "Half credentials", true, 4);
        half.auth_username = Some("u".into());
        assert!(insert(db.reader(), &proof, &half).await.is_err(), "a username needs its sealed password");

        let ids = |rows: Vec<TrunkRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(enabled_trunks(db.reader()).await.unwrap()), ["a", "b"]);
        assert_eq!(ids(list(db.reader(), &proof).await.unwrap()), ["a", "c", "b"], "by name");

        let mut changed = row("c", "ignored", true, 0);
        changed.auth_username = Some("u".into());
        changed.auth_password_sealed = Some("c2VhbGVk".into());
        changed.updated_at = 9;
        assert!(update(db.reader(), &proof, &changed).await.unwrap());
        let got = get(db.reader(), &proof, "c").await.unwrap().unwrap();
        assert_eq!((got.name.as_str(), got.enabled, got.updated_at), ("Off", 1, 9), "the name stays");
        assert_eq!(ids(enabled_trunks(db.reader()).await.unwrap()), ["c", "a", "b"]);
        assert!(!update(db.reader(), &proof, &row("zz", "None", true, 0)).await.unwrap());

        let mut tx = db.begin().await.unwrap();
        assert_eq!(lock(&mut tx, &proof, "a").await.unwrap().unwrap().name, "First");
        assert!(lock(&mut tx, &proof, "zz").await.unwrap().is_none());
        drop(tx);

        assert_eq!(delete(db.reader(), &proof, "a").await.unwrap().as_deref(), Some("First"));
        assert_eq!(delete(db.reader(), &proof, "a").await.unwrap(), None);
        assert_eq!(ids(enabled_trunks(db.reader()).await.unwrap()), ["c", "b"]);
    }

    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}/t.db", dir.path().display()), 4).await.unwrap();
        db.migrate().await.unwrap();
        exercise(&db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn postgres() {
        let (db, dropper) = crate::testing::test_postgres("palisade_store").await;
        exercise(&db).await;
        dropper.drop_db(db).await;
    }
}
