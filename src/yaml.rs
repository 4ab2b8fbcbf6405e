//! What is wrong with YAML or JSON that does not parse, in words of our own. The parser's own
//! messages and snippets quote the input, which may be a secret, so only a fixed description
//! and the position leave this module: never a character of the text.

use std::fmt;

use serde_saphyr::budget::{Budget, BudgetBreach};
use serde_saphyr::granit_parser::ErrorKind;
use serde_saphyr::localizer::ExternalMessageSource;

/// Why a text did not parse, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxProblem {
    /// A fixed description (it holds numbers at most, never input text).
    pub what: String,
    /// 1-based line and column, where the parser knew them.
    pub at: Option<(u64, u64)>,
}

impl fmt::Display for SyntaxProblem {
    /// " at line 2, column 3: WHAT", to follow "… is not valid YAML".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((line, column)) = self.at {
            write!(f, " at line {line}, column {column}")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// Describes a parse error of `serde_saphyr` without quoting the input.
pub fn problem(error: &serde_saphyr::Error) -> SyntaxProblem {
    let at = error
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()));
    SyntaxProblem {
        what: describe(original(error)),
        at,
    }
}

/// The error under the wrappers that add snippets and alias locations.
fn original(error: &serde_saphyr::Error) -> &serde_saphyr::Error {
    let mut error = error.without_snippet();
    while let serde_saphyr::Error::AliasError { error: inner, .. } = error {
        error = inner.without_snippet();
    }
    error
}

fn describe(error: &serde_saphyr::Error) -> String {
    use serde_saphyr::Error as E;
    let budget = Budget::default();
    match error {
        E::ExternalMessage { source, .. } => match source.as_ref() {
            ExternalMessageSource::Parser(scan) => scan_problem(scan.kind(), &budget),
            _ => GENERIC.to_owned(),
        },
        E::Budget { breach, .. } => match breach {
            BudgetBreach::Aliases { .. } => format!(
                "too many aliases (*name): more than {} in one input",
                budget.max_aliases
            ),
            BudgetBreach::Anchors { .. } => format!(
                "too many anchors (&name): more than {} in one input",
                budget.max_anchors
            ),
            BudgetBreach::Depth { .. } => {
                format!("nesting deeper than {} levels", budget.max_depth)
            }
            BudgetBreach::Documents { .. } => format!(
                "too many documents: more than {} in one input",
                budget.max_documents
            ),
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
                "too many values: more than {} in one input, counting what aliases (*name) expand to; split it into several files",
                budget.max_nodes
            ),
            _ => "too large or too complex to parse; split it into several files".to_owned(),
        },
        E::AliasReplayCounterOverflow { .. }
        | E::AliasReplayLimitExceeded { .. }
        | E::AliasExpansionLimitExceeded { .. }
        | E::AliasReplayStackDepthExceeded { .. } => {
            "too many aliases: the anchors expand to more than this reader accepts (an alias bomb?)"
                .to_owned()
        }
        E::UnknownAnchor { .. } => {
            "an alias (*name) refers to no anchor (&name) defined before it".to_owned()
        }
        E::DuplicateMappingKey { .. } => "a key appears twice in one mapping".to_owned(),
        E::Eof { .. } => "the input ends in the middle of a value".to_owned(),
        E::MultipleDocuments { .. } => {
            "several documents (---) where one is expected".to_owned()
        }
        E::SerdeMissingField { field, .. } => format!("a required field is missing: {field}"),
        E::SerdeInvalidType { .. }
        | E::SerdeInvalidValue { .. }
        | E::SerdeInvalidLength { .. }
        | E::Unexpected { .. }
        | E::NullIntoString { .. }
        | E::InvalidScalar { .. }
        | E::InvalidBooleanStrict { .. }
        | E::QuotingRequired { .. } => {
            "a value of the wrong type here (e.g. a list or mapping where text belongs, or text where a mapping belongs; quote text that looks like a number or boolean)".to_owned()
        }
        E::InvalidBinaryBase64 { .. } | E::BinaryNotUtf8 { .. } => {
            "a !!binary value that is not valid base64 text".to_owned()
        }
        E::MergeKeyNotAllowed { .. } | E::MergeValueNotMapOrSeqOfMaps { .. } => {
            "a merge key (<<) that cannot be used here".to_owned()
        }
        E::InvalidUtf8Input => "the input is not valid UTF-8".to_owned(),
        _ => GENERIC.to_owned(),
    }
}

const GENERIC: &str = "the syntax is not valid here";

/// The scanner's and parser's errors. Only kinds whose meaning is known get words of their
/// own; any other (a newer parser's) gets the generic one, never the parser's text.
fn scan_problem(kind: &ErrorKind, budget: &Budget) -> String {
    use ErrorKind as K;
    let text = match kind {
        K::TabInIndentation | K::TabInBlockIndentation | K::TabAtBlockScalarStart => {
            "a tab character is not allowed for indentation; indent with spaces"
        }
        K::TabNotAllowed | K::TabInPlainScalar => "a tab character is not allowed here; use spaces",
        K::UnclosedQuotedScalar => "unterminated quoted string: a quote is opened and never closed",
        K::UnknownQuotedScalarEscape
        | K::InvalidQuotedScalarHexEscape
        | K::InvalidLowSurrogateHexEscape
        | K::InvalidLowSurrogate
        | K::MissingLowSurrogate
        | K::UnpairedLowSurrogate
        | K::InvalidUnicodeEscape => {
            "an invalid escape (\\…) in a double-quoted string; use single quotes for text with backslashes"
        }
        K::InvalidTrailingSingleQuotedScalar | K::InvalidTrailingDoubleQuotedScalar => {
            "text after the closing quote of a quoted string"
        }
        K::UnclosedFlowCollection { .. } => "a [ or { is opened and never closed",
        K::MisplacedFlowCollectionEnd | K::MismatchedFlowCollectionEnd { .. } => {
            "a ] or } that closes nothing, or closes the other kind of bracket"
        }
        K::RecursionLimitExceeded => {
            return format!(
                "nesting deeper than {} levels",
                budget.flow_nesting_limit.min(budget.max_depth.max(1))
            );
        }
        K::UnexpectedCharacter { .. } => {
            "a character that cannot start a value (such as @ or `); quote the value"
        }
        K::InvalidIndentation
        | K::ExpectedBlockMappingKey
        | K::ExpectedBlockSequenceEntry
        | K::InvalidBlockEntryWhitespace
        | K::InvalidFlowScalarIndent
        | K::InvalidQuotedScalarIndent
        | K::InvalidBlockScalarIndent => {
            "the indentation does not match the lines above (a key or list item out of line)"
        }
        K::InvalidSimpleKey
        | K::SimpleKeyExpected
        | K::MappingValueNotAllowed
        | K::InvalidColonPlacement
        | K::InvalidMappingValueWhitespace
        | K::MappingKeyNotAllowed => {
            "a key without its `: ` or a value with `: ` in it; quote a value that holds `: `"
        }
        K::BlockSequenceEntryNotAllowed | K::BlockEntryInFlowCollection => {
            "a list item (- ) where none may start"
        }
        K::UnknownAnchor => "an alias (*name) refers to no anchor (&name) defined before it",
        K::AnchorCountOverflow => "too many anchors (&name)",
        K::MissingAnchorOrAliasName => "an & or * without a name after it",
        K::UnexpectedEof
        | K::UnexpectedEofFlowSequence
        | K::UnexpectedEofFlowMapping
        | K::UnexpectedEofImplicitFlowMapping
        | K::UnexpectedEofBlockSequence
        | K::UnexpectedEofBlockMapping => "the input ends in the middle of a value",
        K::ExpectedFlowMappingSeparator | K::ExpectedFlowSequenceSeparator => {
            "a missing , between the entries of a [ ] or { } list"
        }
        K::ExpectedNodeContent => "a value is missing here",
        K::CommentNotSeparated | K::CommentInterceptedScalar => {
            "a # that starts a comment needs a space before it; quote a value that holds #"
        }
        K::BomInsideDocument => "a byte-order mark in the middle of the text",
        K::DocumentIndicatorInQuotedScalar => "a --- or ... line inside a quoted string",
        K::InvalidBlockScalarHeader | K::ZeroBlockScalarIndent => {
            "a | or > block with an invalid header (only digits 1-9 and + or - may follow)"
        }
        K::InputDecoding { .. } => "the input is not valid UTF-8",
        _ => GENERIC,
    };
    text.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-value";

    fn problem_of(text: &str) -> SyntaxProblem {
        let result: Result<Vec<serde_json::Value>, _> = serde_saphyr::from_multiple(text);
        problem(&result.expect_err("does not parse"))
    }

    #[test]
    fn each_problem_is_described_in_fixed_words_with_its_position() {
        let deep = format!("a: {}{}\n", "[".repeat(300), "]".repeat(300));
        type Case = (String, &'static str, Option<(u64, u64)>);
        let cases: Vec<Case> = vec![
            (
                format!("a:\n\tb: {SECRET}\n"),
                "a tab character is not allowed for indentation",
                Some((2, 2)),
            ),
            (
                format!("a: \"{SECRET}\n"),
                "unterminated quoted string",
                Some((1, 4)),
            ),
            (
                format!("a: '{SECRET}\n"),
                "unterminated quoted string",
                Some((1, 4)),
            ),
            (deep, "nesting deeper than", None),
            (
                format!("a: [{SECRET}\n"),
                "a [ or { is opened and never closed",
                Some((1, 4)),
            ),
            (
                format!("a: b: {SECRET}\n"),
                "quote a value that holds `: `",
                Some((1, 5)),
            ),
            (
                format!("a: *{SECRET}\n"),
                "refers to no anchor",
                Some((1, 4)),
            ),
            (
                format!("- a\nb: {SECRET}\n"),
                "indentation does not match",
                Some((2, 1)),
            ),
            (
                format!("{SECRET}: 1\n{SECRET}: 2\n"),
                "a key appears twice",
                Some((2, 1)),
            ),
            (
                format!("key: @{SECRET}\n"),
                "cannot start a value",
                Some((1, 6)),
            ),
            (
                format!("a:\n  - b\n c: {SECRET}\n"),
                "indentation does not match",
                Some((3, 2)),
            ),
            (format!("a: \"\\q{SECRET}\"\n"), "an invalid escape", None),
        ];
        for (text, says, at) in cases {
            let p = problem_of(&text);
            let shown = p.to_string();
            assert!(shown.contains(says), "{text:?}: {shown}");
            assert!(
                !shown.contains(SECRET) && !shown.contains("s3cr3t"),
                "{text:?}: {shown}"
            );
            if let Some(at) = at {
                assert_eq!(p.at, Some(at), "{text:?}: {shown}");
                assert!(
                    shown.starts_with(&format!(" at line {}, column {}: ", at.0, at.1)),
                    "{shown}"
                );
            }
        }
    }

    #[test]
    fn an_alias_bomb_is_too_many_aliases() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let shown = problem_of(&text).to_string();
        assert!(shown.contains("aliases"), "{shown}");
    }

    #[test]
    fn typed_errors_name_no_value() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            name: String,
            data: std::collections::BTreeMap<String, String>,
        }
        let bad: Result<T, _> = serde_saphyr::from_str(&format!("name: x\ndata: [{SECRET}]\n"));
        let shown = problem(&bad.unwrap_err()).to_string();
        assert!(shown.contains("wrong type"), "{shown}");
        assert!(!shown.contains(SECRET), "{shown}");
        let missing: Result<T, _> = serde_saphyr::from_str("data: {}\n");
        let shown = problem(&missing.unwrap_err()).to_string();
        assert!(
            shown.contains("a required field is missing: name"),
            "{shown}"
        );
    }
}
