//! Shell completion for `kubectl kmseal`: kubectl (1.26+) completes a plugin's arguments by
//! running `kubectl_complete-<plugin>` with the words typed after the plugin's name, the last
//! one being the word to complete (empty for a new word). It reads one choice per line,
//! optionally `choice<TAB>description`, and a last line `:<directive>` in Cobra's terms.
//!
//! Pure: the choices come from the clap definition of the command line, so they cannot drift
//! from it.

use clap::{Arg, ArgAction, Command};

/// Let the shell complete file names.
pub const DIRECTIVE_FILES: u32 = 0;
/// Offer only the listed choices.
pub const DIRECTIVE_NO_FILES: u32 = 4;

/// The choices for the last of `words`, and the directive for the shell.
pub fn complete(root: &Command, words: &[String]) -> (Vec<String>, u32) {
    let (partial, typed) = match words.split_last() {
        Some((last, typed)) => (last.as_str(), typed),
        None => ("", &[][..]),
    };
    let mut command = root;
    let mut pending_value: Option<&Arg> = None;
    let mut only_positionals = false;
    for word in typed {
        if pending_value.take().is_some() {
            continue;
        }
        if only_positionals {
            continue;
        }
        if word == "--" {
            only_positionals = true;
        } else if let Some(long) = word.strip_prefix("--") {
            if !long.contains('=') {
                pending_value = find_long(command, root, long).filter(|a| takes_value(a));
            }
        } else if let Some(short) = word.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                pending_value = find_short(command, root, c).filter(|a| takes_value(a));
            }
        } else if let Some(sub) = command.find_subcommand(word) {
            command = sub;
        }
    }
    if let Some(arg) = pending_value {
        return values(arg, partial);
    }
    if partial.starts_with('-') && !only_positionals {
        let mut choices: Vec<String> = flags(command, root)
            .filter_map(|a| a.get_long().map(|long| (long, a)))
            .map(|(long, a)| with_help(&format!("--{long}"), a.get_help()))
            .filter(|c| c.starts_with(partial))
            .collect();
        choices.sort();
        choices.dedup();
        return (choices, DIRECTIVE_NO_FILES);
    }
    if command.has_subcommands() {
        let choices = command
            .get_subcommands()
            .filter(|s| !s.is_hide_set() && s.get_name() != "help")
            .filter(|s| s.get_name().starts_with(partial))
            .map(|s| with_help(s.get_name(), s.get_about()))
            .collect();
        return (choices, DIRECTIVE_NO_FILES);
    }
    match command.get_positionals().next() {
        Some(arg) => values(arg, partial),
        None => (Vec::new(), DIRECTIVE_NO_FILES),
    }
}

/// The whole answer as kubectl reads it.
pub fn render(root: &Command, words: &[String]) -> String {
    let (choices, directive) = complete(root, words);
    let mut out = String::new();
    for choice in choices {
        out.push_str(&choice);
        out.push('\n');
    }
    out.push_str(&format!(":{directive}\n"));
    out
}

fn with_help(choice: &str, help: Option<&clap::builder::StyledStr>) -> String {
    match help {
        Some(help) => {
            let first = help.to_string();
            let first = first.lines().next().unwrap_or("").trim_end_matches('.');
            format!("{choice}\t{first}")
        }
        None => choice.to_owned(),
    }
}

/// The command's own flags, then the global ones (declared on the root).
fn flags<'a>(command: &'a Command, root: &'a Command) -> impl Iterator<Item = &'a Arg> {
    command
        .get_arguments()
        .chain(root.get_arguments().filter(|a| a.is_global_set()))
        .filter(|a| !a.is_positional() && !a.is_hide_set())
}

fn find_long<'a>(command: &'a Command, root: &'a Command, long: &str) -> Option<&'a Arg> {
    flags(command, root).find(|a| a.get_long() == Some(long))
}

fn find_short<'a>(command: &'a Command, root: &'a Command, short: char) -> Option<&'a Arg> {
    flags(command, root).find(|a| a.get_short() == Some(short))
}

fn takes_value(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Set | ArgAction::Append)
}

/// Choices for an argument's value: its possible values, or file names.
fn values(arg: &Arg, partial: &str) -> (Vec<String>, u32) {
    let possible = arg.get_possible_values();
    if possible.is_empty() {
        return (Vec::new(), DIRECTIVE_FILES);
    }
    let choices = possible
        .iter()
        .filter(|v| !v.is_hide_set() && v.get_name().starts_with(partial))
        .map(|v| with_help(v.get_name(), v.get_help()))
        .collect();
    (choices, DIRECTIVE_NO_FILES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::CommandFactory;

    fn names(words: &[&str]) -> (Vec<String>, u32) {
        let words: Vec<String> = words.iter().map(|w| (*w).to_owned()).collect();
        let (choices, directive) = complete(&Cli::command(), &words);
        let names = choices
            .into_iter()
            .map(|c| c.split('\t').next().unwrap().to_owned())
            .collect();
        (names, directive)
    }

    #[test]
    fn subcommands_flags_and_values_come_from_the_command_line_definition() {
        let (all, directive) = names(&[""]);
        assert_eq!(directive, DIRECTIVE_NO_FILES);
        for sub in [
            "seal",
            "verify",
            "unseal",
            "validate",
            "pubkey",
            "crd",
            "completion",
        ] {
            assert!(all.contains(&sub.to_owned()), "{sub}: {all:?}");
        }
        assert!(!all.contains(&"help".to_owned()));
        assert_eq!(names(&["se"]).0, ["seal"]);
        assert_eq!(names(&["v"]).0, ["verify", "validate"]);

        let (flags, directive) = names(&["seal", "--sc"]);
        assert_eq!(
            (flags, directive),
            (vec!["--scope".to_owned()], DIRECTIVE_NO_FILES)
        );
        // Global flags too.
        assert!(names(&["seal", "--"]).0.contains(&"--region".to_owned()));
        assert!(
            names(&["seal", "--"])
                .0
                .contains(&"--merge-into".to_owned())
        );

        assert_eq!(
            names(&["seal", "--scope", ""]),
            (
                vec!["strict".into(), "namespace".into(), "cluster".into()],
                DIRECTIVE_NO_FILES
            )
        );
        assert_eq!(names(&["seal", "-o", "j"]).0, ["json"]);
        assert_eq!(names(&["completion", "z"]).0, ["zsh"]);
        // Files where a path is wanted.
        assert_eq!(names(&["seal", "-f", ""]), (vec![], DIRECTIVE_FILES));
        assert_eq!(
            names(&["validate", "--key-policy", "p"]),
            (vec![], DIRECTIVE_FILES)
        );
        assert_eq!(
            names(&["validate", "deploy/", ""]),
            (vec![], DIRECTIVE_FILES)
        );
        // A flag's value is not taken for a subcommand; `--x=v` needs no next word.
        assert_eq!(names(&["seal", "--name", "verify", "--sc"]).0, ["--scope"]);
        assert_eq!(
            names(&["seal", "--scope=strict", "-o", ""]).0,
            ["yaml", "json"]
        );
        // After `--`, only positionals.
        assert_eq!(names(&["validate", "--", "-x"]), (vec![], DIRECTIVE_FILES));
    }

    #[test]
    fn the_answer_ends_with_the_directive() {
        let out = render(&Cli::command(), &["crd".to_owned(), "".to_owned()]);
        assert_eq!(out, ":4\n");
        let out = render(&Cli::command(), &["pub".to_owned()]);
        assert!(out.starts_with("pubkey\t"), "{out}");
        assert!(out.ends_with("\n:4\n"), "{out}");
    }
}
