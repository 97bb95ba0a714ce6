//! Field rules the upstreams document. Each returns the reason a value is refused, worded for
//! the `reason` member of the error body.

pub(crate) fn mobile_number(v: &str) -> Result<(), &'static str> {
    digits(v, 4, 15).map_err(|()| "must be 4 to 15 digits")
}

pub(crate) fn country_code(v: &str) -> Result<(), &'static str> {
    digits(v, 1, 4).map_err(|()| "must be 1 to 4 digits")
}

fn digits(v: &str, min: usize, max: usize) -> Result<(), ()> {
    let ok = (min..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit());
    if ok { Ok(()) } else { Err(()) }
}

/// Juspay's documented rule for names: alphanumerics and `().-_` only.
pub(crate) fn person_name(v: &str) -> Result<(), &'static str> {
    if v.is_empty() || v.len() > 255 {
        return Err("must be 1 to 255 characters");
    }
    if v.chars()
        .all(|c| c.is_ascii_alphanumeric() || "().-_".contains(c))
    {
        Ok(())
    } else {
        Err("may contain only letters, digits and ().-_")
    }
}

/// Juspay's documented rule for email addresses: the local part allows alphanumerics and
/// ``!#$%&'*+-/=?^_`.{|}~``, and must not start or end with `.` or `_`.
pub(crate) fn email(v: &str) -> Result<(), &'static str> {
    const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`.{|}~";
    let Some((local, domain)) = v.rsplit_once('@') else {
        return Err("must be an email address");
    };
    if local.is_empty() || local.len() > 64 || v.len() > 254 {
        return Err("must be an email address");
    }
    if !local
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
    {
        return Err("local part has a character that is not allowed");
    }
    if local.starts_with(['.', '_']) || local.ends_with(['.', '_']) || local.contains("..") {
        return Err("local part must not start or end with . or _ nor contain ..");
    }
    let labels_ok = domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if labels_ok {
        Ok(())
    } else {
        Err("domain is not valid")
    }
}

/// A UPI virtual payment address, `handle@psp`.
pub(crate) fn vpa(v: &str) -> Result<(), &'static str> {
    let Some((handle, psp)) = v.split_once('@') else {
        return Err("must be handle@psp");
    };
    let handle_ok = (2..=256).contains(&handle.len())
        && handle
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c));
    let psp_ok = (2..=64).contains(&psp.len()) && psp.chars().all(|c| c.is_ascii_alphanumeric());
    if handle_ok && psp_ok {
        Ok(())
    } else {
        Err("must be handle@psp")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_follow_the_documented_rules() {
        for ok in [
            "a@b.co",
            "jon.snow+x@example.com",
            "a!#$%&'*+-/=?^`{|}~z@x.in",
        ] {
            assert!(email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "plain",
            ".a@b.co",
            "a.@b.co",
            "_a@b.co",
            "a_@b.co",
            "a..b@b.co",
            "a b@c.co",
            "a@b",
            "a@-b.co",
            "a@b..co",
            "a(b)@c.co",
        ] {
            assert!(email(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_names_and_vpas() {
        assert!(mobile_number("9876543210").is_ok());
        assert!(mobile_number("123").is_err());
        assert!(mobile_number("+919876543210").is_err());
        assert!(mobile_number("1234567890123456").is_err());
        assert!(country_code("91").is_ok());
        assert!(country_code("12345").is_err());
        assert!(country_code("").is_err());
        assert!(person_name("Mary-Jane_(Jr.)").is_ok());
        assert!(person_name("Mary Jane").is_err());
        assert!(person_name("").is_err());
        assert!(vpa("alice@okaxis").is_ok());
        assert!(vpa("alice").is_err());
        assert!(vpa("a@b@c").is_err());
    }
}
