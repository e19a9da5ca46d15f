use super::*;

fn prod() -> Config {
    let mut c = Config { mode: Mode::Production, ..Config::default() };
    c.admin.master_key = Some(Secret::new(format!("mk_{}", "A".repeat(43))));
    c.auth.jwt_secret = Some(Secret::new("x".repeat(40)));
    c.server.trust_proxy = vec!["10.0.0.0/8".parse().unwrap()];
    c.mail.smtp_url = Some(Secret::new("smtps://u:p@mail.example.com".into()));
    c.audit.signing_key_file = Some("/etc/palisade/audit.pem".into());
    c.webhooks.encryption_key = Some(Secret::new("A".repeat(43) + "="));
    c.keys.kek = Some(Secret::new(format!("v1:{}A=", "B".repeat(42))));
    c
}

#[test]
fn the_kek_is_required_in_production_and_checked_in_every_mode() {
    let mut c = prod();
    c.keys.kek = None;
    assert!(refusal(&c).contains("keys.kek"));
    for bad in ["v1:c2hvcnQ=", "1:AAAA", "v1:x,v1:y"] {
        let mut c = Config::default();
        c.keys.kek = Some(Secret::new(bad.into()));
        let e = refusal(&c);
        assert!(e.contains("keys.kek") && !e.contains("c2hvcnQ"), "{bad}: {e}");
    }
}

fn refusal(c: &Config) -> String {
    c.validate().expect_err("must refuse").0
}

#[test]
fn good_production_config_passes() {
    prod().validate().unwrap();
}

#[test]
fn production_refusals() {
    let mut c = prod();
    c.admin.master_key = None;
    assert!(refusal(&c).contains("master key"));

    let mut c = prod();
    c.admin.master_key = Some(Secret::new(KNOWN_DEV_SECRETS[0].into()));
    assert!(refusal(&c).contains("known default"));

    let mut c = prod();
    c.auth.jwt_secret = None;
    assert!(refusal(&c).contains("signing key"));

    let mut c = prod();
    c.auth.jwt_secret = Some(Secret::new(KNOWN_DEV_SECRETS[1].into()));
    assert!(refusal(&c).contains("jwt_secret"));

    let mut c = prod();
    c.cors.allowed_origins = vec!["*".into()];
    assert!(refusal(&c).contains("cors"));

    let mut c = prod();
    c.database.url = Some(Secret::new("postgres://u:p@db.example/x".into()));
    assert!(refusal(&c).contains("sslmode"));
    c.database.url = Some(Secret::new("postgres://u:p@db.example/x?sslmode=require".into()));
    c.validate().unwrap();

    let mut c = prod();
    c.server.trust_proxy.clear();
    assert!(refusal(&c).contains("tls"));

    let mut c = prod();
    c.audit.signing_key_file = None;
    assert!(refusal(&c).contains("audit signing key"));

    let mut c = prod();
    c.mail.smtp_url = None;
    assert!(refusal(&c).contains("smtp_url"));
    c.mail.smtp_url = Some(Secret::new("smtp://u:p@mail.example.com".into()));
    assert!(refusal(&c).contains("TLS"));
}

#[test]
fn dev_mode_is_lenient() {
    let c = Config::default();
    c.validate().unwrap();
}

#[test]
fn ttl_is_capped() {
    let mut c = Config::default();
    c.auth.access_token_ttl_secs = 25 * 3600;
    assert!(refusal(&c).contains("86400"));
}

#[test]
fn clock_skew_is_capped() {
    let mut c = Config::default();
    assert_eq!(c.auth.clock_skew_secs, 60);
    c.auth.clock_skew_secs = 301;
    assert!(refusal(&c).contains("clock_skew_secs"));
    c.auth.clock_skew_secs = 300;
    c.validate().unwrap();
}

#[test]
fn postgres_url_rules() {
    assert!(postgres_url_is_safe("postgres://h/db?sslmode=verify-full"));
    assert!(postgres_url_is_safe("postgres:///db?host=/var/run/postgresql"));
    assert!(postgres_url_is_safe("postgresql://%2Fvar%2Frun/db"));
    assert!(!postgres_url_is_safe("postgres://h/db?sslmode=prefer"));
    assert!(!postgres_url_is_safe("postgres://h/db"));
    assert!(!postgres_url_is_safe("postgres://u:p@/db?host=db.example.com"));
    assert!(!postgres_url_is_safe("postgres:///db?host=db.example.com&sslmode=disable"));
    // Loopback never leaves the machine.
    assert!(postgres_url_is_safe("postgres://postgres@127.0.0.1:5432/test"));
    assert!(postgres_url_is_safe("postgres://u:p@localhost/db"));
    assert!(postgres_url_is_safe("postgres://u:p@[::1]:5432/db"));
    assert!(postgres_url_is_safe("postgres:///db?host=127.0.0.2"));
    // Names that only look local are not.
    assert!(!postgres_url_is_safe("postgres://u:p@127.0.0.1.example.com/db"));
    assert!(!postgres_url_is_safe("postgres://u:p@localhost.example.com:5432/db"));
    assert!(!postgres_url_is_safe("postgres://u:p@[::2]:5432/db"));
    assert!(!postgres_url_is_safe("postgres://u:p@10.0.0.1:5432/db"));
    assert!(!postgres_url_is_safe("postgres://localhost@db.example.com/db"));
    // Read as the client reads it: no way to point it elsewhere in clear.
    for bad in [
        "postgres://localhost/db?hostaddr=203.0.113.9",
        "postgres://localhost/db?%68ost=evil.example",
        "postgres://evil.example/db?sslmode=require&ssl-mode=disable",
        "postgres://evil.example/db?sslmode=require&sslmode=disable",
        "postgres://u:p@evil.example#@localhost/db",
        "postgres://u:p@evil.example?@localhost/db",
        "postgres://localhost/db?host=a.example,localhost",
        "postgres://localhost/db#x",
    ] {
        assert!(!postgres_url_is_safe(bad), "{bad}");
    }
    assert!(postgres_url_is_safe("postgres://evil.example/db?sslmode=disable&ssl-mode=verify-full"));
    assert!(postgres_url_is_safe("postgres://u@%2Fvar%2Frun%2Fpostgresql/db"));
}

#[test]
fn substitution() {
    let look = |k: &str| (k == "A").then(|| "1".to_string());
    assert_eq!(substitute_env("x=${A}y", look).unwrap(), "x=1y");
    assert!(substitute_env("x=${B}", look).unwrap_err().contains("B is not set"));
    assert!(substitute_env("x=${A", look).is_err());
}

#[test]
#[allow(clippy::result_large_err)]
fn file_then_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[server]\nlisten = \"127.0.0.1:9\"\n[cors]\nallowed_origins = [\"https://a.example\"]\n")
        .unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("PALISADE_SERVER__LISTEN", "127.0.0.1:7");
        jail.set_env("PALISADE_TEST_POSTGRES_URL", "ignored");
        let c = Config::load(Some(&path)).map_err(|e| e.0)?;
        assert_eq!(c.server.listen, "127.0.0.1:7");
        assert_eq!(c.cors.allowed_origins, vec!["https://a.example".to_string()]);
        Ok(())
    });
}

#[test]
fn unknown_keys_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[server]\nlisten_addr = \"x\"\n").unwrap();
    let err = Config::load(Some(&path)).unwrap_err();
    assert!(err.0.contains("listen_addr"), "{}", err.0);
}

#[test]
fn secrets_do_not_print() {
    let c = prod();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("xxxxxxxx") && !dbg.contains("mk_AAAA"));
}

#[test]
#[allow(clippy::result_large_err)]
fn webhook_settings_from_file_and_env() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        "[webhooks]\nretry_schedule_secs = [0, 10, 60]\n[inbound.providers.stripe]\nkind = \"payment\"\n\
         secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\n",
    )
    .unwrap();
    figment::Jail::expect_with(|jail| {
        // Defaults alone load (the schedule's default is a list of numbers).
        let c = Config::load(None).map_err(|e| e.0)?;
        assert_eq!(c.webhooks.retry_schedule_secs, vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000]);
        let c = Config::load(Some(&path)).map_err(|e| e.0)?;
        assert_eq!(c.webhooks.retry_schedule_secs, vec![0, 10, 60]);
        assert_eq!(c.inbound.providers["stripe"].kind, InboundKind::Payment);
        jail.set_env("PALISADE_WEBHOOKS__ALLOWED_PRIVATE_CIDRS", "10.1.0.0/16, 192.168.7.7");
        jail.set_env("PALISADE_WEBHOOKS__RETRY_SCHEDULE_SECS", "0");
        let c = Config::load(Some(&path)).map_err(|e| e.0)?;
        assert_eq!(c.webhooks.allowed_private_cidrs.len(), 2);
        assert_eq!(c.webhooks.retry_schedule_secs, vec![0]);
        Ok(())
    });
}

#[test]
fn webhook_key_must_be_32_bytes() {
    let mut c = prod();
    c.webhooks.encryption_key = Some(Secret::new("c2hvcnQ=".into()));
    assert!(refusal(&c).contains("webhooks.encryption_key"));
    c.webhooks.encryption_key = None;
    assert!(refusal(&c).contains("webhooks.encryption_key"));
}

#[test]
#[allow(clippy::result_large_err)]
fn connection_limits_from_env_and_checked() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.0)?;
        let s = &c.server;
        assert_eq!((s.header_timeout_secs, s.idle_timeout_secs, s.tls.handshake_timeout_secs), (10, 60, 10));
        assert_eq!((s.max_connections, s.max_connections_per_address), (4096, 256));
        jail.set_env("PALISADE_SERVER__MAX_CONNECTIONS_PER_ADDRESS", "8");
        jail.set_env("PALISADE_SERVER__TLS__HANDSHAKE_TIMEOUT_SECS", "3");
        let c = Config::load(None).map_err(|e| e.0)?;
        assert_eq!((c.server.max_connections_per_address, c.server.tls.handshake_timeout_secs), (8, 3));
        Ok(())
    });
    let mut c = prod();
    c.server.idle_timeout_secs = 0;
    assert!(refusal(&c).contains("idle_timeout_secs"));
}

#[test]
#[allow(clippy::result_large_err)]
fn redis_section_from_env_and_checked() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.0)?;
        assert!(c.redis.url.is_none());
        assert_eq!((c.redis.key_prefix.as_str(), c.redis.timeout_ms), ("palisade", 250));
        assert_eq!(c.redis.on_failure.auth, FailMode::Closed);
        assert_eq!(c.redis.on_failure.rate_limits, FailMode::Local);
        assert_eq!(c.redis.on_failure.sip, FailMode::Closed);
        jail.set_env("PALISADE_REDIS__URL", "rediss://app:s3cret-pw@redis.example:6380/2");
        jail.set_env("PALISADE_REDIS__KEY_PREFIX", "blue");
        jail.set_env("PALISADE_REDIS__ON_FAILURE__WAF", "closed");
        let c = Config::load(None).map_err(|e| e.0)?;
        assert_eq!(c.redis.url.as_ref().map(Secret::expose), Some("rediss://app:s3cret-pw@redis.example:6380/2"));
        assert_eq!(c.redis.key_prefix, "blue");
        assert_eq!(c.redis.on_failure.waf, FailMode::Closed);
        // The URL holds a password: it never prints.
        assert!(!format!("{c:?}").contains("s3cret-pw"));
        jail.set_env("PALISADE_REDIS__URL", "http://app:s3cret-pw@redis.example");
        let e = Config::load(None).unwrap_err().0;
        assert!(e.contains("redis.url") && !e.contains("s3cret-pw"), "{e}");
        Ok(())
    });
}

#[test]
fn redis_urls() {
    let ok = |u: &str| redis_url_info(u).unwrap();
    assert_eq!(ok("redis://127.0.0.1:6379"), RedisUrlInfo { tls: false, loopback: true });
    assert_eq!(ok("redis://:pw@localhost/0"), RedisUrlInfo { tls: false, loopback: true });
    assert_eq!(ok("rediss://user:pw@cache.example:6380/3"), RedisUrlInfo { tls: true, loopback: false });
    assert_eq!(ok("redis://[::1]:6379"), RedisUrlInfo { tls: false, loopback: true });
    // The host the client connects to is the one judged.
    assert!(!ok("redis://evil.example/0").loopback);
    for bad in [
        "",
        "redis://",
        "redis://:pw@",
        "redis://h:0",
        "redis://h:x",
        "redis://h/db",
        "unix:///tmp/r.sock",
        "redis://evil.example?@127.0.0.1/0",
        "redis://evil.example#@127.0.0.1",
        "rediss://cache.example/#insecure",
    ] {
        assert!(redis_url_info(bad).is_err(), "{bad}");
    }
    let mut c = Config::default();
    c.redis.key_prefix = "a{b}".into();
    assert!(c.validate().unwrap_err().0.contains("key_prefix"));
    c.redis.key_prefix = "ok".into();
    c.redis.timeout_ms = 0;
    assert!(c.validate().unwrap_err().0.contains("timeout_ms"));
    // Production wants TLS to a Redis on another host.
    let mut c = prod();
    c.redis.url = Some(Secret::new("redis://:pw@cache.example:6379".into()));
    assert!(refusal(&c).contains("rediss://"));
    c.redis.url = Some(Secret::new("rediss://:pw@cache.example:6379".into()));
    c.validate().unwrap();
    c.redis.url = Some(Secret::new("redis://127.0.0.1:6379".into()));
    c.validate().unwrap();
}

#[test]
#[allow(clippy::result_large_err)]
fn sip_section_is_off_by_default_and_checked() {
    figment::Jail::expect_with(|jail| {
        let c = Config::load(None).map_err(|e| e.0)?;
        assert!(!c.sip.enabled());
        assert_eq!(c.sip.digest_algorithms, ["SHA-256", "MD5"]);
        assert_eq!((c.sip.bruteforce.threshold, c.sip.bruteforce.block_secs), (5, 900));
        let loopback: Vec<String> = c.sip.plaintext_allowed_cidrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(loopback, ["127.0.0.1/32", "::1/128"]);
        c.validate().map_err(|e| e.0)?;
        jail.set_env("PALISADE_SIP__UDP_LISTEN", "127.0.0.1:5060");
        jail.set_env("PALISADE_SIP__PLAINTEXT_ALLOWED_CIDRS", "10.0.0.0/8,127.0.0.1/32");
        let c = Config::load(None).map_err(|e| e.0)?;
        assert!(c.sip.enabled());
        assert_eq!(c.sip.plaintext_allowed_cidrs.len(), 2);
        c.validate().map_err(|e| e.0)?;
        for (key, value, says) in [
            ("PALISADE_SIP__UDP_LISTEN", "pbx.example:5060", "sip.udp_listen"),
            ("PALISADE_SIP__TLS_LISTEN", "0.0.0.0:5061", "tls_cert_file"),
            ("PALISADE_SIP__DIGEST_ALGORITHMS", "[\"SHA-512\"]", "digest_algorithms"),
            ("PALISADE_SIP__DIGEST_ALGORITHMS", "[]", "digest_algorithms"),
            ("PALISADE_SIP__MIN_EXPIRES_SECS", "7200", "min_expires_secs"),
            ("PALISADE_SIP__DOMAIN", "a b", "sip.domain"),
            ("PALISADE_SIP__MAX_MESSAGE_BYTES", "100", "max_message_bytes"),
        ] {
            jail.set_env(key, value);
            // Loading validates.
            let e = Config::load(None).unwrap_err().0;
            assert!(e.contains(says), "{key}={value}: {e}");
            std::env::remove_var(key);
        }
        Ok(())
    });
}

#[test]
fn mail_goes_over_tls_unless_a_local_relay_is_chosen_in_the_clear() {
    let with = |url: &str, plaintext: bool| {
        let mut c = Config::default();
        c.mail.smtp_url = Some(Secret::new(url.into()));
        c.mail.smtp_allow_plaintext = plaintext;
        c.validate().map_err(|e| e.0)
    };
    assert!(with("smtps://u:p@mail.example.com", false).is_ok());
    assert!(with("smtp://u:p@mail.example.com:587?tls=required", false).is_ok());
    // In every mode, not only production: the mail holds one-time tokens.
    for url in [
        "smtp://u:p@mail.example.com",
        "smtp://mail.example.com?tls=opportunistic",
        "smtp://127.0.0.1:25",
        "smtp://mail.example.com?x=notls=required",
    ] {
        assert!(with(url, false).unwrap_err().contains("TLS"), "{url}");
    }
    // A relay on this host, in the clear, by choice; never another host.
    assert!(with("smtp://127.0.0.1:25", true).is_ok());
    assert!(with("smtp://localhost:2525", true).is_ok());
    assert!(with("smtp://[::1]:25", true).is_ok());
    assert!(with("smtp://mail.example.com:25", true).is_err());
    assert!(with("smtp://127.0.0.1?tls=required&tls=opportunistic", false).is_err());
    assert!(with("http://mail.example.com", false).is_err());
    let mut c = Config::default();
    c.mail.retry_schedule_secs.clear();
    assert!(c.validate().is_err());
}

#[test]
fn retention_bounds_must_hold_together() {
    assert!(Config::default().validate().is_ok());
    let mut c = Config::default();
    c.retention.grace_days = 0;
    assert!(refusal(&c).contains("grace_days"));
    for (min, days, max, batch) in [(0, 365, 3650, 500), (400, 365, 3650, 500), (1, 4000, 3650, 500), (1, 365, 3650, 0)]
    {
        let mut c = Config::default();
        (c.retention.messages_min_days, c.retention.messages_days, c.retention.messages_max_days, c.retention.batch) =
            (min, days, max, batch);
        assert!(refusal(&c).contains("retention"), "{min} {days} {max} {batch}");
    }
    // The operator's default for webhook deliveries lies within the tenant
    // bounds, unless it keeps them (0).
    for (min, days, max) in [(0, 30, 365), (40, 30, 365), (1, 400, 365), (10, 0, 5)] {
        let mut c = Config::default();
        (c.retention.webhooks_min_days, c.webhooks.retention_days, c.retention.webhooks_max_days) = (min, days, max);
        assert!(refusal(&c).contains("webhooks_"), "webhooks {min} {days} {max}");
    }
    let mut keep = Config::default();
    keep.webhooks.retention_days = 0;
    assert!(keep.validate().is_ok(), "0 keeps them");
    for (min, days, max) in [(0, 730, 3650), (800, 730, 3650), (1, 4000, 3650)] {
        let mut c = Config::default();
        (c.retention.calls_min_days, c.retention.calls_days, c.retention.calls_max_days) = (min, days, max);
        assert!(refusal(&c).contains("calls_"), "calls {min} {days} {max}");
    }
    for (min, days, max) in [(0, 90, 3650), (100, 90, 3650), (1, 4000, 3650)] {
        let mut c = Config::default();
        (c.retention.recordings_min_days, c.retention.recordings_days, c.retention.recordings_max_days) =
            (min, days, max);
        assert!(refusal(&c).contains("recordings_"), "recordings {min} {days} {max}");
    }
}

#[test]
fn recordings_in_s3_need_their_secret_and_https_in_production() {
    let mut c = Config::default();
    c.recordings.s3 = Some(RecordingsS3 {
        endpoint: Some("http://127.0.0.1:9000".into()),
        bucket: "rec".into(),
        region: "us-east-1".into(),
        access_key_id: "id".into(),
        secret_access_key: None,
        secret_access_key_file: None,
        prefix: String::new(),
        allow_http: true,
    });
    assert!(refusal(&c).contains("secret_access_key"));
    c.recordings.s3.as_mut().unwrap().allow_http = false;
    c.recordings.s3.as_mut().unwrap().secret_access_key = Some(Secret::new("x".into()));
    assert!(refusal(&c).contains("http://"), "an http endpoint needs allow_http");
    c.recordings.s3.as_mut().unwrap().allow_http = true;
    c.recordings.s3.as_mut().unwrap().secret_access_key = None;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3-secret");
    std::fs::write(&file, "shh-its-secret\n").unwrap();
    c.recordings.s3.as_mut().unwrap().secret_access_key_file = Some(file);
    c.resolve_files().unwrap();
    assert_eq!(c.recordings.s3.as_ref().unwrap().secret_access_key.as_ref().unwrap().expose(), "shh-its-secret");
    assert!(c.validate().is_ok());
    assert!(!format!("{c:?}").contains("shh-its-secret"), "the secret never prints");
    let mut p = prod();
    p.recordings = c.recordings.clone();
    assert!(refusal(&p).contains("allow_http"));
    let s3 = p.recordings.s3.as_mut().unwrap();
    (s3.allow_http, s3.endpoint) = (false, Some("https://s3.example.com".into()));
    p.validate().unwrap();
}

#[test]
#[allow(clippy::result_large_err)]
fn email_code_settings_load_and_are_checked() {
    figment::Jail::expect_with(|jail| {
        let e = Config::load(None).map_err(|e| e.0)?.auth.email_code;
        assert_eq!((e.ttl_secs, e.max_tries, e.lockout_secs, e.max_sends, e.send_window_secs), (600, 5, 900, 5, 3600));
        // The file, then the environment over it; the rest keep their defaults.
        jail.create_file("palisade.toml", "[auth.email_code]\nttl_secs = 300\nmax_tries = 3\nmax_sends = 9\n")?;
        jail.set_env("PALISADE_AUTH__EMAIL_CODE__MAX_SENDS", "2");
        jail.set_env("PALISADE_AUTH__EMAIL_CODE__LOCKOUT_SECS", "1800");
        let e = Config::load(None).map_err(|e| e.0)?.auth.email_code;
        assert_eq!((e.ttl_secs, e.max_tries, e.lockout_secs, e.max_sends, e.send_window_secs), (300, 3, 1800, 2, 3600));
        // Loading validates: a code that can never be tried is refused.
        jail.set_env("PALISADE_AUTH__EMAIL_CODE__MAX_TRIES", "0");
        let err = Config::load(None).unwrap_err().0;
        assert!(err.contains("auth.email_code"), "{err}");
        // A misspelt key is an error, not a silent default.
        jail.create_file("palisade.toml", "[auth.email_code]\nttl = 300\n")?;
        let err = Config::load(None).unwrap_err().0;
        assert!(err.contains("ttl"), "{err}");
        Ok(())
    });
    // Each bound, at its edge and just past it.
    type Edit = fn(&mut EmailCode);
    let cases: [(Edit, bool); 16] = [
        (|e| e.ttl_secs = 60, true),
        (|e| e.ttl_secs = 59, false),
        (|e| e.ttl_secs = 3600, true),
        (|e| e.ttl_secs = 3601, false),
        (|e| e.max_tries = 1, true),
        (|e| e.max_tries = 0, false),
        (|e| e.max_tries = 10, true),
        (|e| e.max_tries = 11, false),
        (|e| e.lockout_secs = 59, false),
        (|e| e.lockout_secs = 86_401, false),
        (|e| e.max_sends = 100, true),
        (|e| e.max_sends = 0, false),
        (|e| e.max_sends = 101, false),
        (|e| e.send_window_secs = 60, true),
        (|e| e.send_window_secs = 59, false),
        (|e| e.send_window_secs = 86_401, false),
    ];
    for (i, (edit, ok)) in cases.into_iter().enumerate() {
        let mut c = Config::default();
        edit(&mut c.auth.email_code);
        match c.validate() {
            Ok(()) => assert!(ok, "case {i}: {:?} was accepted", c.auth.email_code),
            Err(e) => assert!(!ok && e.0.contains("auth.email_code"), "case {i}: {:?}: {}", c.auth.email_code, e.0),
        }
    }
}
