//! The Redis variants of the conformance tests are built as ignored unless
//! `PALISADE_TEST_REDIS_URL` is set, so that a run without Redis reports
//! them as skipped, not as passed.
fn main() {
    println!("cargo::rustc-check-cfg=cfg(redis_tests)");
    println!("cargo::rerun-if-env-changed=PALISADE_TEST_REDIS_URL");
    if std::env::var_os("PALISADE_TEST_REDIS_URL").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=redis_tests");
    }
}
