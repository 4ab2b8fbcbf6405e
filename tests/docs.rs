//! The documentation stays usable as it is split between the README and `docs/`: every
//! relative link in README.md and docs/*.md leads to a file that exists and, with `#anchor`, to
//! a heading that exists in it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
