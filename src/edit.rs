//! Edits of a manifest's text in place: a value replaced, an entry added to a block mapping, a
//! document replaced. Everything else (comments, order, quoting, blank lines, line ends, the
//! other documents) stays byte for byte. Pure text, and deliberately narrow: where the text is
//! not plainly laid out (flow style, tabs, a key written twice) an edit declines rather than
//! guesses, and the caller checks that what it wrote parses to what it meant.

use std::ops::Range;

/// Why an edit declined.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{0} is not a block mapping written one entry per line")]
    NotBlock(String),
    #[error("{0} is not in the document")]
    Missing(String),
    #[error("the old value is not written once, on its own, in the document")]
    NotUnique,
}

/// The line ending the text uses (CRLF if any line ends so).
pub fn line_ending(text: &str) -> &'static str {
    if text.contains("\r\n") { "\r\n" } else { "\n" }
}

/// One line of the text: where it starts, where its content ends (before `\r\n` or `\n`), and
/// where the next line starts.
#[derive(Debug, Clone, Copy)]
struct Line {
    start: usize,
    content_end: usize,
    next: usize,
}

fn lines(text: &str, range: Range<usize>) -> Vec<Line> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let rest = &text[at..range.end];
        let (content, next) = match rest.find('\n') {
            Some(n) => (at + n, at + n + 1),
            None => (range.end, range.end),
        };
        let content_end = if content > at && text.as_bytes()[content - 1] == b'\r' {
            content - 1
        } else {
            content
        };
        out.push(Line {
            start: at,
            content_end,
            next,
        });
        at = next;
    }
    out
}

/// A line that holds YAML content (not blank, not only a comment).
fn is_content(s: &str) -> bool {
    let t = s.trim_start_matches(' ');
    !t.is_empty() && !t.starts_with('#')
}

/// Spaces before the content; `None` when a tab is among them (which YAML forbids).
fn indent_of(s: &str) -> Option<usize> {
    let n = s.len() - s.trim_start_matches(' ').len();
    (!s[n..].starts_with('\t')).then_some(n)
}

/// The byte ranges of a YAML stream's documents: split at `---` lines (a `...` line ends one),
/// keeping only parts that hold content. A `---` at column 0 is always a marker: inside a
/// block scalar or a nested value it would be indented.
pub fn documents(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let push = |range: Range<usize>, out: &mut Vec<Range<usize>>| {
        let holds = lines(text, range.clone()).iter().any(|l| {
            is_content(&text[l.start..l.content_end]) && !text[l.start..].starts_with('%')
        });
        if holds {
            out.push(range);
        }
    };
    for line in lines(text, 0..text.len()) {
        let s = &text[line.start..line.content_end];
        let marker = |m: &str| {
            s.strip_prefix(m)
                .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
        };
        if marker("---") || marker("...") {
            push(start..line.start, &mut out);
            start = line.next;
        }
    }
    push(start..text.len(), &mut out);
    out
}

/// The key of a `key:` line's content (`None` if it is not one), and whether a value follows
/// on the same line (anything but a comment).
fn key_of(content: &str) -> Option<(String, bool)> {
    let (key, rest) = if let Some(quoted) = content.strip_prefix('"') {
        let end = quoted.find('"')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else if let Some(quoted) = content.strip_prefix('\'') {
        let end = quoted.find('\'')?;
        (quoted[..end].to_owned(), &quoted[end + 1..])
    } else {
        let colon = content
            .match_indices(':')
            .map(|(i, _)| i)
            .find(|&i| content[i + 1..].is_empty() || content[i + 1..].starts_with([' ', '\t']))?;
        (content[..colon].trim_end().to_owned(), &content[colon..])
    };
    let rest = rest.trim_start_matches([' ', '\t']).strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let value = rest.trim_start_matches([' ', '\t']);
    Some((key, !(value.is_empty() || value.starts_with('#'))))
}

/// Where a block mapping sits in a document: the line of its last entry (or of its own key,
/// when it has none) and the indent of its entries.
struct Mapping {
    after: Line,
    indent: usize,
    /// The keys it has.
    keys: Vec<String>,
}

fn find_mapping(text: &str, range: Range<usize>, path: &[&str]) -> Result<Mapping, EditError> {
    let all = lines(text, range);
    let shown = || path.join(".");
    let not_block = || EditError::NotBlock(shown());
    // The lines of the current block, and the indent of the key that owns it (None: top).
    let mut block: &[Line] = &all;
    let mut owner_indent: Option<usize> = None;
    let mut owner: Option<Line> = None;
    for segment in path.iter().copied().chain(std::iter::once("")) {
        // The entries of this block: content lines at its first content line's indent.
        let content: Vec<(usize, &Line, usize)> = block
            .iter()
            .enumerate()
            .filter(|(_, l)| is_content(&text[l.start..l.content_end]))
            .map(|(i, l)| {
                indent_of(&text[l.start..l.content_end])
                    .map(|n| (i, l, n))
                    .ok_or_else(not_block)
            })
            .collect::<Result<_, _>>()?;
        let indent = match content.first() {
            Some((_, _, n)) => *n,
            None if segment.is_empty() => {
                // An empty mapping (`encryptedData:` and nothing): entries go under its key.
                let owner = owner.ok_or_else(not_block)?;
                return Ok(Mapping {
                    after: owner,
                    indent: owner_indent.unwrap_or(0) + 2,
                    keys: vec![],
                });
            }
            None => return Err(EditError::Missing(shown())),
        };
        if owner_indent.is_some_and(|o| indent <= o) {
            return Err(not_block());
        }
        let mut entries = Vec::new();
        for (i, line, n) in &content {
            if *n < indent {
                return Err(not_block());
            }
            if *n == indent {
                let s = &text[line.start + n..line.content_end];
                let (key, has_value) = key_of(s).ok_or_else(not_block)?;
                entries.push((*i, **line, key, has_value));
            }
        }
        if segment.is_empty() {
            let last = content.last().map(|(_, l, _)| **l).ok_or_else(not_block)?;
            let keys: Vec<String> = entries.iter().map(|(_, _, k, _)| k.clone()).collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != keys.len() {
                return Err(not_block());
            }
            return Ok(Mapping {
                after: last,
                indent,
                keys,
            });
        }
        let mut found = entries.iter().filter(|(_, _, k, _)| k == segment);
        let (i, line, _, has_value) = found.next().ok_or_else(|| EditError::Missing(shown()))?;
        if found.next().is_some() || *has_value {
            return Err(not_block());
        }
        // Its block: the lines after it, up to the next entry of this level.
        let end = entries
            .iter()
            .map(|(j, ..)| *j)
            .find(|j| j > i)
            .unwrap_or(block.len());
        owner = Some(*line);
        owner_indent = Some(indent);
        block = &block[i + 1..end];
    }
    unreachable!("the loop returns at its last segment")
}

/// `s` as a YAML scalar: plain when that reads back as the same string, else double-quoted
/// (a JSON string is a valid YAML one).
pub fn scalar(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'=' | b'_' | b'.' | b'-' | b':')
        })
        && !s.starts_with(['-', ':', '.'])
        && !s.contains("::")
        && !s.ends_with(':')
        && !s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'+' | b'-' | b'e' | b'E'))
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "null" | "yes" | "no" | "on" | "off" | "y" | "n" | "~"
        );
    if plain {
        s.to_owned()
    } else {
        serde_json::Value::String(s.to_owned()).to_string()
    }
}

/// Adds `key: value` entries to the block mapping at `path` in the document `range` of
/// `text`, after its last entry and at its entries' indent, in the text's line ending.
/// Declines when the mapping already has one of the keys.
pub fn add_entries(
    text: &str,
    range: Range<usize>,
    path: &[&str],
    entries: &[(&str, &str)],
) -> Result<String, EditError> {
    if entries.is_empty() {
        return Ok(text.to_owned());
    }
    let mapping = find_mapping(text, range, path)?;
    if entries
        .iter()
        .any(|(k, _)| mapping.keys.iter().any(|have| have == k))
    {
        return Err(EditError::NotBlock(path.join(".")));
    }
    let eol = line_ending(text);
    let indent = " ".repeat(mapping.indent);
    let mut added = String::new();
    for (key, value) in entries {
        added.push_str(&format!("{indent}{}: {}{eol}", scalar(key), scalar(value)));
    }
    let mut out = String::with_capacity(text.len() + added.len() + eol.len());
    if mapping.after.next == mapping.after.content_end {
        // The last line has no line ending (the end of the file).
        out.push_str(&text[..mapping.after.content_end]);
        out.push_str(eol);
        out.push_str(added.strip_suffix(eol).unwrap_or(&added));
        out.push_str(&text[mapping.after.content_end..]);
    } else {
        out.push_str(&text[..mapping.after.next]);
        out.push_str(&added);
        out.push_str(&text[mapping.after.next..]);
    }
    Ok(out)
}

/// Replaces `old` by `new` where it stands in the document `range`: it must be written there
/// exactly once, as a whole token (sealed values are unique: random nonces and data keys),
/// and nowhere else in the text.
pub fn replace_value(
    text: &str,
    range: Range<usize>,
    old: &str,
    new: &str,
) -> Result<String, EditError> {
    let mut at = text.match_indices(old).map(|(i, _)| i);
    let (Some(i), None) = (at.next(), at.next()) else {
        return Err(EditError::NotUnique);
    };
    let token =
        |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || "+/=".contains(c)));
    if !range.contains(&i)
        || !token(text[..i].chars().next_back())
        || !token(text[i + old.len()..].chars().next())
    {
        return Err(EditError::NotUnique);
    }
    Ok(format!("{}{new}{}", &text[..i], &text[i + old.len()..]))
}

/// `text` with the document `range` replaced by `document` (other documents untouched).
pub fn replace_document(text: &str, range: Range<usize>, document: &str) -> String {
    format!("{}{document}{}", &text[..range.start], &text[range.end..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# sealed for prod: do not edit by hand
apiVersion: kmseal.dev/v1alpha1
kind: EncryptedSecret
metadata:
  name: db   # the app's database
  namespace: prod
spec:
  keyId: alias/kmseal   # rotated yearly
  encryptedData:
    # the login
    username: AAAA
    password: 'BBBB'  # quoted on purpose

    # trailing comment in the mapping
  template:
    type: Opaque
# end of file
";

    #[test]
    fn an_entry_goes_after_the_last_one_and_nothing_else_moves() {
        let out = add_entries(
            FILE,
            0..FILE.len(),
            &["spec", "encryptedData"],
            &[("token", "CCCC")],
        )
        .unwrap();
        let expected = FILE.replace(
            "    password: 'BBBB'  # quoted on purpose\n",
            "    password: 'BBBB'  # quoted on purpose\n    token: CCCC\n",
        );
        assert_eq!(out, expected);
        // An existing key is not added twice.
        assert!(
            add_entries(
                FILE,
                0..FILE.len(),
                &["spec", "encryptedData"],
                &[("username", "x")]
            )
            .is_err()
        );
        // Paths that are not there, or not block mappings, decline.
        assert_eq!(
            add_entries(FILE, 0..FILE.len(), &["spec", "nothing"], &[("a", "b")]),
            Err(EditError::Missing("spec.nothing".into()))
        );
        assert!(add_entries(FILE, 0..FILE.len(), &["spec", "keyId"], &[("a", "b")]).is_err());
        // A key on the top level: spec's own entries.
        let out = add_entries(FILE, 0..FILE.len(), &["spec"], &[("rotation", "x")]).unwrap();
        assert!(
            out.contains("    type: Opaque\n  rotation: x\n# end of file\n"),
            "{out}"
        );
    }

    #[test]
    fn crlf_flow_style_tabs_and_a_missing_final_newline() {
        let crlf = FILE.replace('\n', "\r\n");
        let out = add_entries(
            &crlf,
            0..crlf.len(),
            &["spec", "encryptedData"],
            &[("t", "C")],
        )
        .unwrap();
        assert!(
            out.contains("  # quoted on purpose\r\n    t: C\r\n\r\n"),
            "{out:?}"
        );
        assert!(!out.replace("\r\n", "").contains('\n'));
        let flow = "spec:\n  encryptedData: {a: b}\n";
        assert!(
            add_entries(
                flow,
                0..flow.len(),
                &["spec", "encryptedData"],
                &[("c", "d")]
            )
            .is_err()
        );
        let tabs = "spec:\n\tencryptedData:\n\t\ta: b\n";
        assert!(
            add_entries(
                tabs,
                0..tabs.len(),
                &["spec", "encryptedData"],
                &[("c", "d")]
            )
            .is_err()
        );
        let unterminated = "spec:\n  encryptedData:\n    a: b";
        assert_eq!(
            add_entries(
                unterminated,
                0..unterminated.len(),
                &["spec", "encryptedData"],
                &[("c", "d")]
            )
            .unwrap(),
            "spec:\n  encryptedData:\n    a: b\n    c: d"
        );
        let empty = "spec:\n  encryptedData:\n  keyId: k\n";
        assert_eq!(
            add_entries(
                empty,
                0..empty.len(),
                &["spec", "encryptedData"],
                &[("c", "d")]
            )
            .unwrap(),
            "spec:\n  encryptedData:\n    c: d\n  keyId: k\n"
        );
        let twice = "spec:\n  encryptedData:\n    a: b\n    a: c\n";
        assert!(
            add_entries(
                twice,
                0..twice.len(),
                &["spec", "encryptedData"],
                &[("c", "d")]
            )
            .is_err()
        );
    }

    #[test]
    fn documents_are_split_at_markers_only() {
        let text = "# header\n---\na: 1\nb: |\n  ---\n  not a marker\n---\n# only a comment\n--- \nc: 3\n...\n";
        let docs: Vec<&str> = documents(text).into_iter().map(|r| &text[r]).collect();
        assert_eq!(docs, ["a: 1\nb: |\n  ---\n  not a marker\n", "c: 3\n"]);
        assert_eq!(documents("a: 1").len(), 1);
        assert!(documents("").is_empty());
        // An entry is added in its own document only.
        let two = "spec:\n  encryptedData:\n    a: b\n---\nspec:\n  encryptedData:\n    x: y\n";
        let second = documents(two)[1].clone();
        assert_eq!(
            add_entries(two, second, &["spec", "encryptedData"], &[("c", "d")]).unwrap(),
            "spec:\n  encryptedData:\n    a: b\n---\nspec:\n  encryptedData:\n    x: y\n    c: d\n"
        );
    }

    #[test]
    fn a_value_is_replaced_only_where_it_stands_once() {
        assert_eq!(
            replace_value(FILE, 0..FILE.len(), "AAAA", "ZZZZ").unwrap(),
            FILE.replace("username: AAAA", "username: ZZZZ")
        );
        assert_eq!(
            replace_value(FILE, 0..FILE.len(), "BBBB", "YYYY").unwrap(),
            FILE.replace("'BBBB'", "'YYYY'")
        );
        // Part of a longer token, written twice, or outside the document: declined.
        assert!(replace_value("a: XAAAA\n", 0..9, "AAAA", "Z").is_err());
        assert!(replace_value("a: AAAA\nb: AAAA\n", 0..16, "AAAA", "Z").is_err());
        assert!(replace_value("a: AAAA\n---\nb: c\n", 12..17, "AAAA", "Z").is_err());
    }

    #[test]
    fn scalars_are_plain_only_when_they_read_back_the_same() {
        assert_eq!(scalar("a21zZWFs+/=="), "a21zZWFs+/==");
        assert_eq!(
            scalar("arn:aws:kms:eu-west-1:1:alias/x"),
            "arn:aws:kms:eu-west-1:1:alias/x"
        );
        assert_eq!(scalar("tls.crt"), "tls.crt");
        for quoted in [
            "true",
            "No",
            "123",
            "1e5",
            ".dockercfg",
            "-x",
            "a b",
            "a: b",
            "#x",
            "",
            "x:",
        ] {
            assert!(scalar(quoted).starts_with('"'), "{quoted}");
        }
    }

    #[test]
    fn hostile_text_never_panics() {
        let samples = [
            "",
            "\n",
            "\r\n",
            ":",
            "a:",
            "'unterminated: x",
            "\"x",
            "  - a\n",
            "a:\n\t- b\n",
            "spec:\n  encryptedData:\n  x",
            "\u{feff}spec:\n",
            "spec: \u{1F600}\n  encryptedData:\n",
        ];
        for s in samples {
            for r in documents(s) {
                let _ = add_entries(s, r.clone(), &["spec", "encryptedData"], &[("k", "v")]);
                let _ = replace_value(s, r, "x", "y");
            }
            let _ = add_entries(s, 0..s.len(), &["spec"], &[("k", "v")]);
        }
    }
}
