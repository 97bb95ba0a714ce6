//! Outcome webhooks, by the Standard Webhooks specification. A caller with a `webhook_url` gets an
//! event when one of its changes becomes final and when a step stays `unknown` after its
//! read-backs. The settle statement writes the event to the outbox (`webhook_events`) in the
//! transaction that records the outcome; every replica's [`dispatcher`] delivers it, never the
//! request path.

pub mod dispatcher;
pub mod signature;

use crate::domain::ChangeStatus;
use crate::settings::{CallerSettings, SettingError};
use signature::WebhookSecret;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Notify;

/// What happened to a change, as the `profile-gateway-event` header and the outbox name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    Applied,
    PartiallyApplied,
    Failed,
    /// A step whose outcome is still unknown after its last read-back: nobody knows whether the
    /// provider holds the new value.
    StepUnknown,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::Applied,
        EventType::PartiallyApplied,
        EventType::Failed,
        EventType::StepUnknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Applied => "change.applied",
            EventType::PartiallyApplied => "change.partially_applied",
            EventType::Failed => "change.failed",
            EventType::StepUnknown => "change.step_unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    /// The event of a change that became final with `status`.
    pub fn of_final(status: ChangeStatus) -> Option<Self> {
        match status {
            ChangeStatus::Applied => Some(EventType::Applied),
            ChangeStatus::PartiallyApplied => Some(EventType::PartiallyApplied),
            ChangeStatus::Failed => Some(EventType::Failed),
            ChangeStatus::Pending => None,
        }
    }
}

/// One caller's webhook.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub url: String,
    /// Every message is signed with each (more than one during a rotation).
    pub secrets: Vec<WebhookSecret>,
    pub events: Vec<EventType>,
}

impl Subscription {
    pub fn wants(&self, event: EventType) -> bool {
        self.events.contains(&event)
    }
}

/// The webhooks of every caller that has one, and the wake-up of this replica's dispatcher.
#[derive(Debug, Default)]
pub struct Webhooks {
    by_caller: HashMap<String, Subscription>,
    wake: Notify,
}

impl Webhooks {
    /// From `[[auth.callers]]`; the secret files are read here, once (a rotation is a restart).
    pub fn from_settings(callers: &[CallerSettings]) -> Result<Arc<Self>, String> {
        let mut by_caller = HashMap::new();
        for (i, c) in callers.iter().enumerate() {
            let Some(url) = &c.webhook_url else { continue };
            let secrets = read_secrets(c).map_err(|e| format!("auth.callers[{i}].{e}"))?;
            let events = match &c.webhook_events {
                None => EventType::ALL.to_vec(),
                Some(names) => names.iter().filter_map(|n| EventType::parse(n)).collect(),
            };
            by_caller.insert(
                c.name.clone(),
                Subscription {
                    url: url.clone(),
                    secrets,
                    events,
                },
            );
        }
        Ok(Arc::new(Self {
            by_caller,
            wake: Notify::new(),
        }))
    }

    pub fn get(&self, caller: &str) -> Option<&Subscription> {
        self.by_caller.get(caller)
    }

    /// The callers that have a webhook.
    pub fn callers(&self) -> Vec<String> {
        self.by_caller.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.by_caller.is_empty()
    }

    /// An event was committed here: deliver it now rather than at the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await
    }
}

/// The secret of a caller entry: set directly by sandbox mode (the published demo secret), else
/// read from `webhook_secret_file`.
fn read_secrets(c: &CallerSettings) -> Result<Vec<WebhookSecret>, String> {
    if let Some(s) = &c.webhook_secret {
        return signature::parse_secrets(s.expose()).map_err(|e| format!("webhook_secret: {e}"));
    }
    let Some(path) = &c.webhook_secret_file else {
        return Err("webhook_secret_file: is required with webhook_url".into());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("webhook_secret_file: cannot read {}: {e}", path.display()))?;
    signature::parse_secrets(&text)
        .map_err(|e| format!("webhook_secret_file: {} {e}", path.display()))
}

/// The start-up checks of every caller's webhook settings.
pub fn validate_settings(
    callers: &[CallerSettings],
    sandbox: bool,
    allow_plain_http: bool,
) -> Vec<SettingError> {
    let mut errors = Vec::new();
    for (i, c) in callers.iter().enumerate() {
        let mut bad = |field: &str, problem: String| {
            errors.push(SettingError {
                key: format!("auth.callers[{i}].{field}"),
                problem,
            })
        };
        let Some(url) = &c.webhook_url else {
            if c.webhook_secret_file.is_some() || c.webhook_events.is_some() {
                bad(
                    "webhook_url",
                    "webhook_secret_file and webhook_events need webhook_url".into(),
                );
            }
            continue;
        };
        match url::Url::parse(url) {
            Ok(u) if u.scheme() == "https" && u.has_host() => {}
            Ok(u) if u.scheme() == "http" && u.has_host() => {
                if !(sandbox || allow_plain_http) {
                    bad(
                        "webhook_url",
                        "must be https:// outside sandbox mode (event bodies and signatures would cross in cleartext); set upstream.allow_plain_http = true to allow it".into(),
                    );
                }
            }
            _ => bad(
                "webhook_url",
                "must be an http(s) URL such as https://app.internal/webhooks".into(),
            ),
        }
        if let Err(e) = read_secrets(c) {
            let (field, problem) = e.split_once(": ").unwrap_or(("webhook_secret_file", &e));
            bad(field, problem.to_string());
        }
        if let Some(events) = &c.webhook_events {
            if events.is_empty() {
                bad(
                    "webhook_events",
                    "must list at least one event (leave it out for all)".into(),
                );
            }
            let known: Vec<&str> = EventType::ALL.iter().map(|e| e.as_str()).collect();
            for (j, e) in events.iter().enumerate() {
                if EventType::parse(e).is_none() {
                    bad(
                        &format!("webhook_events[{j}]"),
                        format!("unknown event `{e}` (known: {})", known.join(", ")),
                    );
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(url: Option<&str>, secret_file: Option<std::path::PathBuf>) -> CallerSettings {
        CallerSettings {
            name: "app".into(),
            webhook_url: url.map(String::from),
            webhook_secret_file: secret_file,
            ..Default::default()
        }
    }

    fn problems(c: CallerSettings, sandbox: bool, plain: bool) -> Vec<String> {
        validate_settings(&[c], sandbox, plain)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn webhook_settings_are_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\n").unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not-a-secret").unwrap();

        let ok = caller(Some("https://app.internal/hooks"), Some(good.clone()));
        assert!(problems(ok.clone(), false, false).is_empty());
        let plain = caller(Some("http://app.internal/hooks"), Some(good.clone()));
        let p = problems(plain.clone(), false, false);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("auth.callers[0].webhook_url: must be https://"),
            "{p:?}"
        );
        assert!(problems(plain.clone(), true, false).is_empty());
        assert!(problems(plain.clone(), false, true).is_empty());
        // Allowed, but said at start and by check-config.
        let mut s = crate::settings::Settings::load(None, Vec::<(String, String)>::new()).unwrap();
        s.upstream.allow_plain_http = true;
        s.auth.callers = vec![plain];
        assert_eq!(
            s.warnings(false),
            [
                "auth.callers[0].webhook_url is plain http:// (upstream.allow_plain_http = true): webhook bodies cross in cleartext"
            ]
        );

        let p = problems(caller(Some("https://x/h"), Some(bad)), false, false);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("auth.callers[0].webhook_secret_file: ")
                && p[0].ends_with("must start with `whsec_`"),
            "{p:?}"
        );
        let p = problems(caller(Some("https://x/h"), None), false, false);
        assert_eq!(
            p,
            ["auth.callers[0].webhook_secret_file: is required with webhook_url"]
        );
        let p = problems(caller(None, Some(good.clone())), false, false);
        assert_eq!(
            p,
            [
                "auth.callers[0].webhook_url: webhook_secret_file and webhook_events need webhook_url"
            ]
        );
        let p = problems(
            CallerSettings {
                webhook_events: Some(vec!["change.applied".into(), "change.done".into()]),
                ..ok
            },
            false,
            false,
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("auth.callers[0].webhook_events[1]: unknown event `change.done`"),
            "{p:?}"
        );
    }

    #[test]
    fn subscriptions_default_to_every_event() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s");
        std::fs::write(&file, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let mut only_failed = caller(Some("https://x/h"), Some(file.clone()));
        only_failed.name = "b".into();
        only_failed.webhook_events = Some(vec!["change.failed".into()]);
        let hooks =
            Webhooks::from_settings(&[caller(Some("https://x/h"), Some(file)), only_failed])
                .unwrap();
        assert!(
            EventType::ALL
                .iter()
                .all(|e| hooks.get("app").unwrap().wants(*e))
        );
        let b = hooks.get("b").unwrap();
        assert!(b.wants(EventType::Failed) && !b.wants(EventType::Applied));
        assert!(hooks.get("nobody").is_none());
    }
}
