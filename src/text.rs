//! Text from outside (tenants' names, KMS's and the API server's messages) bounded before it
//! goes into an error, a condition, an event or a log line: hostile or runaway input cannot
//! flood a terminal or a status.

/// At most `max` characters of `s`, control characters shown as spaces, with an ellipsis
/// when cut.
pub fn bounded(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_or_unprintable_text_is_cut_and_cleaned() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("exactly10!", 10), "exactly10!");
        assert_eq!(bounded("eleven chars", 11), "eleven char…");
        assert_eq!(bounded("a\nb\u{1b}[31mc", 20), "a b [31mc");
        assert_eq!(bounded("ééééé", 3), "ééé…");
    }
}
