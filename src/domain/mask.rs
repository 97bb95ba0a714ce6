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

/// `91` -> `91`: a country code identifies nobody. Anything but 1 to 4 digits (an upstream's
/// odd answer) is not a country code and shows nothing.
pub fn country_code(s: &str) -> String {
    if (1..=4).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        s.to_string()
    } else {
        "****".to_string()
    }
}

/// A UPI action (`change_vpa`, ...) or a UPI number's status (`active`, `inactive`,
/// `deregistered`, the statuses the actions lead to) shows as itself; any other value (an
/// upstream's odd answer) shows nothing.
pub fn upi_state(s: &str) -> String {
    use super::UpiAction;
    let known = UpiAction::ALL.iter().any(|a| {
        *a == s
            || UpiAction::parse(a)
                .map(|a| a.expected_status() == s)
                .unwrap_or(false)
    });
    if known {
        s.to_string()
    } else {
        "****".to_string()
    }
}

/// The mask of a profile field by its name ([`super::Field::mask`]); a name that is no field shows
/// nothing of its value.
pub fn field(field_name: &str, raw: &str) -> String {
    match super::Field::parse(field_name) {
        Some(f) => f.mask(raw),
        None => "****".to_string(),
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
        assert_eq!(super::field("mobile_country_code", "1684"), "1684");
        assert_eq!(super::field("action", "change_vpa"), "change_vpa");
        for status in ["active", "inactive", "deregistered"] {
            assert_eq!(super::field("action", status), status);
        }
        assert_eq!(super::field("fingerprint", "3f1c0d2e9a"), "****");
    }

    #[test]
    fn values_of_an_unexpected_shape_show_nothing() {
        // An upstream may answer anything; what is shown unmasked must be what these fields are.
        for odd in ["", "91234", "+91", "9 1", "alice@example.com", "９１"] {
            assert_eq!(super::field("mobile_country_code", odd), "****", "{odd:?}");
        }
        for odd in [
            "",
            "ACTIVE",
            "active ",
            "suspended",
            "9876543210",
            "alice@okaxis",
        ] {
            assert_eq!(super::field("action", odd), "****", "{odd:?}");
        }
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
