//! What serde cannot check: values in range, URLs that parse, and (outside sandbox mode) that a
//! deployment names its real upstreams, credentials and keys. Each problem is named by its
//! dotted key, and all of them are reported at once.

use super::{Mode, SettingError, Settings, SettingsError};
use crate::secret::Secret;

impl Settings {
    /// Every check of the settings' own values, each problem named by its key (the checks that
    /// need another module's vocabulary, such as `[auth]`'s scopes, live in that module and
    /// `startup::validate` runs them with these). `providers` are the names of the registered
    /// providers: a `[providers.<name>]` for another name is refused. In sandbox mode the
    /// simulator fills the upstream parts in.
    pub fn validate(&self, mode: Mode, providers: &[&str]) -> Result<(), SettingsError> {
        let sandbox = mode == Mode::Sandbox;
        let mut errors = Vec::new();
        self.providers.check(providers, &self.aliased, &mut errors);
        let mut bad = |key: &str, problem: &str| {
            errors.push(SettingError {
                key: key.to_string(),
                problem: problem.to_string(),
            })
        };
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            bad("server.listen", "must be an address such as 0.0.0.0:8080");
        }
        if let Some(addr) = &self.telemetry.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "telemetry.metrics_listen",
                "must be an address such as 0.0.0.0:9090",
            );
        }
        if url::Url::parse(self.database.url.expose()).is_err() {
            bad(
                "database.url",
                "must be a URL such as postgres://user@host:5432/db",
            );
        }
        if !is_date(&self.juspay.version) || self.juspay.version.as_str() < "2019-09-17" {
            bad(
                "juspay.version",
                "must be a date YYYY-MM-DD no older than 2019-09-17",
            );
        }
        for (key, ms) in [
            (
                "upstream.connect_timeout_ms",
                self.upstream.connect_timeout_ms,
            ),
            (
                "upstream.request_deadline_ms",
                self.upstream.request_deadline_ms,
            ),
        ] {
            if ms == 0 {
                bad(key, "must be greater than 0");
            }
        }
        for (key, url) in [
            ("juspay.base_url", &self.juspay.base_url),
            ("razorpay.base_url", &self.razorpay.base_url),
        ] {
            match url {
                Some(u) if !is_http_url(u) => {
                    bad(key, "must be an http(s) URL such as https://api.juspay.in")
                }
                Some(_) => {}
                None if !sandbox => bad(
                    key,
                    "is required outside sandbox mode (use `serve --sandbox` to try the gateway without credentials)",
                ),
                None => {}
            }
        }
        if !sandbox {
            if self.juspay.api_key.as_ref().is_none_or(Secret::is_empty) {
                bad("juspay.api_key", "is required outside sandbox mode");
            }
            if self.razorpay.key_id.as_deref().unwrap_or("").is_empty() {
                bad("razorpay.key_id", "is required outside sandbox mode");
            }
            if self
                .razorpay
                .key_secret
                .as_ref()
                .is_none_or(Secret::is_empty)
            {
                bad("razorpay.key_secret", "is required outside sandbox mode");
            }
            if self.changes.encryption_key.is_none() {
                bad("changes.encryption_key", "is required outside sandbox mode");
            }
            if self.audit.hmac_key.is_none() {
                bad("audit.hmac_key", "is required outside sandbox mode");
            }
            if self.auth.callers.is_empty() {
                bad(
                    "auth.callers",
                    "at least one caller is required outside sandbox mode",
                );
            }
        }
        for (key, value) in [
            ("changes.encryption_key", &self.changes.encryption_key),
            ("audit.hmac_key", &self.audit.hmac_key),
        ] {
            if let Some(v) = value
                && crate::crypto::decode_key(v).is_err()
            {
                bad(key, "must be 32 bytes, base64-encoded");
            }
        }
        self.validate_limits(sandbox, &mut bad);
        if let Some(addr) = &self.telemetry.metrics_listen
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            bad(
                "telemetry.metrics_listen",
                "must be an address such as 0.0.0.0:9090",
            );
        }
        if self.database.health_check_interval_ms == 0 {
            bad(
                "database.health_check_interval_ms",
                "must be greater than 0",
            );
        }
        if self.database.max_batch == 0 {
            bad("database.max_batch", "must be at least 1");
        }
        if self.audit.checkpoint_interval_s == 0 {
            bad("audit.checkpoint_interval_s", "must be at least 1");
        }
        if self.audit.retention_months < 12 {
            bad(
                "audit.retention_months",
                "must be at least 12 (PCI DSS 10.5.1 keeps a year of audit history)",
            );
        }
        let c = &self.changes;
        if c.idempotency_retention_hours < 24 {
            bad(
                "changes.idempotency_retention_hours",
                "must be at least 24 (callers retry for a day)",
            );
        }
        if c.lease_ms < 1000 {
            bad("changes.lease_ms", "must be at least 1000");
        }
        if let Some(keys) = &c.previous_encryption_keys
            && crate::crypto::parse_key_list(keys).is_err()
        {
            bad(
                "changes.previous_encryption_keys",
                "must be `id:base64key` pairs separated by commas, each key 32 bytes",
            );
        }
        self.validate_webhooks(&mut |k: &str, p: &str| {
            errors.push(SettingError {
                key: k.to_string(),
                problem: p.to_string(),
            })
        });
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SettingsError::Invalid(errors))
        }
    }

    fn validate_webhooks(&self, bad: &mut impl FnMut(&str, &str)) {
        let w = &self.webhooks;
        for (key, n) in [
            ("webhooks.poll_interval_ms", w.poll_interval_ms),
            ("webhooks.attempt_timeout_ms", w.attempt_timeout_ms),
            ("webhooks.max_response_bytes", w.max_response_bytes as u64),
            ("webhooks.retry_base_ms", w.retry_base_ms),
            ("webhooks.max_age_hours", w.max_age_hours),
            ("webhooks.pause_ms", w.pause_ms),
        ] {
            if n == 0 {
                bad(key, "must be greater than 0");
            }
        }
        if w.batch_size < 1 {
            bad("webhooks.batch_size", "must be at least 1");
        }
        if w.max_in_flight_per_receiver < 1 {
            bad("webhooks.max_in_flight_per_receiver", "must be at least 1");
        }
        if w.max_connections < 1 {
            bad("webhooks.max_connections", "must be at least 1");
        }
        if w.pause_after_failures < 1 {
            bad("webhooks.pause_after_failures", "must be at least 1");
        }
        if w.retry_cap_ms < w.retry_base_ms {
            bad(
                "webhooks.retry_cap_ms",
                "must be at least webhooks.retry_base_ms",
            );
        }
    }

    /// The settings of issue 14 (limits and hostile peers), checked in one place.
    fn validate_limits(&self, sandbox: bool, bad: &mut impl FnMut(&str, &str)) {
        // The LISTEN connection for turn notifications lives outside the pool, but a pool of one
        // still serialises every request behind the group-commit writer.
        if self.database.max_connections < 2 {
            bad("database.max_connections", "must be at least 2");
        }
        for (key, n) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            ("server.max_connections", self.server.max_connections as u64),
            (
                "limits.max_inflight_patches",
                self.limits.max_inflight_patches as u64,
            ),
            (
                "limits.max_inflight_reads",
                self.limits.max_inflight_reads as u64,
            ),
            ("changes.turn_poll_ms", self.changes.turn_poll_ms),
        ] {
            if n == 0 {
                bad(key, "must be greater than 0");
            }
        }
        if self.changes.max_pending_per_user < 1 {
            bad("changes.max_pending_per_user", "must be at least 1");
        }
        let rates = std::iter::once((
            "limits".to_string(),
            self.limits.rate_per_s,
            self.limits.burst,
        ))
        .chain(
            self.auth
                .callers
                .iter()
                .enumerate()
                .map(|(i, c)| (format!("auth.callers[{i}]"), c.rate_per_s, c.burst)),
        );
        for (base, rate, burst) in rates {
            if rate.is_some_and(|r| !(r.is_finite() && r > 0.0)) {
                bad(
                    &format!("{base}.rate_per_s"),
                    "must be a number greater than 0",
                );
            }
            if burst == Some(0) {
                bad(&format!("{base}.burst"), "must be at least 1");
            }
        }
        if let Some(proxy) = &self.upstream.proxy
            && !is_http_url(proxy)
        {
            bad(
                "upstream.proxy",
                "must be an http(s) URL such as http://proxy:3128",
            );
        }
        if !sandbox && !self.upstream.allow_plain_http {
            for (key, url) in [
                ("juspay.base_url", &self.juspay.base_url),
                ("razorpay.base_url", &self.razorpay.base_url),
            ] {
                if let Some(u) = url
                    && is_http_url(u)
                    && !u.to_ascii_lowercase().starts_with("https://")
                {
                    bad(
                        key,
                        "must be https:// outside sandbox mode (the upstream credentials would cross in cleartext); set upstream.allow_plain_http = true to allow it",
                    );
                }
            }
        }
        if !sandbox
            && !self.database.allow_plaintext
            && let Some(why) = crate::db_tls::plaintext_risk(self.database.url.expose())
        {
            bad("database.url", &why);
        }
    }

    /// Settings that are allowed but weaken transport security; `serve` logs each at start and
    /// `check-config` prints them.
    pub fn warnings(&self, sandbox: bool) -> Vec<String> {
        let mut out = self.deprecations.clone();
        if sandbox {
            return out;
        }
        for (key, url) in [
            ("juspay.base_url", &self.juspay.base_url),
            ("razorpay.base_url", &self.razorpay.base_url),
        ] {
            if self.upstream.allow_plain_http
                && url
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
            {
                out.push(format!(
                    "{key} is plain http:// (upstream.allow_plain_http = true): credentials and PII cross in cleartext"
                ));
            }
        }
        for (i, c) in self.auth.callers.iter().enumerate() {
            if self.upstream.allow_plain_http
                && c.webhook_url
                    .as_deref()
                    .is_some_and(|u| u.to_ascii_lowercase().starts_with("http://"))
            {
                out.push(format!(
                    "auth.callers[{i}].webhook_url is plain http:// (upstream.allow_plain_http = true): webhook bodies cross in cleartext"
                ));
            }
        }
        if self.database.allow_plaintext
            && crate::db_tls::plaintext_risk(self.database.url.expose()).is_some()
        {
            out.push(
                "database.url may run without TLS (database.allow_plaintext = true)".to_string(),
            );
        }
        out
    }
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn is_date(s: &str) -> bool {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}
