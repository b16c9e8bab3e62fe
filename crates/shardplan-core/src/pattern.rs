//! Tensor-name patterns: `*` matches any run of characters (dots included),
//! `?` one character; in a stage `layer` pattern, `{}` captures a decimal
//! layer index.
//!
//! ```
//! use shardplan_core::pattern::{Glob, LayerPattern, PatternError};
//!
//! let g = Glob::new("layers.*.wq").unwrap();
//! assert!(g.matches("layers.12.wq") && !g.matches("layers.12.wk"));
//! let p = LayerPattern::new("layers.{}.*").unwrap();
//! assert_eq!(p.capture("layers.7.ffn.w1"), Some(7));
//! assert_eq!(Glob::new(""), Err(PatternError::Empty));
//! ```

/// Why a pattern does not compile, one variant per fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// An empty glob, which would match nothing.
    #[error("the pattern is empty")]
    Empty,
    /// A glob containing `{}`, which only a layer pattern captures.
    #[error("`{{}}` is only meaningful in a stages `layer` pattern")]
    CaptureInGlob,
    /// A layer pattern without `{}`.
    #[error("the layer pattern needs one `{{}}` where the layer index is")]
    NoCapture,
    /// A layer pattern with two or more `{}`.
    #[error("the layer pattern has more than one `{{}}`")]
    SeveralCaptures,
}

/// A compiled name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    chars: Vec<char>,
}

impl Glob {
    /// Compiles `pattern`.
    ///
    /// # Errors
    ///
    /// [`PatternError::Empty`] or [`PatternError::CaptureInGlob`].
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        if pattern.is_empty() {
            return Err(PatternError::Empty);
        }
        if pattern.contains("{}") {
            return Err(PatternError::CaptureInGlob);
        }
        Ok(Glob {
            chars: pattern.chars().collect(),
        })
    }

    /// Iterative wildcard match with single backtracking point: O(n * m)
    /// worst case, never exponential.
    /// True when the pattern matches the whole of `name`.
    pub fn matches(&self, name: &str) -> bool {
        let p = &self.chars;
        let s: Vec<char> = name.chars().collect();
        let (mut i, mut j) = (0usize, 0usize);
        let mut star: Option<(usize, usize)> = None;
        while i < s.len() {
            if j < p.len() && (p[j] == '?' || (p[j] != '*' && p[j] == s[i])) {
                i += 1;
                j += 1;
            } else if j < p.len() && p[j] == '*' {
                star = Some((j, i));
                j += 1;
            } else if let Some((sj, si)) = star {
                j = sj + 1;
                i = si + 1;
                star = Some((sj, si + 1));
            } else {
                return false;
            }
        }
        p[j..].iter().all(|&c| c == '*')
    }
}

/// A pattern with one `{}` that captures a layer index.
#[derive(Debug, Clone)]
pub struct LayerPattern {
    left: Glob,
    right: Glob,
}

impl LayerPattern {
    /// Compiles a `layer` pattern.
    ///
    /// # Errors
    ///
    /// [`PatternError::NoCapture`] or [`PatternError::SeveralCaptures`]:
    /// a pattern without exactly one `{}`.
    pub fn new(pattern: &str) -> Result<Self, PatternError> {
        let Some((l, r)) = pattern.split_once("{}") else {
            return Err(PatternError::NoCapture);
        };
        if r.contains("{}") {
            return Err(PatternError::SeveralCaptures);
        }
        let glob = |s: &str| -> Glob {
            Glob {
                chars: s.chars().collect(),
            }
        };
        Ok(LayerPattern {
            left: glob(l),
            right: glob(r),
        })
    }

    /// The layer index in `name`: the first run of digits, leftmost first,
    /// with the text around it matching.
    /// The layer index `name` has under the pattern, if it matches.
    pub fn capture(&self, name: &str) -> Option<u64> {
        let bytes = name.as_bytes();
        for start in 0..bytes.len() {
            if !bytes[start].is_ascii_digit() || !name.is_char_boundary(start) {
                continue;
            }
            if !self.left.matches(&name[..start]) {
                continue;
            }
            let mut run = start;
            while run < bytes.len() && bytes[run].is_ascii_digit() {
                run += 1;
            }
            // The longest digit run whose remainder matches.
            for end in (start + 1..=run).rev() {
                if self.right.matches(&name[end..]) {
                    return name[start..end].parse().ok();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let cases = [
            ("*", "a.b.c", true),
            (
                "model.layers.*.q_proj.weight",
                "model.layers.12.self_attn.q_proj.weight",
                true,
            ),
            ("model.embed_tokens.*", "model.embed_tokens.weight", true),
            ("model.embed_tokens.*", "model.norm.weight", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*.bias", "x.bias.y", false),
            ("a*b*c*d", "aXbYcZd", true),
            ("a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", false),
        ];
        for (p, name, expect) in cases {
            assert_eq!(Glob::new(p).unwrap().matches(name), expect, "{p} {name}");
        }
    }

    #[test]
    fn layer_capture() {
        let p = LayerPattern::new("model.layers.{}.*").unwrap();
        assert_eq!(p.capture("model.layers.17.mlp.up_proj.weight"), Some(17));
        assert_eq!(p.capture("model.layers.3.x"), Some(3));
        assert_eq!(p.capture("model.norm.weight"), None);
        let p = LayerPattern::new("*h.{}.*").unwrap();
        assert_eq!(p.capture("transformer.h.102.attn"), Some(102));
    }

    #[test]
    fn malformed_patterns_name_the_fault() {
        let globs = [
            ("", PatternError::Empty),
            ("layers.{}.w", PatternError::CaptureInGlob),
        ];
        for (p, fault) in globs {
            assert_eq!(Glob::new(p), Err(fault), "{p:?}");
        }
        let layers = [
            ("no capture", PatternError::NoCapture),
            ("", PatternError::NoCapture),
            ("a.{}.b.{}", PatternError::SeveralCaptures),
        ];
        for (p, fault) in layers {
            assert_eq!(LayerPattern::new(p).err(), Some(fault), "{p:?}");
        }
    }
}
