//! The S3 tests are built as ignored unless `PALISADE_TEST_S3_URL` is set,
//! so that a run without an S3-compatible server reports them as skipped,
//! not as passed. Setting or clearing the variable rebuilds this package
//! (only).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(s3_tests)");
    println!("cargo::rerun-if-env-changed=PALISADE_TEST_S3_URL");
    if std::env::var_os("PALISADE_TEST_S3_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=s3_tests");
    }
}
