//! The documentation stays usable and true as it is split between the README and `docs/`:
//! every relative link in README.md and docs/*.md leads to a file that exists and, with
//! `#anchor`, to a heading that exists in it; and the flags tables of docs/cli.md and
//! docs/controller.md list exactly the flags clap knows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use clap::CommandFactory;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every page under docs/, as paths relative to the repository.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    let mut pages: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_owned())
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Whether a line opens or closes a fenced code block.
fn is_fence(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("```") || line.starts_with("~~~")
}

/// The text outside fenced code blocks, with inline code spans blanked out: what Markdown
/// renders as links and headings.
fn prose(text: &str) -> String {
    let mut outside = String::new();
    let mut in_fence = false;
    for line in text.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
            outside.push('\n');
            continue;
        }
        if !in_fence {
            outside.push_str(line);
        }
        outside.push('\n');
    }
    // A code span runs from a run of backticks to the next run of the same length.
    let chars: Vec<char> = outside.chars().collect();
    let mut out = String::with_capacity(outside.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|c| **c == '`').count();
                if n == run {
                    close = Some(j);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.push_str(" code ");
                i = end + run;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase, punctuation but `-` and `_` dropped, spaces to
/// `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings (a repeated heading gets `-1`, `-2`, ... as on
/// GitHub).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(&line[hashes..]);
        let mut anchor = base.clone();
        let mut n = 0;
        while found.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        found.insert(anchor);
    }
    found
}

/// The targets of the inline links (`[text](target)`) and link definitions (`[label]:
/// target`) in a Markdown file, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut targets = Vec::new();
    let mut rest = prose.as_str();
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let end = after.find(')').unwrap_or(after.len());
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.trim_matches(['<', '>']).to_owned());
        rest = &after[end..];
    }
    for line in prose.lines() {
        let line = line.trim_start();
        if let Some(label_end) = line.strip_prefix('[').and_then(|l| l.find("]: "))
            && !line[1..=label_end].contains(']')
        {
            let target = line[label_end + 4..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            targets.push(target.to_owned());
        }
    }
    targets
}

/// Why a link from `from` to `target` leads nowhere, if it does.
fn broken(from: &Path, target: &str) -> Option<String> {
    if target.contains("://") || target.starts_with("mailto:") {
        return None;
    }
    if target.is_empty() {
        return Some("an empty link".to_owned());
    }
    let (path, anchor) = match target.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (target, None),
    };
    let file = if path.is_empty() {
        root().join(from)
    } else {
        root().join(from.parent().unwrap()).join(path)
    };
    if !file.exists() {
        return Some(format!("{} does not exist", file.display()));
    }
    let anchor = anchor?;
    if file.is_dir() || file.extension().is_none_or(|e| e != "md") {
        return Some(format!(
            "an anchor into {}, which is not Markdown",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(&file).unwrap();
    (!anchors(&text).contains(anchor)).then(|| {
        format!(
            "{} has no heading with the anchor #{anchor}",
            file.display()
        )
    })
}

#[test]
fn headings_get_github_anchors() {
    assert_eq!(
        slug("Checking manifests offline (CI and pre-commit)"),
        "checking-manifests-offline-ci-and-pre-commit"
    );
    assert_eq!(
        slug("Values from `aws kms encrypt`"),
        "values-from-aws-kms-encrypt"
    );
    assert_eq!(slug("`kmseal seal`"), "kmseal-seal");
    assert_eq!(
        slug("What one namespace can cost another"),
        "what-one-namespace-can-cost-another"
    );
    assert_eq!(slug("The data_key cache: v2"), "the-data_key-cache-v2");
    let text = "# A\n## Flags\n```sh\n# not a heading\n```\n### Flags\n#nope\n";
    assert_eq!(
        anchors(text),
        BTreeSet::from(["a".to_owned(), "flags".to_owned(), "flags-1".to_owned()])
    );
}

#[test]
fn links_are_found_outside_code_only() {
    let text = "See [a](x.md#b) and [multi\nline](#c).\n`[no](code.md)` and ``[nor](this.md)``\n\
                ```\n[not](fenced.md)\n```\n[ref]: https://example.com\n[local]: docs/y.md\n";
    assert_eq!(
        link_targets(text),
        ["x.md#b", "#c", "https://example.com", "docs/y.md"]
    );
}

/// Every relative link in README.md and docs/*.md resolves: the file exists, and the anchor, if
/// any, is a heading in it.
#[test]
fn every_relative_link_resolves() {
    let mut problems = Vec::new();
    for file in doc_files() {
        for target in link_targets(&read(&file)) {
            if let Some(why) = broken(&file, &target) {
                problems.push(format!("{}: ({target}): {why}", file.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken links:\n{}",
        problems.join("\n")
    );
}

/// A table row's cells, split at the `|`s that are not escaped (`\\|` stays in its cell).
fn cells(row: &str) -> Vec<String> {
    let row = row.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    let mut cells = vec![String::new()];
    let mut escaped = false;
    for c in row.chars() {
        if c == '|' && !escaped {
            cells.push(String::new());
        } else {
            cells.last_mut().unwrap().push(c);
        }
        escaped = c == '\\';
    }
    cells.into_iter().map(|c| c.trim().to_owned()).collect()
}

fn is_table_separator(line: &str) -> bool {
    let line = line.trim();
    line.starts_with('|') && line.contains('-') && line.chars().all(|c| "|-: ".contains(c))
}

/// The code spans of a line of Markdown.
fn code_spans(text: &str) -> impl Iterator<Item = &str> {
    text.split('`').skip(1).step_by(2)
}

/// The flags tables of a page (tables whose first column is headed `flag`), by the heading they
/// are under: the long flags each row's first cell names in code spans (`` `--key KEY` ``,
/// several in one cell allowed; short flags and other spans are not long flags). A flag
/// listed twice under one heading is reported as `Err`.
fn flag_tables(text: &str) -> Result<BTreeMap<String, BTreeSet<String>>, String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut tables: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut heading = String::new();
    let mut in_fence = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if is_fence(line) {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with('#') {
            heading = line.trim_start_matches('#').trim().to_owned();
            continue;
        }
        let is_flag_table = line.trim_start().starts_with('|')
            && lines.get(i).is_some_and(|l| is_table_separator(l))
            && cells(line).first().is_some_and(|c| c == "flag");
        if !is_flag_table {
            continue;
        }
        i += 1;
        let flags = tables.entry(heading.clone()).or_default();
        while let Some(row) = lines.get(i).filter(|l| l.trim_start().starts_with('|')) {
            i += 1;
            let first = cells(row).into_iter().next().unwrap_or_default();
            for span in code_spans(&first) {
                let Some(name) = span.strip_prefix("--") else {
                    continue;
                };
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                if !flags.insert(format!("--{name}")) {
                    return Err(format!("--{name} is listed twice under \"{heading}\""));
                }
            }
        }
    }
    Ok(tables)
}

/// The long flags `--help` shows for one command (`--help` and `--version` aside); with
/// `global = true` flags under the command that declares them, as clap reports them before it
/// propagates them to the subcommands.
fn clap_flags(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long())
        .filter(|l| *l != "help" && *l != "version")
        .map(|l| format!("--{l}"))
        .collect()
}

/// Every command of a clap tree (the root and each subcommand, as `kmseal` and `kmseal seal`)
/// with its long flags.
fn clap_commands(root: &clap::Command) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    let name = root.get_name().to_owned();
    out.insert(name.clone(), clap_flags(root));
    for sub in root.get_subcommands().filter(|s| s.get_name() != "help") {
        for (path, flags) in clap_commands(sub) {
            out.insert(format!("{name} {path}"), flags);
        }
    }
    out
}

/// What differs between the flags the code has and the tables of `page` that document them,
/// one line per flag, naming the command and the page.
fn flag_differences(
    page: &str,
    code: &BTreeMap<String, BTreeSet<String>>,
    documented: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<String> {
    let mut problems = Vec::new();
    for (command, flags) in code {
        let Some(listed) = documented.get(command) else {
            if !flags.is_empty() {
                problems.push(format!(
                    "{page} has no flags table for `{command}`, which takes {}",
                    flags.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            continue;
        };
        for flag in flags.difference(listed) {
            problems.push(format!(
                "`{command}` takes {flag}, which its table in {page} does not list"
            ));
        }
        for flag in listed.difference(flags) {
            problems.push(format!(
                "the table for `{command}` in {page} lists {flag}, which `{command}` does not take"
            ));
        }
    }
    for command in documented.keys().filter(|c| !code.contains_key(*c)) {
        problems.push(format!(
            "{page} has a flags table for `{command}`, which is not a command"
        ));
    }
    problems
}

/// docs/cli.md's tables, by the command each one's heading names in its first code span
/// (`### \`kmseal seal\``).
fn cli_tables() -> BTreeMap<String, BTreeSet<String>> {
    let tables = flag_tables(&read(Path::new("docs/cli.md"))).unwrap();
    tables
        .into_iter()
        .map(|(heading, flags)| {
            let command = code_spans(&heading).next().unwrap_or_else(|| {
                panic!("docs/cli.md: the flags table under \"{heading}\" names no command")
            });
            (command.to_owned(), flags)
        })
        .collect()
}

#[test]
fn flags_tables_are_read_as_written() {
    let text = "## `tool`\n\n| flag | what |\n|---|---|\n| `--one` | x |\n\
                | `-o`, `--output yaml\\|json` [`ENV_VAR`] | y \\| z |\n| `PATH…` | positional |\n\
                \n```\n| flag | x |\n|---|---|\n| `--fenced` | no |\n```\n\
                ## `tool sub`\n| flag | what |\n| --- | --- |\n| `--a`, `--b-c S` | |\n\n\
                | other | x |\n|---|---|\n| `--not-a-flag-table` | |\n";
    let tables = flag_tables(text).unwrap();
    assert_eq!(
        tables,
        BTreeMap::from([
            (
                "`tool`".to_owned(),
                BTreeSet::from(["--one".to_owned(), "--output".to_owned()])
            ),
            (
                "`tool sub`".to_owned(),
                BTreeSet::from(["--a".to_owned(), "--b-c".to_owned()])
            ),
        ])
    );
    assert!(
        flag_tables("# x\n| flag |\n|---|\n| `--a` |\n| `--a` |\n")
            .unwrap_err()
            .contains("--a")
    );
}

/// A flag added to the code and not to the table, or listed and not in the code, is named,
/// with its command and the page.
#[test]
fn a_missing_or_extra_flag_is_named() {
    let code = clap_commands(
        &clap::Command::new("tool")
            .arg(clap::Arg::new("global").long("global").global(true))
            .subcommand(
                clap::Command::new("sub")
                    .arg(clap::Arg::new("new").long("new"))
                    .arg(clap::Arg::new("path")),
            )
            .subcommand(clap::Command::new("bare")),
    );
    assert_eq!(code["tool"], BTreeSet::from(["--global".to_owned()]));
    assert_eq!(code["tool bare"], BTreeSet::new());
    let documented = BTreeMap::from([
        ("tool".to_owned(), BTreeSet::from(["--global".to_owned()])),
        ("tool sub".to_owned(), BTreeSet::from(["--old".to_owned()])),
        ("tool gone".to_owned(), BTreeSet::new()),
    ]);
    assert_eq!(
        flag_differences("docs/x.md", &code, &documented),
        [
            "`tool sub` takes --new, which its table in docs/x.md does not list",
            "the table for `tool sub` in docs/x.md lists --old, which `tool sub` does not take",
            "docs/x.md has a flags table for `tool gone`, which is not a command",
        ]
    );
}

/// docs/cli.md has a table per command that takes flags, listing exactly the long flags clap
/// knows for it (`kmseal`'s own table: the global ones).
#[test]
fn the_cli_flags_tables_equal_the_code() {
    let code = clap_commands(&kmseal::cli::Cli::command());
    let problems = flag_differences("docs/cli.md", &code, &cli_tables());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// docs/controller.md's flags table lists exactly `kmseal-controller`'s long flags.
#[test]
fn the_controller_flags_table_equals_the_code() {
    let command = kmseal::config::ControllerArgs::command();
    let code = BTreeMap::from([(command.get_name().to_owned(), clap_flags(&command))]);
    let tables = flag_tables(&read(Path::new("docs/controller.md"))).unwrap();
    assert!(!tables.is_empty(), "docs/controller.md has no flags table");
    let listed: BTreeSet<String> = tables.into_values().flatten().collect();
    let documented = BTreeMap::from([(command.get_name().to_owned(), listed)]);
    let problems = flag_differences("docs/controller.md", &code, &documented);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The fenced code blocks of a Markdown file, with the line each opens on.
fn code_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        if is_fence(line) {
            match open.take() {
                Some(block) => blocks.push(block),
                None => open = Some((n + 1, String::new())),
            }
        } else if let Some((_, block)) = &mut open {
            block.push_str(line);
            block.push('\n');
        }
    }
    blocks
}

/// A shell snippet's simple commands, each as its words: quotes removed, `\` line continuations
/// joined, `#` comments dropped, split at newlines, `;`, `&&`, `||` and `|`. Enough for the
/// commands the docs show; not a shell.
fn commands(script: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = script.chars().peekable();
    let end_word = |word: &mut Option<String>, words: &mut Vec<String>| {
        if let Some(w) = word.take() {
            words.push(w);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'\n') => {
                chars.next();
                end_word(&mut word, &mut words);
            }
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                for q in chars.by_ref() {
                    if q == c {
                        break;
                    }
                    w.push(q);
                }
            }
            '#' if word.is_none() => {
                while chars.peek().is_some_and(|c| *c != '\n') {
                    chars.next();
                }
            }
            '\n' | ';' | '&' | '|' => {
                end_word(&mut word, &mut words);
                if !words.is_empty() {
                    commands.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut words),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        commands.push(words);
    }
    commands
}

/// The value after `flag` (`flag VALUE` or `flag=VALUE`) at each place it occurs.
fn values_of<'a>(words: &'a [String], flag: &str) -> Vec<&'a str> {
    let mut values = Vec::new();
    for (i, w) in words.iter().enumerate() {
        if w == flag {
            if let Some(v) = words.get(i + 1) {
                values.push(v.as_str());
            }
        } else if let Some(v) = w.strip_prefix(flag).and_then(|v| v.strip_prefix('=')) {
            values.push(v);
        }
    }
    values
}

/// The chart's default image: `image.repository` in values.yaml and `appVersion` in
/// Chart.yaml, the tag an install without `image.tag` pulls.
fn chart_image() -> (String, String) {
    let values = read(Path::new("charts/kmseal/values.yaml"));
    let image = values
        .split("\nimage:\n")
        .nth(1)
        .expect("values.yaml has an image: block");
    let repository = image
        .lines()
        .find_map(|l| l.trim().strip_prefix("repository:"))
        .and_then(|r| r.split_whitespace().next())
        .expect("image.repository in values.yaml")
        .to_owned();
    let chart = read(Path::new("charts/kmseal/Chart.yaml"));
    let app_version = chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("appVersion in Chart.yaml")
        .trim()
        .trim_matches('"')
        .to_owned();
    (repository, app_version)
}

/// Every `helm install`/`helm upgrade` of charts/kmseal in `text`'s code blocks sets
/// `image.repository` (the chart's default image is not published), and the block it is in
/// pushes exactly the image it installs (`image.repository:image.tag`, the tag defaulting to
/// `app_version`) and builds no other. Returns how many installs it found and what is wrong.
fn install_problems(file: &str, text: &str, app_version: &str) -> (usize, Vec<String>) {
    let mut found = 0;
    let mut problems = Vec::new();
    for (line, block) in code_blocks(text) {
        let commands = commands(&block);
        let mut pushed = Vec::new();
        let mut built = Vec::new();
        for words in &commands {
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            match words.as_slice() {
                ["docker", "push", .., image] => pushed.push(image.to_string()),
                ["docker", "build", ..] | ["docker", "buildx", "build", ..] => {
                    let owned: Vec<String> = words.iter().map(|w| w.to_string()).collect();
                    let tags: Vec<String> = values_of(&owned, "-t")
                        .into_iter()
                        .chain(values_of(&owned, "--tag"))
                        .map(str::to_owned)
                        .collect();
                    if words.contains(&"--push") {
                        pushed.extend(tags.iter().cloned());
                    }
                    built.extend(tags);
                }
                _ => {}
            }
        }
        for words in &commands {
            let is_install = words.len() > 2
                && words[0] == "helm"
                && (words[1] == "install" || words[1] == "upgrade")
                && words
                    .iter()
                    .any(|w| w.trim_start_matches("./").trim_end_matches('/') == "charts/kmseal");
            if !is_install {
                continue;
            }
            found += 1;
            let mut sets = BTreeMap::new();
            for value in values_of(words, "--set") {
                // `a=b,c=d`; commas inside `{...}` belong to a list value.
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in value.char_indices().chain([(value.len(), ',')]) {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            if let Some((k, v)) = value[start..i].split_once('=') {
                                sets.insert(k.to_owned(), v.to_owned());
                            }
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
            }
            let at = format!("{file}, the code block at line {line}");
            let Some(repository) = sets.get("image.repository") else {
                problems.push(format!(
                    "{at}: `{} {}` of charts/kmseal sets no image.repository, so it pulls the chart's default image, which is not published: build and push one and set image.repository (and image.tag)",
                    words[0], words[1]
                ));
                continue;
            };
            let tag = sets.get("image.tag").map_or(app_version, String::as_str);
            let image = format!("{repository}:{tag}");
            if !pushed.contains(&image) {
                problems.push(format!(
                    "{at}: installs {image}, but the block pushes {}",
                    if pushed.is_empty() {
                        "no image".to_owned()
                    } else {
                        pushed.join(", ")
                    }
                ));
            }
            for other in built.iter().filter(|b| **b != image) {
                problems.push(format!("{at}: builds {other}, but installs {image}"));
            }
        }
    }
    (found, problems)
}

/// The placeholder the pre-commit examples pin while no release is tagged.
const REV_PLACEHOLDER: &str = "COMMIT-SHA";

/// Every `rev:` line (in YAML or in a YAML comment) names a tag of this repository or the
/// placeholder. Returns how many it found and what is wrong.
fn rev_problems(file: &str, text: &str, tags: &BTreeSet<String>) -> (usize, Vec<String>) {
    let mut found = 0;
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start().trim_start_matches('#').trim_start();
        let Some(rev) = line.strip_prefix("rev:") else {
            continue;
        };
        found += 1;
        let rev = rev
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_matches(['"', '\'']);
        if rev != REV_PLACEHOLDER && !tags.contains(rev) {
            problems.push(format!(
                "{file}:{}: rev: {rev} is not a tag of this repository (git tag -l lists {}); pin {REV_PLACEHOLDER} until a release is tagged",
                n + 1,
                if tags.is_empty() {
                    "none".to_owned()
                } else {
                    tags.iter().cloned().collect::<Vec<_>>().join(", ")
                }
            ));
        }
    }
    (found, problems)
}

/// The repository's tags; none where git or the history is not there (a source archive).
fn git_tags() -> BTreeSet<String> {
    std::process::Command::new("git")
        .args(["tag", "-l"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn shell_snippets_are_split_into_commands() {
    let script = "docker build -t r/i:1 . && docker push r/i:1   # then\n\
                  helm install k ./charts/kmseal/ \\\n  --set 'kms.allowedKeys={a,b}' \\\n  --set=image.tag=1\n\
                  kubectl get esec | grep x\n";
    assert_eq!(
        commands(script),
        [
            vec!["docker", "build", "-t", "r/i:1", "."],
            vec!["docker", "push", "r/i:1"],
            vec![
                "helm",
                "install",
                "k",
                "./charts/kmseal/",
                "--set",
                "kms.allowedKeys={a,b}",
                "--set=image.tag=1"
            ],
            vec!["kubectl", "get", "esec"],
            vec!["grep", "x"],
        ]
    );
}

/// What the install check refuses: no image.repository, an image pushed under another tag, a
/// tag defaulting to appVersion that the block did not push.
#[test]
fn an_install_without_its_image_is_refused() {
    let block = |body: &str| format!("text\n\n```sh\n{body}```\n");
    let good = block(
        "docker build -t reg/kc:0.2.0 . && docker push reg/kc:0.2.0\n\
         helm install kmseal charts/kmseal --set image.repository=reg/kc --set image.tag=0.2.0\n",
    );
    assert_eq!(install_problems("x.md", &good, "0.1.0"), (1, vec![]));
    let default_tag = block(
        "docker buildx build --platform linux/amd64 -t reg/kc:0.1.0 --push .\n\
         helm upgrade --install kmseal charts/kmseal --set image.repository=reg/kc,replicaCount=2\n",
    );
    assert_eq!(install_problems("x.md", &default_tag, "0.1.0"), (1, vec![]));

    let (found, problems) = install_problems(
        "x.md",
        &block("helm install kmseal charts/kmseal -n kmseal --set serviceAccount.roleArn=r\n"),
        "0.1.0",
    );
    assert_eq!(found, 1);
    assert!(
        problems[0].contains("sets no image.repository"),
        "{problems:?}"
    );
    assert!(
        problems[0].contains("x.md, the code block at line 3"),
        "{problems:?}"
    );

    let (_, problems) = install_problems(
        "x.md",
        &block(
            "docker build -t reg/kc:0.1.0 . && docker push reg/kc:0.1.0\n\
             helm install kmseal charts/kmseal --set image.repository=reg/kc --set image.tag=0.2.0\n",
        ),
        "0.1.0",
    );
    assert_eq!(
        problems,
        [
            "x.md, the code block at line 3: installs reg/kc:0.2.0, but the block pushes reg/kc:0.1.0",
            "x.md, the code block at line 3: builds reg/kc:0.1.0, but installs reg/kc:0.2.0",
        ]
    );
}

#[test]
fn a_pre_commit_rev_must_be_a_tag_or_the_placeholder() {
    let text = "repos:\n  - repo: https://github.com/kmseal/kmseal\n    rev: v0.1.0\n#   rev: COMMIT-SHA\n";
    let (found, problems) = rev_problems("x.md", text, &BTreeSet::new());
    assert_eq!(found, 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("x.md:3: rev: v0.1.0 is not a tag"),
        "{problems:?}"
    );
    let tags = BTreeSet::from(["v0.1.0".to_owned()]);
    assert_eq!(rev_problems("x.md", text, &tags), (2, vec![]));
}

/// The install commands the docs give agree with the chart: each sets image.repository (the
/// default is not published) and installs the image its block builds and pushes.
#[test]
fn every_documented_install_installs_the_image_it_pushes() {
    let (default_repository, app_version) = chart_image();
    assert!(!default_repository.is_empty() && !app_version.is_empty());
    let mut found = BTreeMap::new();
    let mut problems = Vec::new();
    for file in doc_files() {
        let name = file.display().to_string();
        let (n, mut p) = install_problems(&name, &read(&file), &app_version);
        found.insert(name, n);
        problems.append(&mut p);
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    for page in ["README.md", "docs/controller.md", "docs/aws.md"] {
        assert!(
            found[page] > 0,
            "no helm install of charts/kmseal found in {page}"
        );
    }
}

/// The pre-commit examples pin a tag that exists, or, while none does, the placeholder.
#[test]
fn every_pre_commit_rev_exists() {
    let tags = git_tags();
    let mut found = 0;
    let mut problems = Vec::new();
    let mut files = doc_files();
    files.push(PathBuf::from(".pre-commit-hooks.yaml"));
    for file in files {
        let (n, mut p) = rev_problems(&file.display().to_string(), &read(&file), &tags);
        found += n;
        problems.append(&mut p);
    }
    assert!(found > 0, "no pre-commit example found");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
