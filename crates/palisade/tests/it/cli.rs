//! The binary itself: configuration refusals and the operator CLI.

use std::process::{Command, Output};

use crate::common::PASSWORD;

fn palisade(dir: &std::path::Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_palisade"));
    c.current_dir(dir).args(args).env_remove("PALISADE_ADMIN__MASTER_KEY").env_remove("PALISADE_MODE");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn production_refuses_unsafe_config_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let good_key = palisade_auth::token::new_master_key();
    let secret = "s".repeat(40);
    let base = [
        ("PALISADE_MODE", "production"),
        ("PALISADE_ADMIN__MASTER_KEY", good_key.as_str()),
        ("PALISADE_AUTH__JWT_SECRET", secret.as_str()),
        ("PALISADE_SERVER__TRUST_PROXY", "10.0.0.0/8"),
        ("PALISADE_MAIL__SMTP_URL", "smtps://u:p@mail.example.com"),
        ("PALISADE_AUDIT__SIGNING_KEY_FILE", "/nonexistent/audit.pem"),
        ("PALISADE_WEBHOOKS__ENCRYPTION_KEY", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ("PALISADE_KEYS__KEK", "v1:BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA="),
    ];
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("no master key", vec![("PALISADE_ADMIN__MASTER_KEY", "")], "master key"),
        ("dev master key", vec![("PALISADE_ADMIN__MASTER_KEY", palisade_config::KNOWN_DEV_SECRETS[0])], "master key"),
        ("dev jwt secret", vec![("PALISADE_AUTH__JWT_SECRET", palisade_config::KNOWN_DEV_SECRETS[1])], "jwt_secret"),
        ("cors star", vec![("PALISADE_CORS__ALLOWED_ORIGINS", "*")], "cors"),
        ("postgres without tls", vec![("PALISADE_DATABASE__URL", "postgres://u@db.example/x")], "sslmode"),
        ("no tls, no proxy", vec![("PALISADE_SERVER__TRUST_PROXY", "")], "tls"),
        ("no smtp", vec![("PALISADE_MAIL__SMTP_URL", "")], "smtp_url"),
        ("no audit key", vec![("PALISADE_AUDIT__SIGNING_KEY_FILE", "")], "audit signing key"),
        ("no webhook key", vec![("PALISADE_WEBHOOKS__ENCRYPTION_KEY", "")], "webhooks.encryption_key"),
        ("short webhook key", vec![("PALISADE_WEBHOOKS__ENCRYPTION_KEY", "c2hvcnQ=")], "webhooks.encryption_key"),
        ("no kek", vec![("PALISADE_KEYS__KEK", "")], "keys.kek"),
        ("short kek", vec![("PALISADE_KEYS__KEK", "v1:c2hvcnQ=")], "keys.kek"),
        ("plain smtp", vec![("PALISADE_MAIL__SMTP_URL", "smtp://u:p@mail.example.com")], "tls"),
        ("postgres host param", vec![("PALISADE_DATABASE__URL", "postgres://u@/x?host=db.example")], "sslmode"),
    ];
    for (what, overrides, needle) in cases {
        let mut env: Vec<(&str, &str)> = base.to_vec();
        env.retain(|(k, _)| !overrides.iter().any(|(o, _)| o == k));
        env.extend(overrides.iter().filter(|(_, v)| !v.is_empty()).cloned());
        let out = palisade(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &env);
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim().lines().count(), 1, "{what}: one line, got {err}");
        assert!(err.to_lowercase().contains(needle), "{what}: {err}");
        assert!(!err.contains(&good_key), "{what}: the key must not be printed");
    }
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "[server]\nlisten = \"${PALISADE_TEST_UNSET_VARIABLE}\"\n").unwrap();
    let out = palisade(dir.path(), &["--config", bad_file.to_str().unwrap(), "migrate"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("PALISADE_TEST_UNSET_VARIABLE is not set"));
}

#[test]
fn operator_cli_works_with_the_server_down() {
    let dir = tempfile::tempdir().unwrap();
    let out = palisade(dir.path(), &["migrate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    use std::os::unix::fs::PermissionsExt;
    let data = dir.path().join("data");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(data.join("palisade.db")).unwrap().permissions().mode() & 0o777, 0o600);

    let out = palisade(
        dir.path(),
        &["admin", "tenant", "create", "--name", "Cli Co", "--owner-email", "cli@example.com"],
        &[("PALISADE_OWNER_PASSWORD", PASSWORD)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let out = palisade(dir.path(), &["admin", "tenant", "freeze", &id], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(dir.path(), &["admin", "tenant", "list"], &[]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains(&id) && listed.contains("frozen"), "{listed}");
    let out = palisade(dir.path(), &["admin", "tenant", "unfreeze", &id], &[]);
    assert!(out.status.success());
    let out = palisade(dir.path(), &["admin", "tenant", "freeze", "nope"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let out = palisade(
        dir.path(),
        &["admin", "tenant", "create", "--name", "Weak", "--owner-email", "w@example.com"],
        &[("PALISADE_OWNER_PASSWORD", "short")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("owner.password"));

    let out = palisade(dir.path(), &["admin", "master-key", "rotate"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let key = std::fs::read_to_string(data.join("master.key")).unwrap();
    assert!(key.trim().starts_with("mk_"));
    assert_eq!(std::fs::metadata(data.join("master.key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!String::from_utf8_lossy(&out.stdout).contains(key.trim()), "the key is never printed");
}

#[test]
fn first_dev_start_writes_the_master_key_and_prints_only_its_path() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .current_dir(dir.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("PALISADE_ADMIN__MASTER_KEY")
        .env_remove("PALISADE_MODE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let done = line.contains("listening on");
        lines.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    let _ = child.wait();
    let printed = lines.join("\n");
    let key_file = dir.path().join("data/master.key");
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(key.trim().starts_with("mk_") && key.trim().len() >= 46);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(printed.contains("master.key"), "{printed}");
    assert!(!printed.contains(key.trim()), "the key itself must not be printed");
    assert_eq!(printed.matches("generated a sysadmin master key").count(), 1);
}

#[test]
fn operators_are_created_listed_and_disabled_and_a_disabled_master_key_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    // With the master key off and no operator, the server does not start.
    let out =
        palisade(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &[("PALISADE_ADMIN__MASTER_KEY", "disabled")]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no operator account exists"), "{}", stderr(&out));
    let create = |email: &str, password: &str| {
        palisade(
            dir.path(),
            &["admin", "operator", "create", "--email", email],
            &[("PALISADE_OPERATOR_PASSWORD", password)],
        )
    };
    assert_eq!(create("ops@example.com", "short").status.code(), Some(1));
    let out = create("Ops@Example.com", PASSWORD);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["email"], "ops@example.com");
    let uri = made["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Palisade:ops%40example.com?secret="), "{uri}");
    assert_eq!(made["totp_secret"].as_str().unwrap().len(), 32);
    assert_eq!(create("ops@example.com", PASSWORD).status.code(), Some(1), "once per address");
    let out = palisade(dir.path(), &["admin", "operator", "list"], &[]);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.contains("active\tops@example.com"), "{listed}");
    let out = palisade(dir.path(), &["admin", "operator", "disable", "--email", "ops@example.com"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = palisade(dir.path(), &["admin", "operator", "list"], &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("disabled\tops@example.com"));
    assert_eq!(
        palisade(dir.path(), &["admin", "operator", "disable", "--email", "ops@example.com"], &[]).status.code(),
        Some(1)
    );
}
