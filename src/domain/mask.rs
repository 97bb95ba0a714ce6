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

#[cfg(test)]
mod tests {
    #[test]
    fn masks() {
        assert_eq!(super::digits("9876547766"), "******7766");
        assert_eq!(super::digits("12345"), "***45");
        assert_eq!(super::email("jon@example.com"), "j***@example.com");
        assert_eq!(super::vpa("alice@okaxis"), "****@okaxis");
        assert_eq!(super::name("Alice"), "A***");
    }
}
