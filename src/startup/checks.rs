//! The start-up checks of the settings, gathered from the modules that own them.

use crate::providers::Registry;
use crate::settings::{Mode, Settings, SettingsError};

/// The names of the standard providers, for [`validate`] where no other registry is in
/// play (`check-config`, the audit commands).
pub fn provider_names() -> Vec<&'static str> {
    Registry::standard()
        .specs()
        .iter()
        .map(|s| s.target.as_str())
        .collect()
}

/// Every start-up check of `settings` (what `check-config` runs): the settings' own, then those
/// of the modules that read a section (`[auth]`'s callers and issuers, the callers' webhooks),
/// which live beside the code that uses them. Every problem is reported at once.
pub fn validate(settings: &Settings, mode: Mode, providers: &[&str]) -> Result<(), SettingsError> {
    with_module_checks(settings, mode, settings.validate(mode, providers))
}

pub(super) fn with_module_checks<T>(
    settings: &Settings,
    mode: Mode,
    result: Result<T, SettingsError>,
) -> Result<T, SettingsError> {
    let mut more = crate::auth::validate_settings(&settings.auth);
    more.extend(crate::webhooks::validate_settings(
        &settings.auth.callers,
        mode == Mode::Sandbox,
        settings.upstream.allow_plain_http,
    ));
    match result {
        Ok(value) if more.is_empty() => Ok(value),
        Ok(_) => Err(SettingsError::Invalid(more)),
        Err(SettingsError::Invalid(mut errors)) => {
            errors.extend(more);
            Err(SettingsError::Invalid(errors))
        }
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::CallerSettings;

    #[test]
    fn the_settings_and_their_modules_checks_are_reported_together() {
        let mut s = Settings::load(None, Vec::new()).unwrap();
        assert!(validate(&s, Mode::Sandbox, &provider_names()).is_ok());
        s.auth.callers.push(CallerSettings {
            name: "app".into(),
            token_sha256: Some("0".repeat(64)),
            scopes: vec!["profile:wrte".into()],
            webhook_url: Some("ftp://app.internal".into()),
            ..Default::default()
        });
        let err = validate(&s, Mode::Production, &provider_names())
            .unwrap_err()
            .to_string();
        for part in [
            "juspay.base_url: ",
            "auth.callers[0].scopes[0]: unknown scope `profile:wrte`",
            "auth.callers[0].webhook_url: must be an http(s) URL",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
        // A module's check alone still fails the start.
        let err = validate(&s, Mode::Sandbox, &provider_names())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown scope"), "{err}");
        assert!(!err.contains("juspay.base_url"), "{err}");
    }
}
