//! Test databases: each test its own, migrated, on the PostgreSQL server of
//! `PALISADE_TEST_POSTGRES_URL`. For this crate's tests and, with the
//! `test-support` feature, other crates' (never in a release build).

use crate::Db;

/// Drops a test database once its test is done with it.
pub struct Dropper {
    admin: Db,
    name: String,
}

impl Dropper {
    pub async fn drop_db(self, db: Db) {
        db.close().await;
        let sql = format!("DROP DATABASE {} WITH (FORCE)", self.name);
        sqlx::query(&sql).execute(self.admin.reader()).await.unwrap();
        self.admin.close().await;
    }
}

/// A new, migrated database named `<prefix>_<random>`. The tests that call
/// this are built as ignored without the variable (each crate's build.rs),
/// so one that runs fails rather than passes without a server.
pub async fn test_postgres(prefix: &str) -> (Db, Dropper) {
    let url = std::env::var("PALISADE_TEST_POSTGRES_URL")
        .expect("PALISADE_TEST_POSTGRES_URL must be set to run the PostgreSQL tests");
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    let admin = Db::connect(&url, 2).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(admin.reader()).await.unwrap();
    let (head, query) = url.split_once('?').map_or((url.as_str(), None), |(h, q)| (h, Some(q)));
    let base = head.rsplit_once('/').map_or(head, |(b, _)| b);
    let db_url = format!("{base}/{name}{}", query.map(|q| format!("?{q}")).unwrap_or_default());
    let db = Db::connect(&db_url, 8).await.unwrap();
    db.migrate().await.unwrap();
    (db, Dropper { admin, name })
}
