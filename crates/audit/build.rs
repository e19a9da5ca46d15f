//! The PostgreSQL unit tests are built as ignored unless
//! `PALISADE_TEST_POSTGRES_URL` is set, so that a run without a database
//! reports them as skipped, not as passed. Setting or clearing the
//! variable rebuilds this package (only).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=PALISADE_TEST_POSTGRES_URL");
    if std::env::var_os("PALISADE_TEST_POSTGRES_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
