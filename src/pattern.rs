//! Namespace patterns, as the key policy and its identity rules name namespaces: a name, or a
//! pattern in which `*` stands for any run of characters. Pure.

/// A namespace name, or a pattern in which `*` stands for any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePattern(String);

impl NamespacePattern {
    /// A namespace name or pattern; the error says what is wrong, without quoting more than a
    /// bounded part of the text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let ok = !text.is_empty()
            && text.len() <= 63
            && text
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'*');
        if ok {
            Ok(NamespacePattern(text.to_owned()))
        } else {
            Err(format!(
                "{:?} is not a namespace or a namespace pattern: use lowercase letters, digits, '-' and '*' (any run of characters), at most 63",
                crate::text::bounded(text, 120)
            ))
        }
    }

    /// `*`: every namespace.
    pub fn any() -> Self {
        NamespacePattern("*".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, namespace: &str) -> bool {
        glob(self.0.as_bytes(), namespace.as_bytes())
    }
}

/// `*` matches any run of bytes; everything else matches itself. Linear in practice (patterns
/// are at most 63 bytes, names at most 63).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}
