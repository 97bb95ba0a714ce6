//! Display masks for PII: what logs, responses and audit rows may show instead of the value.

/// `9876547766` -> `******7766`.
pub fn digits(s: &str) -> String {
    let n = s.chars().count();
    let keep = if n > 6 { 4 } else { n.min(2) };
    let hidden = n - keep;
    let tail: String = s.chars().skip(hidden).collect();
    format!("{}{}", "*".repeat(hidden), tail)
}

/// `jon@example.com` -> `j***@example.com`.
pub fn email(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".to_string(),
    }
}

/// `alice@okaxis` -> `****@okaxis`: the PSP handle is not personal, the user handle is.
pub fn vpa(s: &str) -> String {
    match s.rsplit_once('@') {
        Some((_, psp)) => format!("****@{psp}"),
        None => "****".to_string(),
    }
}

/// `Alice` -> `A***`.
pub fn name(s: &str) -> String {
    let first: String = s.chars().take(1).collect();
    format!("{first}***")
}

/// Country codes identify nobody.
pub fn none(s: &str) -> String {
    s.to_string()
}

/// The mask of a profile field by its name: the one table the audit trail's values and a dry
/// run's current values are both masked by. A name not listed here shows nothing of its value.
pub fn field(field_name: &str, raw: &str) -> String {
    match field_name {
        "mobile_number" | "upi_number" => digits(raw),
        "email_address" => email(raw),
        "first_name" | "last_name" => name(raw),
        "vpa" => vpa(raw),
        // A country code, an action or a UPI number's status identify nobody.
        "mobile_country_code" | "action" => none(raw),
        _ => "****".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fields_are_masked_by_name() {
        assert_eq!(super::field("mobile_number", "9876547766"), "******7766");
        assert_eq!(super::field("upi_number", "912345678"), "*****5678");
        assert_eq!(
            super::field("email_address", "jon@example.com"),
            "j***@example.com"
        );
        assert_eq!(super::field("first_name", "Alice"), "A***");
        assert_eq!(super::field("vpa", "alice@okaxis"), "****@okaxis");
        assert_eq!(super::field("mobile_country_code", "91"), "91");
        assert_eq!(super::field("action", "active"), "active");
        assert_eq!(super::field("fingerprint", "3f1c0d2e9a"), "****");
    }

    #[test]
    fn masks() {
        assert_eq!(super::digits("9876547766"), "******7766");
        assert_eq!(super::digits("12345"), "***45");
        assert_eq!(super::email("jon@example.com"), "j***@example.com");
        assert_eq!(super::vpa("alice@okaxis"), "****@okaxis");
        assert_eq!(super::name("Alice"), "A***");
    }
}
