//! The PostgreSQL variants of the integration tests are built as ignored
//! unless `PALISADE_TEST_POSTGRES_URL` is set, so that a run without a
//! database reports them as skipped, not as passed; the Redis tests alike
//! with `PALISADE_TEST_REDIS_URL`. Setting or clearing a variable rebuilds
//! this package (only).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rustc-check-cfg=cfg(redis_tests)");
    for (var, cfg) in [("PALISADE_TEST_POSTGRES_URL", "postgres_tests"), ("PALISADE_TEST_REDIS_URL", "redis_tests")] {
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
}
