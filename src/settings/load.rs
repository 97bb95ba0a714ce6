//! Where settings come from: `config/default.toml` (compiled in), then the files in order, then
//! `PROFILE_GATEWAY__SECTION__KEY` environment variables, last wins. `DATABASE_URL` is honoured
//! below the prefixed variable. Keys that moved are carried to their new place here, so nothing
//! after loading knows the old names.

use super::providers::{ALIASES, ALL};
use super::{SettingError, Settings, SettingsError};
use config::{Config, ConfigBuilder, Map, Value, ValueKind, builder::DefaultState};
use std::collections::BTreeMap;
use std::path::Path;

const DEFAULTS: &str = include_str!("../../config/default.toml");

const ENV_PREFIX: &str = "PROFILE_GATEWAY";

/// The compiled-in defaults alone.
pub(super) fn defaults() -> Result<Settings, SettingsError> {
    Settings::load_layers::<&Path>(&[], Vec::new())
}

impl Settings {
    /// Loads defaults, then `file`, then the environment given as an iterator (the process
    /// environment in `main`, a fixed map in tests).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        Self::load_layers(file.as_slice(), env)
    }

    /// Like [`Settings::load`] with several files, each overriding the ones before it: the
    /// deployment's `gateway.toml` from a ConfigMap, then a `secrets.toml` mounted from a Secret,
    /// so no credential ever has to sit in the environment.
    pub fn load_layers<P: AsRef<Path>>(
        files: &[P],
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let overrides = env_overrides(env);
        match build(files, &overrides) {
            Err(SettingsError::Invalid(first)) => {
                // serde stops at the first problem, and which one is first depends on the order
                // of a map. The files alone, then each variable alone over the defaults, name
                // every bad key at once, as a misspelt environment is usually more than one.
                // A file value a variable overrides is not an error of the whole, and the
                // combined build's own error is always kept, so the re-checks can only add.
                let mut errors: Vec<SettingError> = invalid(build(files, &BTreeMap::new()))
                    .into_iter()
                    .filter(|e| !overrides.contains_key(&e.key))
                    .collect();
                for (key, o) in &overrides {
                    let alone = BTreeMap::from([(key.clone(), o.clone())]);
                    errors.extend(invalid(build::<&Path>(&[], &alone)));
                }
                for e in first.into_iter().rev() {
                    if !errors.iter().any(|x| x.key == e.key) {
                        errors.insert(0, e);
                    }
                }
                Err(SettingsError::Invalid(errors))
            }
            other => other,
        }
    }
}

fn invalid(built: Result<Settings, SettingsError>) -> Vec<SettingError> {
    match built {
        Err(SettingsError::Invalid(errors)) => errors,
        _ => Vec::new(),
    }
}

fn build<P: AsRef<Path>>(
    files: &[P],
    overrides: &BTreeMap<String, Override>,
) -> Result<Settings, SettingsError> {
    let load = |e: config::ConfigError| SettingsError::Load(e.to_string());
    // The operator's layers alone tell which keys were set on purpose, and so whether a new
    // key or its old alias speaks.
    let explicit = layers(Config::builder(), files, overrides)?
        .build()
        .map_err(load)?;
    let with_defaults =
        Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
    let mut table: Map<String, Value> = layers(with_defaults, files, overrides)?
        .build()
        .map_err(load)?
        .try_deserialize()
        .map_err(load)?;
    let (deprecations, aliased) = move_aliases(&mut table, &explicit);
    let root = Value::new(None, ValueKind::Table(table));
    let mut settings: Settings = serde_path_to_error::deserialize(root)
        .map_err(|e| SettingsError::Invalid(vec![named(e, overrides, &aliased)]))?;
    settings.deprecations = deprecations;
    settings.aliased = aliased;
    Ok(settings)
}

/// A variable's dotted key and the variable's name, e.g. `juspay.api_key` and
/// `PROFILE_GATEWAY__JUSPAY__API_KEY`.
#[derive(Clone)]
struct Override {
    value: String,
    variable: String,
}

fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> BTreeMap<String, Override> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut out = BTreeMap::new();
    for (name, value) in env {
        if name == "DATABASE_URL" {
            out.entry("database.url".to_string()).or_insert(Override {
                value,
                variable: name,
            });
            continue;
        }
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        // The prefixed variable beats DATABASE_URL whatever the iteration order.
        out.insert(
            key,
            Override {
                value,
                variable: name,
            },
        );
    }
    out
}

/// Values stay strings: `config` converts them to the field's type as it deserializes (a
/// secret of digits stays the string it was), and a value that does not convert is an error
/// naming its key.
fn layers<P: AsRef<Path>>(
    mut builder: ConfigBuilder<DefaultState>,
    files: &[P],
    overrides: &BTreeMap<String, Override>,
) -> Result<ConfigBuilder<DefaultState>, SettingsError> {
    for path in files {
        builder = builder.add_source(
            config::File::from(path.as_ref())
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    for (key, o) in overrides {
        builder = builder
            .set_override(key.as_str(), o.value.as_str())
            .map_err(|e| SettingsError::Load(format!("{}: {e}", o.variable)))?;
    }
    Ok(builder)
}

/// Carries every old key that is set to its new place (unless the operator set the new one too)
/// and drops it, returning one warning per old key, and each new key that took an old key's
/// value with the old key's name, so that a problem with the value names the key the operator
/// wrote.
fn move_aliases(
    table: &mut Map<String, Value>,
    explicit: &Config,
) -> (Vec<String>, BTreeMap<String, String>) {
    let mut warnings = Vec::new();
    let mut aliased = BTreeMap::new();
    for (old, new) in ALIASES {
        let Some(value) = remove(table, old) else {
            continue;
        };
        let mut ignored = Vec::new();
        // An old account key maps to a provider's own section, which is more specific than
        // `providers.all`, and so wins over it as any provider's own key does.
        let mut beaten = Vec::new();
        for key in *new {
            if explicit.get::<Value>(key).is_ok() {
                ignored.push(*key);
                continue;
            }
            insert(table, key, value.clone());
            aliased.insert(key.to_string(), old.to_string());
            if let Some(all) = all_key(key)
                && explicit.get::<Value>(&all).is_ok()
                && !beaten.contains(&all)
            {
                beaten.push(all);
            }
        }
        let target = new.join(" and ");
        let mut warning = if ignored.is_empty() {
            format!("{old} is deprecated; set {target} instead")
        } else {
            format!(
                "{old} is deprecated and not used where {} is set; set {target} instead",
                ignored.join(" and ")
            )
        };
        if !beaten.is_empty() {
            warning.push_str(&format!(
                "; until then it wins over {} for those providers, as a provider's own key does",
                beaten.join(" and ")
            ));
        }
        warnings.push(warning);
    }
    (warnings, aliased)
}

/// `providers.all.<key>` for a key of one provider's own section.
fn all_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix("providers.")?;
    let (provider, leaf) = rest.split_once('.')?;
    (provider != ALL).then(|| format!("providers.{ALL}.{leaf}"))
}

fn remove(table: &mut Map<String, Value>, key: &str) -> Option<Value> {
    let (parents, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut t = table;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        match &mut t.get_mut(part)?.kind {
            ValueKind::Table(inner) => t = inner,
            _ => return None,
        }
    }
    t.remove(leaf)
}

fn insert(table: &mut Map<String, Value>, key: &str, value: Value) {
    let (parents, leaf) = key.rsplit_once('.').unwrap_or(("", key));
    let mut t = table;
    for part in parents.split('.').filter(|p| !p.is_empty()) {
        let entry = t
            .entry(part.to_string())
            .or_insert_with(|| Value::new(None, ValueKind::Table(Map::new())));
        if !matches!(entry.kind, ValueKind::Table(_)) {
            entry.kind = ValueKind::Table(Map::new());
        }
        let ValueKind::Table(inner) = &mut entry.kind else {
            unreachable!("just made a table")
        };
        t = inner;
    }
    t.insert(leaf.to_string(), value);
}

/// The first key serde refused, by the dotted name the operator wrote (an old key under its old
/// name), and the variables that set it, if any did: for an unknown section, every variable
/// below it.
fn named(
    e: serde_path_to_error::Error<config::ConfigError>,
    overrides: &BTreeMap<String, Override>,
    aliased: &BTreeMap<String, String>,
) -> SettingError {
    let path = e.path().to_string();
    let inner = e.into_inner().to_string();
    let unknown = inner.starts_with("unknown field");
    let mut problem = if unknown {
        "unknown setting".to_string()
    } else {
        inner
    };
    let key = match aliased.get(&path) {
        Some(old) => {
            // `config` names the key it was converting, which is the new one.
            problem = without_clause(&problem, &format!(" for key `{path}`"));
            old.clone()
        }
        None => path,
    };
    let below = format!("{key}.");
    let setters: Vec<(&String, &Override)> = match overrides.get_key_value(&key) {
        Some(exact) => vec![exact],
        None => overrides
            .range(below.clone()..)
            .take_while(|(k, _)| k.starts_with(&below))
            .collect(),
    };
    let key = match setters.as_slice() {
        [(full, _)] if unknown => full.to_string(),
        _ => key,
    };
    if !setters.is_empty() {
        let variables: Vec<&str> = setters.iter().map(|(_, o)| o.variable.as_str()).collect();
        problem.push_str(&format!(" (set by {})", variables.join(", ")));
    }
    SettingError { key, problem }
}

fn without_clause(text: &str, clause: &str) -> String {
    text.replacen(clause, "", 1)
}
