use super::*;
use crate::secret::Secret;

/// The providers the gateway registers today.
const NAMES: &[&str] = &["juspay_customer", "juspay_wallet", "razorpay_upi"];

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_load_and_need_upstreams_outside_sandbox() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s.juspay.version, "2023-06-30");
    assert_eq!(
        s.traffic("juspay_customer").timeout,
        Duration::from_millis(5000)
    );
    assert_eq!(s.upstream.request_deadline_ms, 15000);
    assert!(s.validate(Mode::Sandbox, NAMES).is_ok());
    let err = s.validate(Mode::Production, NAMES).unwrap_err().to_string();
    for key in [
        "juspay.base_url",
        "juspay.api_key",
        "razorpay.base_url",
        "razorpay.key_id",
        "razorpay.key_secret",
        "changes.encryption_key",
        "audit.hmac_key",
        "auth.callers",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[test]
fn env_overrides_file_and_database_url_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[juspay]\nbase_url = \"https://file.example\"\ntimeout_ms = 100\n",
    )
    .unwrap();
    let s = Settings::load(
        Some(&path),
        env(&[
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://env.example"),
            ("DATABASE_URL", "postgres://x@db/one"),
        ]),
    )
    .unwrap();
    assert_eq!(s.juspay.base_url.as_deref(), Some("https://env.example"));
    assert_eq!(
        s.traffic("juspay_customer").timeout,
        Duration::from_millis(100)
    );
    assert_eq!(s.database.url.expose(), "postgres://x@db/one");

    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__DATABASE__URL", "postgres://x@db/prefixed"),
            ("DATABASE_URL", "postgres://x@db/plain"),
        ]),
    )
    .unwrap();
    assert_eq!(s.database.url.expose(), "postgres://x@db/prefixed");
}

#[test]
fn unknown_and_malformed_keys_are_named() {
    let err = Settings::load(None, env(&[("PROFILE_GATEWAY__JUSPAY__APIKEY", "x")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("juspay.apikey"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[razorpay]\nkey_idd = \"x\"\n").unwrap();
    let err = Settings::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("key_idd"), "{err}");

    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "not a url"),
            ("PROFILE_GATEWAY__JUSPAY__VERSION", "2018-01-01"),
            ("PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY", "c2hvcnQ="),
        ]),
    )
    .unwrap();
    let err = s.validate(Mode::Sandbox, NAMES).unwrap_err().to_string();
    assert!(
        err.contains("juspay.base_url: must be an http(s) URL"),
        "{err}"
    );
    assert!(err.contains("juspay.version"), "{err}");
    assert!(
        err.contains("changes.encryption_key: must be 32 bytes"),
        "{err}"
    );
}

#[test]
fn a_file_value_a_variable_overrides_is_not_reported_and_the_real_error_is() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[changes]\nlease_ms = \"TODO\"\n[razorpay]\nkey_idd = \"x\"\n",
    )
    .unwrap();
    // Several times: which problem serde meets first depends on a map's order.
    for _ in 0..8 {
        let err = Settings::load(
            Some(&path),
            env(&[("PROFILE_GATEWAY__CHANGES__LEASE_MS", "30000")]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("razorpay.key_idd"), "{err}");
        assert!(!err.contains("lease_ms"), "{err}");
    }
}

fn production(extra: &[(&str, &str)]) -> Result<(), String> {
    let mut pairs = vec![
        ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://api.juspay.in"),
        ("PROFILE_GATEWAY__JUSPAY__API_KEY", "k"),
        (
            "PROFILE_GATEWAY__RAZORPAY__BASE_URL",
            "https://api.razorpay.com",
        ),
        ("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "id"),
        ("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "secret"),
        (
            "PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
        (
            "PROFILE_GATEWAY__AUDIT__HMAC_KEY",
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        ),
    ];
    pairs.extend_from_slice(extra);
    let mut s = Settings::load(None, env(&pairs)).map_err(|e| e.to_string())?;
    s.auth.callers.push(CallerSettings {
        name: "app".into(),
        token_sha256: Some("0".repeat(64)),
        scopes: vec!["profile:write".into()],
        ..Default::default()
    });
    s.validate(Mode::Production, NAMES)
        .map_err(|e| e.to_string())
}

#[test]
fn transport_security_and_limits_are_validated() {
    assert_eq!(production(&[]), Ok(()));
    let err =
        production(&[("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://api.juspay.in")]).unwrap_err();
    assert!(err.contains("juspay.base_url: must be https://"), "{err}");
    assert_eq!(
        production(&[
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://10.0.0.1:8080"),
            ("PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP", "true"),
        ]),
        Ok(())
    );
    let err = production(&[(
        "PROFILE_GATEWAY__DATABASE__URL",
        "postgres://gw@db.internal:5432/pg",
    )])
    .unwrap_err();
    assert!(err.contains("database.url: sslmode=prefer"), "{err}");
    for ok in [
        "postgres://gw@db.internal/pg?sslmode=verify-full&sslrootcert=/ca.pem",
        "postgres://gw@127.0.0.1/pg",
    ] {
        assert_eq!(
            production(&[("PROFILE_GATEWAY__DATABASE__URL", ok)]),
            Ok(())
        );
    }
    assert_eq!(
        production(&[
            (
                "PROFILE_GATEWAY__DATABASE__URL",
                "postgres://gw@db.internal/pg"
            ),
            ("PROFILE_GATEWAY__DATABASE__ALLOW_PLAINTEXT", "true"),
        ]),
        Ok(())
    );
    let err = production(&[("PROFILE_GATEWAY__DATABASE__MAX_CONNECTIONS", "1")]).unwrap_err();
    assert!(
        err.contains("database.max_connections: must be at least 2"),
        "{err}"
    );
    let err = production(&[
        ("PROFILE_GATEWAY__LIMITS__RATE_PER_S", "0"),
        ("PROFILE_GATEWAY__LIMITS__BURST", "0"),
        ("PROFILE_GATEWAY__CHANGES__MAX_PENDING_PER_USER", "0"),
        ("PROFILE_GATEWAY__SERVER__HEADER_READ_TIMEOUT_MS", "0"),
        ("PROFILE_GATEWAY__UPSTREAM__PROXY", "not a url"),
    ])
    .unwrap_err();
    for key in [
        "limits.rate_per_s",
        "limits.burst",
        "changes.max_pending_per_user",
        "server.header_read_timeout_ms",
        "upstream.proxy",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
    // Allowed, but said at start and by check-config.
    let mut s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://10.0.0.1:8080"),
            ("PROFILE_GATEWAY__UPSTREAM__ALLOW_PLAIN_HTTP", "true"),
            (
                "PROFILE_GATEWAY__DATABASE__URL",
                "postgres://gw@db.internal/pg",
            ),
            ("PROFILE_GATEWAY__DATABASE__ALLOW_PLAINTEXT", "true"),
        ]),
    )
    .unwrap();
    let w = s.warnings(false);
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("juspay.base_url is plain http://"),
        "{w:?}"
    );
    assert!(
        w[1].starts_with("database.url may run without TLS"),
        "{w:?}"
    );
    s.upstream.allow_plain_http = false;
    s.database.allow_plaintext = false;
    assert!(s.warnings(false).is_empty());
    // Sandbox mode talks to the local simulator over plain HTTP.
    let s = Settings::load(
        None,
        env(&[("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://127.0.0.1:1")]),
    )
    .unwrap();
    assert!(s.validate(Mode::Sandbox, NAMES).is_ok());
    assert!(s.warnings(true).is_empty());
}

#[test]
fn later_config_files_override_earlier_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let secrets = dir.path().join("secrets.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://app@db/config\"\nmax_connections = 7\n",
    )
    .unwrap();
    std::fs::write(
        &secrets,
        "[database]\nurl = \"postgres://app:pw@db/secret\"\n[razorpay]\nkey_secret = \"rzp\"\n",
    )
    .unwrap();
    let s = Settings::load_layers(&[&config, &secrets], env(&[])).unwrap();
    assert_eq!(s.database.url.expose(), "postgres://app:pw@db/secret");
    assert_eq!(s.database.max_connections, 7);
    assert_eq!(
        s.razorpay.key_secret.as_ref().map(Secret::expose),
        Some("rzp")
    );
    let err = Settings::load_layers(&[config, dir.path().join("missing.toml")], env(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.toml"), "{err}");
}

#[test]
fn telemetry_settings_load_from_the_environment_and_are_checked() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(s.telemetry.metrics_listen, None);
    assert!(s.telemetry.propagate_trace_context);
    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__TELEMETRY__METRICS_LISTEN", "0.0.0.0:9090"),
            (
                "PROFILE_GATEWAY__TELEMETRY__PROPAGATE_TRACE_CONTEXT",
                "false",
            ),
        ]),
    )
    .unwrap();
    assert_eq!(s.telemetry.metrics_listen.as_deref(), Some("0.0.0.0:9090"));
    assert!(!s.telemetry.propagate_trace_context);
    assert!(s.validate(Mode::Sandbox, NAMES).is_ok());
    let s = Settings::load(
        None,
        env(&[("PROFILE_GATEWAY__TELEMETRY__METRICS_LISTEN", "9090")]),
    )
    .unwrap();
    let err = s.validate(Mode::Sandbox, NAMES).unwrap_err().to_string();
    assert!(err.contains("telemetry.metrics_listen"), "{err}");
}

#[test]
fn webhook_dispatcher_settings_load_from_the_environment_and_are_checked() {
    let s = Settings::load(None, env(&[])).unwrap();
    assert_eq!(
        (s.webhooks.max_age_hours, s.webhooks.attempt_timeout_ms),
        (24, 10000)
    );
    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__WEBHOOKS__BATCH_SIZE", "5"),
            ("PROFILE_GATEWAY__WEBHOOKS__MAX_IN_FLIGHT_PER_RECEIVER", "2"),
            ("PROFILE_GATEWAY__WEBHOOKS__MAX_CONNECTIONS", "4"),
            ("PROFILE_GATEWAY__WEBHOOKS__PAUSE_AFTER_FAILURES", "3"),
            ("PROFILE_GATEWAY__WEBHOOKS__MAX_AGE_HOURS", "48"),
        ]),
    )
    .unwrap();
    assert_eq!(
        (
            s.webhooks.batch_size,
            s.webhooks.max_in_flight_per_receiver,
            s.webhooks.max_connections,
            s.webhooks.pause_after_failures,
            s.webhooks.max_age_hours
        ),
        (5, 2, 4, 3, 48)
    );
    assert!(s.validate(Mode::Sandbox, NAMES).is_ok());
    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__WEBHOOKS__BATCH_SIZE", "0"),
            ("PROFILE_GATEWAY__WEBHOOKS__MAX_IN_FLIGHT_PER_RECEIVER", "0"),
            ("PROFILE_GATEWAY__WEBHOOKS__MAX_CONNECTIONS", "0"),
            ("PROFILE_GATEWAY__WEBHOOKS__ATTEMPT_TIMEOUT_MS", "0"),
            ("PROFILE_GATEWAY__WEBHOOKS__RETRY_CAP_MS", "10"),
        ]),
    )
    .unwrap();
    let err = s.validate(Mode::Sandbox, NAMES).unwrap_err().to_string();
    for key in [
        "webhooks.batch_size",
        "webhooks.max_in_flight_per_receiver",
        "webhooks.max_connections",
        "webhooks.attempt_timeout_ms",
        "webhooks.retry_cap_ms",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn secrets_do_not_show_in_debug() {
    let s = Settings::load(
        None,
        env(&[("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "very-secret-value")]),
    )
    .unwrap();
    assert!(!format!("{s:?}").contains("very-secret-value"));
}
