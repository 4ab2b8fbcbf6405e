//! Which profiles the AWS shared config files define. A profile named with `--profile` or
//! `AWS_PROFILE` that neither file defines is refused before any call, naming the profiles
//! that exist: the SDK itself would go on without it and fail later with a message about a
//! missing region or missing credentials, which points the user the wrong way.
//!
//! Pure: [`check`] takes the files' text; [`SharedFiles::locate`] and [`SharedFiles::read`]
//! are the only I/O.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// The shared config and credentials files, as the SDK finds them, and what they hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedFiles {
    /// The config file as shown to the user (`~/.aws/config` unless `AWS_CONFIG_FILE`).
    pub config_shown: String,
    /// Its text, when it could be read.
    pub config: Option<String>,
    /// The credentials file as shown (`~/.aws/credentials` unless
    /// `AWS_SHARED_CREDENTIALS_FILE`).
    pub credentials_shown: String,
    pub credentials: Option<String>,
}

impl SharedFiles {
    /// The two paths from the environment (`AWS_CONFIG_FILE`, `AWS_SHARED_CREDENTIALS_FILE`,
    /// `HOME`), as the SDK reads them: shown as given, read with a leading `~/` expanded.
    pub fn locate(
        env: impl Fn(&str) -> Option<String>,
    ) -> (String, Option<PathBuf>, String, Option<PathBuf>) {
        let home = env("HOME");
        let resolve = |given: Option<String>, default: &str| {
            let shown = given.unwrap_or_else(|| default.to_owned());
            let path = match shown.strip_prefix("~/") {
                Some(rest) => home.as_ref().map(|h| PathBuf::from(h).join(rest)),
                None => Some(PathBuf::from(&shown)),
            };
            (shown, path)
        };
        let (config_shown, config) = resolve(env("AWS_CONFIG_FILE"), "~/.aws/config");
        let (credentials_shown, credentials) =
            resolve(env("AWS_SHARED_CREDENTIALS_FILE"), "~/.aws/credentials");
        (config_shown, config, credentials_shown, credentials)
    }

    /// Reads both files (a file that is missing or unreadable counts as empty).
    pub fn read() -> Self {
        let (config_shown, config, credentials_shown, credentials) =
            Self::locate(|name| std::env::var(name).ok());
        let read = |path: Option<PathBuf>| path.and_then(|p| std::fs::read_to_string(p).ok());
        SharedFiles {
            config_shown,
            config: read(config),
            credentials_shown,
            credentials: read(credentials),
        }
    }
}

/// A profile that neither shared file defines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct ProfileNotFound {
    pub name: String,
    pub config_shown: String,
    pub credentials_shown: String,
    /// The profiles the files do define.
    pub known: Vec<String>,
    /// Whether either file exists at all.
    pub any_file: bool,
}

impl ProfileNotFound {
    fn message(&self) -> String {
        let name = crate::text::bounded(&self.name, 64);
        if !self.any_file {
            return format!(
                "profile `{name}` not found: neither {} nor {} exists; create it (`aws configure --profile {name}`), or drop --profile / unset AWS_PROFILE to use the default credentials",
                self.config_shown, self.credentials_shown
            );
        }
        let known = if self.known.is_empty() {
            "they define no profile".to_owned()
        } else {
            let mut shown: Vec<String> = self
                .known
                .iter()
                .take(20)
                .map(|p| crate::text::bounded(p, 64))
                .collect();
            if self.known.len() > 20 {
                shown.push("…".to_owned());
            }
            format!("profiles: {}", shown.join(", "))
        };
        let files = format!("{} or {}", self.config_shown, self.credentials_shown);
        format!(
            "profile `{name}` not found in {files} ({known}); pass --profile with one of them, or set AWS_PROFILE"
        )
    }
}

/// The profile names a config file defines: `[default]` and `[profile NAME]` (other sections,
/// `[sso-session …]`, `[services …]`, are not profiles).
pub fn config_profiles(text: &str) -> BTreeSet<String> {
    sections(text)
        .filter_map(|section| {
            if section == "default" {
                return Some(section.to_owned());
            }
            let (kind, name) = section.split_once(char::is_whitespace)?;
            (kind == "profile").then(|| name.trim().to_owned())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The profile names a credentials file defines: every `[NAME]`.
pub fn credentials_profiles(text: &str) -> BTreeSet<String> {
    sections(text)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Section headers, `[` … `]` on their own line, trimmed inside.
fn sections(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        let inner = line.strip_prefix('[')?;
        let end = inner.find(']')?;
        let rest = inner[end + 1..].trim_start();
        // A comment may follow the header; anything else makes it no header.
        (rest.is_empty() || rest.starts_with('#') || rest.starts_with(';'))
            .then(|| inner[..end].trim())
    })
}

/// `Ok` when `name` is defined in either file, or is `default` (which the SDK does without).
pub fn check(name: &str, files: &SharedFiles) -> Result<(), ProfileNotFound> {
    if name == "default" {
        return Ok(());
    }
    let mut known = files
        .config
        .as_deref()
        .map(config_profiles)
        .unwrap_or_default();
    known.extend(
        files
            .credentials
            .as_deref()
            .map(credentials_profiles)
            .unwrap_or_default(),
    );
    if known.contains(name) {
        return Ok(());
    }
    Err(ProfileNotFound {
        name: name.to_owned(),
        config_shown: files.config_shown.clone(),
        credentials_shown: files.credentials_shown.clone(),
        known: known.into_iter().collect(),
        any_file: files.config.is_some() || files.credentials.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(config: Option<&str>, credentials: Option<&str>) -> SharedFiles {
        SharedFiles {
            config_shown: "~/.aws/config".into(),
            config: config.map(str::to_owned),
            credentials_shown: "~/.aws/credentials".into(),
            credentials: credentials.map(str::to_owned),
        }
    }

    #[test]
    fn a_missing_profile_is_named_with_those_that_exist() {
        let f = files(
            Some(
                "[default]\nregion = eu-west-1\n[profile prod]  # main\nregion=x\n[sso-session corp]\n[services s]\n",
            ),
            Some("[ci]\naws_access_key_id = AKIA\n"),
        );
        let e = check("dve", &f).unwrap_err();
        assert_eq!(
            e.to_string(),
            "profile `dve` not found in ~/.aws/config or ~/.aws/credentials (profiles: ci, default, prod); pass --profile with one of them, or set AWS_PROFILE"
        );
        assert_eq!(check("prod", &f), Ok(()));
        assert_eq!(check("ci", &f), Ok(()));
        // Not profiles: the SDK would not use them as one.
        assert!(check("corp", &f).is_err());
        assert!(check("sso-session corp", &f).is_err());
    }

    #[test]
    fn default_needs_no_file_and_no_file_is_said() {
        assert_eq!(check("default", &files(None, None)), Ok(()));
        let e = check("dev", &files(None, None)).unwrap_err();
        assert!(
            e.to_string()
                .contains("neither ~/.aws/config nor ~/.aws/credentials exists"),
            "{e}"
        );
        let e = check("dev", &files(Some("# nothing\n"), None)).unwrap_err();
        assert!(e.to_string().contains("they define no profile"), "{e}");
    }

    #[test]
    fn hostile_files_and_names_stay_bounded() {
        let long = "x".repeat(10_000);
        let config = format!("[profile {long}]\n[ [ ]\n[]\n[profile]\n]\n[default] trailing\n");
        let f = files(Some(&config), Some("[\u{0}]\n[a]b\n"));
        let e = check(&long, &f);
        assert_eq!(e, Ok(()));
        let e = check(&format!("{long}y"), &f).unwrap_err();
        assert!(e.to_string().len() < 600, "{}", e.to_string().len());
        // `[default] trailing` is no header; `[a]b` neither.
        assert!(!e.known.contains(&"default".to_owned()));
        assert!(!e.known.contains(&"a".to_owned()));
    }

    #[test]
    fn paths_follow_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let (shown, path, cshown, cpath) = SharedFiles::locate(env(&[("HOME", "/home/u")]));
        assert_eq!(shown, "~/.aws/config");
        assert_eq!(path, Some(PathBuf::from("/home/u/.aws/config")));
        assert_eq!(cshown, "~/.aws/credentials");
        assert_eq!(cpath, Some(PathBuf::from("/home/u/.aws/credentials")));
        let (shown, path, _, _) = SharedFiles::locate(env(&[("AWS_CONFIG_FILE", "/etc/aws.cfg")]));
        assert_eq!(shown, "/etc/aws.cfg");
        assert_eq!(path, Some(PathBuf::from("/etc/aws.cfg")));
        let (_, path, _, _) = SharedFiles::locate(env(&[]));
        assert_eq!(path, None, "no HOME: no default file to read");
    }
}
