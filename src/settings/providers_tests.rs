//! `[providers.*]`, the old keys that moved there, the environment's typing, and `resolve`.
//! Over 400 lines because each compatibility rule of the old keys gets its own exact-string test.

use super::*;
use std::time::Duration;

const NAMES: &[&str] = &["juspay_customer", "juspay_wallet", "razorpay_upi"];

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn production() -> Vec<(&'static str, &'static str)> {
    let key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    vec![
        ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "https://api.juspay.in"),
        ("PROFILE_GATEWAY__JUSPAY__API_KEY", "k"),
        (
            "PROFILE_GATEWAY__RAZORPAY__BASE_URL",
            "https://api.razorpay.com",
        ),
        ("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "12345"),
        ("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "007"),
        ("PROFILE_GATEWAY__CHANGES__ENCRYPTION_KEY", key),
        ("PROFILE_GATEWAY__AUDIT__HMAC_KEY", key),
        (
            "PROFILE_GATEWAY__DATABASE__URL",
            "postgres://gw@127.0.0.1/pg",
        ),
    ]
}

fn with_caller(mut s: Settings) -> Settings {
    s.auth.callers.push(CallerSettings {
        name: "app".into(),
        token_sha256: Some("0".repeat(64)),
        scopes: vec!["profile:write".into()],
        ..Default::default()
    });
    s
}

#[test]
fn every_provider_starts_from_all_and_its_own_section_overrides_it() {
    let (_dir, path) = file(
        "[providers.all]\nmax_attempts = 4\n[providers.razorpay_upi]\nmax_attempts = 1\ntimeout_ms = 900\n",
    );
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    let rzp = s.traffic("razorpay_upi");
    assert_eq!(
        (rzp.max_attempts, rzp.timeout),
        (1, Duration::from_millis(900))
    );
    let jc = s.traffic("juspay_customer");
    assert_eq!(jc.max_attempts, 4);
    assert_eq!(jc.timeout, Duration::from_millis(5000), "all's default");
    assert_eq!(jc.in_request_attempts, 3);
    assert_eq!(jc.max_response_bytes, 65536);
    assert_eq!(jc.retry_budget_ratio, 0.2);
    assert_eq!(jc.breaker_open, Duration::from_millis(5000));
    assert!(s.warnings(false).is_empty(), "{:?}", s.warnings(false));
}

#[test]
fn provider_keys_load_from_the_environment_typed_by_their_field() {
    let s = Settings::load(
        None,
        env(&[
            (
                "PROFILE_GATEWAY__PROVIDERS__JUSPAY_WALLET__MAX_ATTEMPTS",
                "2",
            ),
            ("PROFILE_GATEWAY__PROVIDERS__ALL__RETRY_BUDGET_RATIO", "0.5"),
        ]),
    )
    .unwrap();
    assert_eq!(s.traffic("juspay_wallet").max_attempts, 2);
    assert_eq!(s.traffic("razorpay_upi").max_attempts, 5);
    assert_eq!(s.traffic("razorpay_upi").retry_budget_ratio, 0.5);
    let err = Settings::load(
        None,
        env(&[("PROFILE_GATEWAY__PROVIDERS__ALL__TIMEOUT_MS", "soon")]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("providers.all.timeout_ms"), "{err}");
    assert!(
        err.contains("PROFILE_GATEWAY__PROVIDERS__ALL__TIMEOUT_MS"),
        "{err}"
    );
}

#[test]
fn secrets_made_of_digits_stay_the_strings_they_were() {
    let s = Settings::load(None, env(&production())).unwrap();
    assert_eq!(s.razorpay.key_id.as_deref(), Some("12345"));
    assert_eq!(
        s.razorpay
            .key_secret
            .as_ref()
            .map(crate::secret::Secret::expose),
        Some("007")
    );
}

#[test]
fn old_keys_still_work_with_a_warning_and_an_explicit_new_key_wins() {
    let (_dir, path) = file(
        "[changes]\nmax_attempts = 2\nbreaker_open_ms = 700\n[juspay]\ntimeout_ms = 300\n[razorpay]\ntimeout_ms = 400\n[upstream]\nmax_response_bytes = 1024\n",
    );
    let s = Settings::load(
        Some(&path),
        env(&[
            ("PROFILE_GATEWAY__CHANGES__IN_REQUEST_ATTEMPTS", "1"),
            ("PROFILE_GATEWAY__PROVIDERS__ALL__BREAKER_OPEN_MS", "900"),
        ]),
    )
    .unwrap();
    let jc = s.traffic("juspay_customer");
    assert_eq!(jc.max_attempts, 2);
    assert_eq!(jc.in_request_attempts, 1);
    assert_eq!(jc.timeout, Duration::from_millis(300));
    assert_eq!(jc.max_response_bytes, 1024);
    assert_eq!(
        jc.breaker_open,
        Duration::from_millis(900),
        "the new key wins"
    );
    assert_eq!(
        s.traffic("juspay_wallet").timeout,
        Duration::from_millis(300)
    );
    assert_eq!(
        s.traffic("razorpay_upi").timeout,
        Duration::from_millis(400)
    );
    let w = s.warnings(false);
    assert_eq!(w.len(), 6, "{w:?}");
    assert!(
        w.contains(
            &"changes.max_attempts is deprecated; set providers.all.max_attempts instead"
                .to_string()
        ),
        "{w:?}"
    );
    assert!(
        w.contains(&"juspay.timeout_ms is deprecated; set providers.juspay_customer.timeout_ms and providers.juspay_wallet.timeout_ms instead".to_string()),
        "{w:?}"
    );
    assert!(
        w.iter().any(|l| l.starts_with(
            "changes.breaker_open_ms is deprecated and not used where providers.all.breaker_open_ms is set"
        )),
        "{w:?}"
    );
    assert_eq!(s.warnings(true).len(), 6, "said in sandbox mode too");
}

#[test]
fn a_section_for_a_provider_nobody_registered_is_refused_by_name() {
    let (_dir, path) = file("[providers.juspay_walet]\nmax_attempts = 1\n");
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    let err = s.validate(Mode::Sandbox, NAMES).unwrap_err().to_string();
    assert!(
        err.contains("providers.juspay_walet: no provider is named"),
        "{err}"
    );
    // A provider registered by the application is known by the names given at resolve time.
    assert!(
        s.validate(Mode::Sandbox, &["juspay_walet"]).is_ok(),
        "registered names come from the caller"
    );
    let (_dir, path) = file("[providers.razorpay_upi]\nmax_attemps = 1\n");
    let err = Settings::load(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("providers.razorpay_upi.max_attemps: unknown setting"),
        "{err}"
    );
}

#[test]
fn provider_values_out_of_range_are_named() {
    let (_dir, path) = file(
        "[providers.all]\nretry_budget_ratio = 2.0\n[providers.razorpay_upi]\nmax_attempts = 0\ntimeout_ms = 0\n",
    );
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    let err = s.validate(Mode::Sandbox, NAMES).unwrap_err().to_string();
    for key in [
        "providers.all.retry_budget_ratio",
        "providers.razorpay_upi.max_attempts",
        "providers.razorpay_upi.timeout_ms",
    ] {
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn a_registered_provider_may_keep_its_account_in_its_section() {
    let (_dir, path) = file(
        "[providers.second_wallet]\ntimeout_ms = 250\n[providers.second_wallet.account]\nbase_url = \"https://wallet.example\"\nmerchant = \"m-1\"\n",
    );
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    let section = s.providers.section("second_wallet").unwrap();
    assert_eq!(
        section.account.as_ref().map(Account::json),
        Some(&serde_json::json!({"base_url": "https://wallet.example", "merchant": "m-1"}))
    );
    let names = ["juspay_customer", "second_wallet"];
    let rt = s.resolve(Mode::Sandbox, &names);
    // Sandbox mode still needs the simulator's URLs, which `serve --sandbox` sets.
    let err = rt.unwrap_err().to_string();
    assert!(err.contains("juspay.base_url"), "{err}");
}

#[test]
fn resolve_gives_accounts_keys_and_each_providers_policy_without_options() {
    let mut pairs = production();
    pairs.push((
        "PROFILE_GATEWAY__PROVIDERS__RAZORPAY_UPI__MAX_ATTEMPTS",
        "1",
    ));
    let s = with_caller(Settings::load(None, env(&pairs)).unwrap());
    let rt = s.resolve(Mode::Production, NAMES).unwrap();
    assert_eq!(rt.juspay.base_url, "https://api.juspay.in");
    assert_eq!(rt.razorpay.key_id, "12345");
    assert_eq!(
        rt.keys.encryption_key.0,
        *b"0123456789abcdef0123456789abcdef"
    );
    assert_eq!(rt.traffic("razorpay_upi").max_attempts, 1);
    assert_eq!(rt.traffic("juspay_wallet").max_attempts, 5);
    assert!(
        !format!("{rt:?}").contains("0123456789abcdef"),
        "keys are redacted"
    );
    // Sandbox mode: the keys default to the fixed sandbox key.
    let s = Settings::load(
        None,
        env(&[
            ("PROFILE_GATEWAY__JUSPAY__BASE_URL", "http://127.0.0.1:1"),
            ("PROFILE_GATEWAY__JUSPAY__API_KEY", "k"),
            ("PROFILE_GATEWAY__RAZORPAY__BASE_URL", "http://127.0.0.1:1"),
            ("PROFILE_GATEWAY__RAZORPAY__KEY_ID", "i"),
            ("PROFILE_GATEWAY__RAZORPAY__KEY_SECRET", "s"),
        ]),
    )
    .unwrap();
    let rt = s.resolve(Mode::Sandbox, NAMES).unwrap();
    assert_eq!(rt.keys.hmac_key.0, *b"profile-gateway-sandbox-only-key");
    let err = s.resolve(Mode::Production, NAMES).unwrap_err().to_string();
    assert!(err.contains("changes.encryption_key"), "{err}");
}

fn load_err(path: Option<&std::path::Path>, pairs: &[(&str, &str)]) -> Vec<String> {
    match Settings::load(path, env(pairs)) {
        Err(SettingsError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected invalid settings, got {other:?}"),
    }
}

fn validate_err(text: &str) -> Vec<String> {
    let (_dir, path) = file(text);
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    match s.validate(Mode::Sandbox, NAMES) {
        Err(SettingsError::Invalid(errors)) => errors.iter().map(ToString::to_string).collect(),
        other => panic!("expected invalid settings, got {other:?}"),
    }
}

#[test]
fn a_variable_for_an_unknown_section_is_named_with_its_whole_key() {
    assert_eq!(
        load_err(None, &[("PROFILE_GATEWAY__FOO__BAR", "x")]),
        ["foo.bar: unknown setting (set by PROFILE_GATEWAY__FOO__BAR)"]
    );
}

#[test]
fn every_unknown_variable_is_named_at_once() {
    assert_eq!(
        load_err(
            None,
            &[
                ("PROFILE_GATEWAY__JUSPAY__APIKEY", "x"),
                ("PROFILE_GATEWAY__FOO__BAR", "x"),
                ("PROFILE_GATEWAY__SERVER__LISTEN", "127.0.0.1:1"),
                ("PROFILE_GATEWAY__CHANGES__LEASE", "1"),
            ]
        ),
        [
            "changes.lease: unknown setting (set by PROFILE_GATEWAY__CHANGES__LEASE)",
            "foo.bar: unknown setting (set by PROFILE_GATEWAY__FOO__BAR)",
            "juspay.apikey: unknown setting (set by PROFILE_GATEWAY__JUSPAY__APIKEY)",
        ]
    );
    // A file's problem comes first, the variables' after it.
    let (_dir, path) = file("[razorpay]\nkey_idd = \"x\"\n");
    assert_eq!(
        load_err(Some(&path), &[("PROFILE_GATEWAY__FOO__BAR", "x")]),
        [
            "razorpay.key_idd: unknown setting",
            "foo.bar: unknown setting (set by PROFILE_GATEWAY__FOO__BAR)",
        ]
    );
}

#[test]
fn an_old_key_with_a_bad_value_is_named_as_written() {
    assert_eq!(
        load_err(None, &[("PROFILE_GATEWAY__CHANGES__MAX_ATTEMPTS", "lots")]),
        [
            "changes.max_attempts: invalid type: string \"lots\", expected an integer (set by PROFILE_GATEWAY__CHANGES__MAX_ATTEMPTS)"
        ]
    );
    let (_dir, path) = file("[juspay]\ntimeout_ms = \"soon\"\n");
    assert_eq!(
        load_err(Some(&path), &[]),
        ["juspay.timeout_ms: invalid type: string \"soon\", expected an integer"]
    );
}

#[test]
fn an_old_key_out_of_range_is_named_as_written_once() {
    assert_eq!(
        validate_err("[changes]\nmax_attempts = 0\n"),
        ["changes.max_attempts: attempt limits must be at least 1"]
    );
    assert_eq!(
        validate_err("[razorpay]\ntimeout_ms = 0\n"),
        ["razorpay.timeout_ms: must be greater than 0"]
    );
    // One old key feeding both Juspay providers is one problem.
    assert_eq!(
        validate_err("[juspay]\ntimeout_ms = 0\n[upstream]\nmax_response_bytes = 0\n"),
        [
            "upstream.max_response_bytes: must be greater than 0",
            "juspay.timeout_ms: must be greater than 0",
        ]
    );
    // Under its new name, the new name.
    assert_eq!(
        validate_err("[providers.all]\nmax_attempts = 0\n"),
        ["providers.all.max_attempts: attempt limits must be at least 1"]
    );
}

#[test]
fn breaker_and_retry_budget_values_the_old_keys_took_still_start() {
    let (_dir, path) = file(
        "[changes]\nbreaker_open_ms = 0\nbreaker_failure_threshold = 0\nretry_budget_min_per_sec = -1.0\n[providers.razorpay_upi]\nbreaker_open_ms = 0\n",
    );
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    s.validate(Mode::Sandbox, NAMES).unwrap();
    let jc = s.traffic("juspay_customer");
    assert_eq!(jc.breaker_open, Duration::ZERO);
    assert_eq!(jc.breaker_failure_threshold, 0);
    assert_eq!(jc.retry_budget_min_per_sec, -1.0);
}

#[test]
fn an_account_where_none_is_read_is_refused_by_name() {
    let why = "is not read here: only a provider registered by the application keeps its account in its own section; the accounts of the built-in providers are [juspay] and [razorpay]";
    assert_eq!(
        validate_err(
            "[providers.all.account]\napi_key = \"k\"\n[providers.juspay_wallet.account]\napi_key = \"k\"\n"
        ),
        [
            format!("providers.all.account: {why}"),
            format!("providers.juspay_wallet.account: {why}"),
        ]
    );
}

#[test]
fn an_account_shows_its_keys_but_not_its_values() {
    let (_dir, path) = file(
        "[providers.second_wallet.account]\nbase_url = \"https://wallet.example\"\napi_key = \"hunter2\"\n[providers.second_wallet.account.oauth]\nsecret = \"s3cr3t\"\n",
    );
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    let account = s
        .providers
        .section("second_wallet")
        .unwrap()
        .account
        .as_ref();
    assert_eq!(
        format!("{:?}", account.unwrap()),
        r#"Account({"api_key": ****, "base_url": ****, "oauth": {"secret": ****}})"#
    );
    let printed = format!("{s:#?}");
    for value in ["hunter2", "s3cr3t", "wallet.example"] {
        assert!(!printed.contains(value), "{value} in {printed}");
    }
}

#[test]
fn an_old_provider_key_beside_a_new_all_key_wins_and_says_so() {
    let (_dir, path) = file("[juspay]\ntimeout_ms = 300\n[providers.all]\ntimeout_ms = 900\n");
    let s = Settings::load(Some(&path), env(&[])).unwrap();
    assert_eq!(
        s.traffic("juspay_wallet").timeout,
        Duration::from_millis(300)
    );
    assert_eq!(
        s.traffic("razorpay_upi").timeout,
        Duration::from_millis(900)
    );
    assert_eq!(
        s.warnings(false),
        [
            "juspay.timeout_ms is deprecated; set providers.juspay_customer.timeout_ms and providers.juspay_wallet.timeout_ms instead; until then it wins over providers.all.timeout_ms for those providers, as a provider's own key does"
        ]
    );
}
