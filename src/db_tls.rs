//! Whether a PostgreSQL URL would carry the change log (PII, sealed payloads) in cleartext over a
//! network. sqlx's default `sslmode=prefer` falls back to plaintext silently, so only `require`,
//! `verify-ca` and `verify-full` count as TLS; loopback and Unix sockets never leave the host.

use std::net::IpAddr;

/// Why the URL is refused outside sandbox mode, or `None` when it is safe.
pub fn plaintext_risk(database_url: &str) -> Option<String> {
    let url = url::Url::parse(database_url).ok()?;
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let mode = query("sslmode").unwrap_or_else(|| "prefer".into());
    if matches!(mode.as_str(), "require" | "verify-ca" | "verify-full") {
        return None;
    }
    // `?host=/var/run/postgresql` (or an empty host) is a Unix socket.
    if query("host").is_some_and(|h| h.starts_with('/')) {
        return None;
    }
    let host = url.host_str().unwrap_or("");
    if host.is_empty() || is_loopback(host) {
        return None;
    }
    Some(format!(
        "sslmode={mode} to a host that is not loopback can run in plaintext; use sslmode=verify-full with sslrootcert, or set database.allow_plaintext = true"
    ))
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::plaintext_risk;

    #[test]
    fn only_verified_or_local_connections_pass() {
        for ok in [
            "postgres://u@127.0.0.1:5432/db",
            "postgres://u@localhost/db",
            "postgres://u@[::1]/db",
            "postgres://u@db.internal/db?sslmode=require",
            "postgres://u@db.internal/db?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u@x/db?host=/var/run/postgresql",
        ] {
            assert_eq!(plaintext_risk(ok), None, "{ok}");
        }
        for risky in [
            "postgres://u@db.internal/db",
            "postgres://u@10.0.0.5/db?sslmode=prefer",
            "postgres://u@db.internal/db?sslmode=disable",
            "postgres://u@db.internal/db?sslmode=allow",
        ] {
            assert!(plaintext_risk(risky).is_some(), "{risky}");
        }
    }
}
