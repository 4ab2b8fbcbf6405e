//! The repository config, `.kmseal.yaml` (like `.sops.yaml`): rules matched by a file's path
//! (and optionally its namespace) that say which key its values are sealed under, their scope,
//! and the rotation policy new objects get. Pure: the CLI finds and reads the file
//! (`cli::repo`); this module parses it and picks the rule.
//!
//! ```yaml
//! rules:                       # the first rule that matches wins
//!   - path: clusters/prod/**   # a glob, relative to the directory of .kmseal.yaml
//!     namespace: payments-*    # optional: a glob on the Secret's namespace
//!     key: arn:aws:kms:eu-west-1:111111111111:alias/kmseal-prod
//!     scope: strict            # optional: strict, namespace or cluster
//!     rotation: Rewrap         # optional: spec.rotation.policy of new objects
//! ```

use std::fmt;

use serde::Deserialize;

use crate::api::RotationPolicy;
use crate::binding::Scope;

/// The file name looked for from a file's directory upwards.
pub const FILE_NAME: &str = ".kmseal.yaml";
/// The largest config read (a config is small; a larger file is a mistake).
pub const MAX_CONFIG_LEN: usize = 256 * 1024;
/// The most rules one config may hold.
pub const MAX_RULES: usize = 1000;
/// The longest glob (`path`, `namespace`).
pub const MAX_GLOB_LEN: usize = 1024;

/// One rule, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// 1-based position in `rules`.
    pub number: usize,
    /// The line the rule starts on.
    pub line: u64,
    pub path: Option<String>,
    pub namespace: Option<String>,
    pub key: Option<String>,
    pub scope: Option<Scope>,
    pub rotation: Option<RotationPolicy>,
}

impl Rule {
    /// "rule 2 (line 7)".
    pub fn shown(&self) -> String {
        format!("rule {} (line {})", self.number, self.line)
    }

    /// What it sets, for `-v`: "key K, scope S, rotation R".
    pub fn settings(&self) -> String {
        let mut parts = Vec::new();
        if let Some(key) = &self.key {
            parts.push(format!("key {key}"));
        }
        if let Some(scope) = self.scope {
            parts.push(format!("scope {scope}"));
        }
        if let Some(rotation) = self.rotation {
            parts.push(format!("rotation {rotation:?}"));
        }
        if parts.is_empty() {
            "nothing".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// A parsed `.kmseal.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoConfig {
    pub rules: Vec<Rule>,
}

/// A config that cannot be used: what is wrong and on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub line: Option<u64>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<serde_saphyr::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    rotation: Option<String>,
}

const FIELDS: &str = "path, namespace, key, scope, rotation";

impl RepoConfig {
    /// Parses the text of a `.kmseal.yaml`.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        if text.len() > MAX_CONFIG_LEN {
            return Err(ConfigError {
                line: None,
                message: format!(
                    "it is {} bytes, over the limit of {MAX_CONFIG_LEN}",
                    text.len()
                ),
            });
        }
        if text.trim().is_empty() {
            return Ok(RepoConfig::default());
        }
        let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| config_syntax(&e))?;
        if raw.rules.len() > MAX_RULES {
            return Err(ConfigError {
                line: None,
                message: format!("{} rules, over the limit of {MAX_RULES}", raw.rules.len()),
            });
        }
        let mut rules = Vec::with_capacity(raw.rules.len());
        for (index, spanned) in raw.rules.into_iter().enumerate() {
            let line = spanned.referenced.line();
            let raw = spanned.value;
            let bad = |message: String| ConfigError {
                line: Some(line),
                message: format!("rule {}: {message}", index + 1),
            };
            for (field, glob) in [("path", &raw.path), ("namespace", &raw.namespace)] {
                if let Some(glob) = glob {
                    check_glob(glob).map_err(|e| bad(format!("{field}: {e}")))?;
                }
            }
            if let Some(path) = &raw.path
                && (path.starts_with('/') || path.split('/').any(|s| s == ".."))
            {
                return Err(bad(format!(
                    "path {:?} must be relative to the directory of {FILE_NAME}, without ..",
                    crate::text::bounded(path, 120)
                )));
            }
            if let Some(key) = &raw.key {
                crate::arn::check_key_name(key).map_err(|e| bad(format!("key: {e}")))?;
            }
            let scope = raw
                .scope
                .as_deref()
                .map(|s| s.parse::<Scope>())
                .transpose()
                .map_err(|e| bad(format!("scope: {e}")))?;
            let rotation = match raw.rotation.as_deref() {
                None => None,
                Some("Rewrap") => Some(RotationPolicy::Rewrap),
                Some("Report") => Some(RotationPolicy::Report),
                Some(other) => {
                    return Err(bad(format!(
                        "rotation: {:?} is not Rewrap or Report",
                        crate::text::bounded(other, 60)
                    )));
                }
            };
            if raw.key.is_none() && scope.is_none() && rotation.is_none() {
                return Err(bad(
                    "it sets nothing; give it a key, a scope or a rotation".to_owned()
                ));
            }
            rules.push(Rule {
                number: index + 1,
                line,
                path: raw.path,
                namespace: raw.namespace,
                key: raw.key,
                scope,
                rotation,
            });
        }
        Ok(RepoConfig { rules })
    }

    /// The first rule for a file at `path` (relative to the config's directory, `/`-separated)
    /// holding an object of `namespace`. A rule with a `namespace` matches only objects that
    /// have one.
    pub fn rule_for(&self, path: &str, namespace: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.path
                .as_deref()
                .is_none_or(|glob| path_matches(glob, path))
                && match (&rule.namespace, namespace) {
                    (None, _) => true,
                    (Some(glob), Some(ns)) => segment_matches(glob, ns),
                    (Some(_), None) => false,
                }
        })
    }
}

fn config_syntax(e: &serde_saphyr::Error) -> ConfigError {
    // The config holds no secret: an unknown field may be named.
    if let serde_saphyr::Error::SerdeUnknownField {
        field, location, ..
    } = e.without_snippet()
    {
        return ConfigError {
            line: Some(location.line()).filter(|l| *l > 0),
            message: format!(
                "unknown field {:?}; a rule takes {FIELDS}, and the file takes rules",
                crate::text::bounded(field, 60)
            ),
        };
    }
    let problem = crate::yaml::problem(e);
    ConfigError {
        line: problem.at.map(|(line, _)| line),
        message: format!(
            "not a valid {FILE_NAME}{}: {}; it holds `rules:`, a list of {{{FIELDS}}}",
            problem
                .at
                .map(|(_, column)| format!(" (column {column})"))
                .unwrap_or_default(),
            problem.what
        ),
    }
}

fn check_glob(glob: &str) -> Result<(), String> {
    if glob.is_empty() {
        return Err("empty".to_owned());
    }
    if glob.len() > MAX_GLOB_LEN {
        return Err(format!("longer than {MAX_GLOB_LEN} characters"));
    }
    if glob.chars().any(char::is_control) {
        return Err("holds a control character".to_owned());
    }
    Ok(())
}

/// A path glob: `*` and `?` within one `/`-separated segment, `**` for any number of
/// segments (none included).
pub fn path_matches(glob: &str, path: &str) -> bool {
    let globs: Vec<&str> = glob.split('/').filter(|s| !s.is_empty()).collect();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // matched[i][j]: globs[i..] matches parts[j..]; filled from the end, so linear in both.
    let mut next = vec![false; parts.len() + 1];
    next[parts.len()] = true;
    for g in globs.iter().rev() {
        let mut here = vec![false; parts.len() + 1];
        for j in (0..=parts.len()).rev() {
            here[j] = if *g == "**" {
                next[j] || (j < parts.len() && here[j + 1])
            } else {
                j < parts.len() && next[j + 1] && segment_matches(g, parts[j])
            };
        }
        next = here;
    }
    next[0]
}

/// `*` any run of characters, `?` one character; everything else as itself.
pub fn segment_matches(glob: &str, text: &str) -> bool {
    let g: Vec<char> = glob.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let mut next = vec![false; t.len() + 1];
    next[t.len()] = true;
    for gc in g.iter().rev() {
        let mut here = vec![false; t.len() + 1];
        for j in (0..=t.len()).rev() {
            here[j] = match gc {
                '*' => next[j] || (j < t.len() && here[j + 1]),
                '?' => j < t.len() && next[j + 1],
                c => j < t.len() && t[j] == *c && next[j + 1],
            };
        }
        next = here;
    }
    next[0]
}

/// Whether a value sealed (or an object naming `spec.keyId`) under `have` is under the key a
/// rule names, as far as can be told without KMS: the same text, or a key ARN whose key id the
/// rule names. `None`: cannot tell offline (the rule or `have` is an alias, and they differ).
pub fn same_key(rule_key: &str, have: &str) -> Option<bool> {
    if rule_key == have {
        return Some(true);
    }
    let key_id = |k: &str| -> Option<String> {
        match crate::arn::KmsArn::parse(k) {
            Some(arn) => arn.resource.strip_prefix("key/").map(str::to_owned),
            None if !k.starts_with("alias/") => Some(k.to_owned()),
            None => None,
        }
    };
    let alias_name = |k: &str| -> Option<String> {
        match crate::arn::KmsArn::parse(k) {
            Some(arn) => arn.resource.strip_prefix("alias/").map(str::to_owned),
            None => k.strip_prefix("alias/").map(str::to_owned),
        }
    };
    match (key_id(rule_key), key_id(have)) {
        (Some(a), Some(b)) => {
            // Two key ARNs in different regions or accounts are different keys, unless only
            // one is a bare id.
            let both_arns = rule_key.starts_with("arn:") && have.starts_with("arn:");
            Some(a == b && !both_arns)
        }
        _ => match (alias_name(rule_key), alias_name(have)) {
            // The same alias name, one as an ARN: the same alias only if the ARN's account and
            // region are where the other is used, which cannot be told here.
            (Some(a), Some(b)) if a != b => Some(false),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "\
# two accounts, three namespaces
rules:
  - path: clusters/prod/**
    namespace: payments
    key: arn:aws:kms:eu-west-1:111111111111:alias/kmseal-payments
    rotation: Report
  - path: clusters/prod/**
    key: arn:aws:kms:eu-west-1:111111111111:alias/kmseal-prod
  - path: clusters/staging/**
    key: arn:aws:kms:eu-west-1:222222222222:alias/kmseal-staging
    scope: namespace
";

    #[test]
    fn the_first_matching_rule_wins() {
        let config = RepoConfig::parse(CONFIG).unwrap();
        assert_eq!(config.rules.len(), 3);
        let rule = config
            .rule_for("clusters/prod/payments/db.yaml", Some("payments"))
            .unwrap();
        assert_eq!((rule.number, rule.line), (1, 3));
        assert_eq!(rule.rotation, Some(RotationPolicy::Report));
        let rule = config
            .rule_for("clusters/prod/web/db.yaml", Some("web"))
            .unwrap();
        assert_eq!(rule.number, 2);
        // No namespace known: a rule that needs one does not match.
        assert_eq!(
            config
                .rule_for("clusters/prod/x.yaml", None)
                .unwrap()
                .number,
            2
        );
        let rule = config
            .rule_for("clusters/staging/a/b/c.yaml", None)
            .unwrap();
        assert_eq!(rule.scope, Some(Scope::Namespace));
        assert!(config.rule_for("apps/x.yaml", Some("payments")).is_none());
        assert!(config.rule_for("clusters/prodx/a.yaml", None).is_none());
        assert_eq!(
            rule.settings(),
            "key arn:aws:kms:eu-west-1:222222222222:alias/kmseal-staging, scope namespace"
        );
    }

    #[test]
    fn globs() {
        for (glob, path, matches) in [
            ("**", "a/b/c.yaml", true),
            ("**", "", true),
            ("a/**", "a", true),
            ("a/**/c.yaml", "a/c.yaml", true),
            ("a/**/c.yaml", "a/x/y/c.yaml", true),
            ("a/*.yaml", "a/b.yaml", true),
            ("a/*.yaml", "a/b/c.yaml", false),
            ("a/?.yaml", "a/b.yaml", true),
            ("a/?.yaml", "a/bb.yaml", false),
            ("*/secrets/*", "prod/secrets/db.yaml", true),
            ("prod", "prod/db.yaml", false),
            ("prod/db.yaml", "prod/db.yaml", true),
        ] {
            assert_eq!(path_matches(glob, path), matches, "{glob} {path}");
        }
        assert!(segment_matches("team-*", "team-a"));
        assert!(!segment_matches("team-*", "teams"));
        // Many stars against a long text that almost matches: linear time, not exponential.
        let glob = "*a".repeat(50) + "b";
        assert!(!segment_matches(&glob, &"a".repeat(10_000)));
        let glob = "**/".repeat(50) + "x";
        assert!(!path_matches(&glob, &"a/".repeat(2000)));
    }

    #[test]
    fn a_bad_config_names_its_line() {
        for (text, says) in [
            (
                "rules:\n  - path: a/**\n    kee: alias/x\n",
                "line 3: unknown field \"kee\"",
            ),
            (
                "rules:\n  - path: a\n    key: kmseal-prod\n",
                "line 2: rule 1: key: \"kmseal-prod\" is not a key id",
            ),
            (
                "rules:\n  - key: alias/a\n  - path: b\n    scope: wide\n",
                "line 3: rule 2: scope: unknown scope",
            ),
            (
                "rules:\n  - path: b\n    rotation: rewrap\n",
                "line 2: rule 1: rotation: \"rewrap\" is not Rewrap or Report",
            ),
            (
                "rules:\n  - path: /etc/**\n    key: alias/a\n",
                "must be relative",
            ),
            ("rules:\n  - path: ../x\n    key: alias/a\n", "without .."),
            ("rules:\n  - path: b\n", "it sets nothing"),
            (
                "rules:\n  - path: b\n\tkey: alias/a\n",
                "line 2: not a valid .kmseal.yaml (column 11): a tab character",
            ),
            ("rule:\n  - key: alias/a\n", "unknown field \"rule\""),
            ("rules: {key: alias/a}\n", "a list of"),
        ] {
            let e = RepoConfig::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text:?}: {e}");
        }
        assert_eq!(
            RepoConfig::parse("# empty\n").unwrap(),
            RepoConfig::default()
        );
        let big = "#".repeat(MAX_CONFIG_LEN + 1);
        assert!(
            RepoConfig::parse(&big)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
    }

    #[test]
    fn keys_compare_as_far_as_can_be_told_offline() {
        let arn = "arn:aws:kms:eu-west-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
        let id = "1234abcd-12ab-34cd-56ef-1234567890ab";
        let other = "arn:aws:kms:eu-west-1:111111111111:key/99999999-12ab-34cd-56ef-1234567890ab";
        let alias = "arn:aws:kms:eu-west-1:111111111111:alias/kmseal";
        assert_eq!(same_key(arn, arn), Some(true));
        assert_eq!(same_key(id, arn), Some(true));
        assert_eq!(same_key(arn, id), Some(true));
        assert_eq!(same_key(arn, other), Some(false));
        assert_eq!(
            same_key(arn, &arn.replace("eu-west-1", "us-east-1")),
            Some(false)
        );
        assert_eq!(same_key(alias, arn), None);
        assert_eq!(same_key("alias/kmseal", alias), None);
        assert_eq!(same_key("alias/kmseal", "alias/other"), Some(false));
    }
}
