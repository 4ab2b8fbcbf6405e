//! Finding the repository config (`.kmseal.yaml`) that applies to a file, and the rule in it:
//! the file named by `--config`, else the first `.kmseal.yaml` from the file's directory up to
//! the repository root (the directory holding `.git`) or the filesystem root. The rules
//! themselves are [`crate::repo_config`]'s.

use std::collections::{BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use clap::Args;

use super::{CliError, Io, fail};
use crate::repo_config::{self, RepoConfig, Rule};

#[derive(Debug, Args, Clone, Default)]
pub struct RepoArgs {
    /// The repository config whose rules pick key, scope and rotation by path (default: the
    /// first .kmseal.yaml from the file's directory up to the repository root). Flags win
    /// over it; it wins over KMSEAL_KEY.
    #[arg(long, value_name = "FILE", help_heading = "Repository config")]
    pub config: Option<PathBuf>,
    /// Say which config and rule each file follows (on stderr).
    #[arg(short = 'v', long, help_heading = "Repository config")]
    pub verbose: bool,
}

/// A config that was read, and where it is.
#[derive(Debug)]
pub(super) struct Loaded {
    /// As shown in messages (as given, or as found).
    pub shown: String,
    /// The absolute directory its paths are relative to.
    dir: PathBuf,
    pub config: RepoConfig,
}

/// Where a file stands with the repository config.
pub(super) enum Place {
    /// No config applies (none found, and no `--config`).
    NoConfig,
    /// The file is not under the config's directory, so no rule can name it.
    Outside(Rc<Loaded>),
    /// Under the config, at this path relative to its directory.
    Inside(Rc<Loaded>, String),
}

/// The rule that applies to one file and object.
#[derive(Debug, Clone)]
pub(super) struct Applied {
    pub rule: Rule,
    pub config: Rc<Loaded>,
}

/// The configs of one run, read once each.
pub(super) struct Configs {
    explicit: Option<Rc<Loaded>>,
    /// Directory → the config that applies there.
    by_dir: HashMap<PathBuf, Option<Rc<Loaded>>>,
    verbose: bool,
    said: BTreeSet<String>,
}

impl Configs {
    pub(super) fn new(args: &RepoArgs) -> Result<Self, CliError> {
        let explicit = match &args.config {
            Some(path) => {
                let dir = absolute(path)?
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default();
                Some(Rc::new(load(path, path.display().to_string(), dir)?))
            }
            None => None,
        };
        Ok(Configs {
            explicit,
            by_dir: HashMap::new(),
            verbose: args.verbose,
            said: BTreeSet::new(),
        })
    }

    /// The config that applies to `file`, an absolute path (the file need not exist yet).
    fn config_for(&mut self, file: &Path) -> Result<Option<Rc<Loaded>>, CliError> {
        if let Some(explicit) = &self.explicit {
            return Ok(Some(explicit.clone()));
        }
        let mut visited = Vec::new();
        let mut dir = file.parent().map(Path::to_path_buf);
        let found = loop {
            let Some(here) = dir else { break None };
            if let Some(known) = self.by_dir.get(&here) {
                break known.clone();
            }
            visited.push(here.clone());
            let candidate = here.join(repo_config::FILE_NAME);
            if candidate.is_file() {
                break Some(Rc::new(load(
                    &candidate,
                    candidate.display().to_string(),
                    here.clone(),
                )?));
            }
            if here.join(".git").exists() {
                break None;
            }
            dir = here.parent().map(Path::to_path_buf);
        };
        for dir in visited {
            self.by_dir.insert(dir, found.clone());
        }
        Ok(found)
    }

    /// The config that applies to `file`, and the file's path relative to its directory.
    pub(super) fn place_of(&mut self, file: &Path) -> Result<Place, CliError> {
        let file = absolute(file)?;
        let Some(config) = self.config_for(&file)? else {
            return Ok(Place::NoConfig);
        };
        let relative = file.strip_prefix(&config.dir).ok().map(|p| {
            p.components()
                .filter_map(|c| c.as_os_str().to_str())
                .collect::<Vec<_>>()
                .join("/")
        });
        Ok(match relative {
            Some(relative) => Place::Inside(config, relative),
            None => Place::Outside(config),
        })
    }

    /// [`Self::place_of`], said with `-v`.
    pub(super) fn checked_place(
        &mut self,
        file: &Path,
        shown_file: &str,
        io: &mut Io<'_>,
    ) -> Result<Place, CliError> {
        let place = self.place_of(file)?;
        let said = match &place {
            Place::NoConfig => self.no_config(shown_file),
            Place::Outside(config) => outside(shown_file, config),
            Place::Inside(config, _) => {
                format!(
                    "{shown_file}: checked against the rules of {}",
                    config.shown
                )
            }
        };
        self.say(said, io)?;
        Ok(place)
    }

    /// The rule for an object of `namespace` in `file` (for stdin or stdout: a file `-` in the
    /// current directory), saying so on stderr with `-v`.
    pub(super) fn rule_for(
        &mut self,
        file: &Path,
        namespace: Option<&str>,
        io: &mut Io<'_>,
    ) -> Result<Option<Applied>, CliError> {
        let shown_file = file.display().to_string();
        let ns = namespace
            .map(|n| format!(" (namespace {n})"))
            .unwrap_or_default();
        let (applied, said) = match self.place_of(file)? {
            Place::NoConfig => (None, self.no_config(&shown_file)),
            Place::Outside(config) => (None, outside(&shown_file, &config)),
            Place::Inside(config, relative) => {
                match config.config.rule_for(&relative, namespace).cloned() {
                    Some(rule) => {
                        let said = format!(
                            "{shown_file}{ns}: {} of {}: {}",
                            rule.shown(),
                            config.shown,
                            rule.settings()
                        );
                        (Some(Applied { rule, config }), said)
                    }
                    None => (
                        None,
                        format!("{shown_file}{ns}: no rule of {} matches", config.shown),
                    ),
                }
            }
        };
        self.say(said, io)?;
        Ok(applied)
    }

    /// With `-v`, says a line once.
    fn say(&mut self, line: String, io: &mut Io<'_>) -> Result<(), CliError> {
        if self.verbose && self.said.insert(line.clone()) {
            writeln!(io.stderr, "{line}")?;
        }
        Ok(())
    }

    fn no_config(&self, shown_file: &str) -> String {
        format!("{shown_file}: no {} found above it", repo_config::FILE_NAME)
    }
}

fn outside(shown_file: &str, config: &Loaded) -> String {
    format!("{shown_file}: outside the directory of {}", config.shown)
}

fn load(path: &Path, shown: String, dir: PathBuf) -> Result<Loaded, CliError> {
    let limit = repo_config::MAX_CONFIG_LEN as u64 + 1;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, limit), &mut bytes))
        .map_err(|e| fail(format!("cannot read {shown}: {e}")))?;
    let text = String::from_utf8(bytes).map_err(|_| fail(format!("{shown}: not UTF-8 text")))?;
    let config = RepoConfig::parse(&text).map_err(|e| fail(format!("{shown}: {e}")))?;
    Ok(Loaded { shown, dir, config })
}

/// `path` made absolute against the current directory, with `.` and `..` resolved by name
/// (the file need not exist; symlinks are not followed, so a rule's path is the one the user
/// sees).
fn absolute(path: &Path) -> Result<PathBuf, CliError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| fail(format!("cannot tell the current directory: {e}")))?
            .join(path)
    };
    let mut out = PathBuf::new();
    for component in joined.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}
