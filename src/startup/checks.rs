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
