//! The PostgreSQL variants of the integration tests are built as ignored
//! unless `PALISADE_TEST_POSTGRES_URL` is set, so that a run without a
//! database reports them as skipped, not as passed; the Redis tests alike
//! with `PALISADE_TEST_REDIS_URL`, the S3 tests with `PALISADE_TEST_S3_URL`,
//! and the sipp tests when no `sipp` is on PATH. Setting or clearing a variable rebuilds this package (only).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rustc-check-cfg=cfg(redis_tests)");
    println!("cargo::rustc-check-cfg=cfg(sipp_tests)");
    println!("cargo::rustc-check-cfg=cfg(s3_tests)");
    for (var, cfg) in [
        ("PALISADE_TEST_POSTGRES_URL", "postgres_tests"),
        ("PALISADE_TEST_REDIS_URL", "redis_tests"),
        ("PALISADE_TEST_S3_URL", "s3_tests"),
    ] {
        println!("cargo::rerun-if-env-changed={var}");
        if std::env::var_os(var).is_some_and(|v| !v.is_empty()) {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    // A PATH change or removing the sipp found reruns this; installing sipp
    // into a directory already on PATH does not (touch this file), so a
    // stale build leaves the sipp tests ignored, never passing unrun.
    println!("cargo::rerun-if-env-changed=PATH");
    if let Some(sipp) = on_path("sipp") {
        println!("cargo::rerun-if-changed={}", sipp.display());
        println!("cargo::rustc-cfg=sipp_tests");
    }
}

fn on_path(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| executable(p))
}

#[cfg(unix)]
fn executable(p: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn executable(p: &std::path::Path) -> bool {
    p.is_file()
}
