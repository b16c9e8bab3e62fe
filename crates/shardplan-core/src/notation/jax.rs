//! JAX `PartitionSpec`: `P('dp', ('tp', 'sp'), None)`.

use std::sync::Arc;

use super::is_even_blocks;
use crate::error::LayoutError;
use crate::layout::{DimSplit, LayoutConfig, TensorLayout};
use crate::mesh::DeviceMesh;

/// A parsed `PartitionSpec`: per tensor dimension, the mesh axes splitting
/// it (major first); dimensions beyond the listed ones are not split.
///
/// # Example
///
/// ```
/// use shardplan_core::notation::jax::PartitionSpec;
///
/// let spec: PartitionSpec = "P('dp', ('tp', 'sp'), None)".parse().unwrap();
/// assert_eq!(spec.dims, vec![vec!["dp".to_string()], vec!["tp".into(), "sp".into()], vec![]]);
/// assert_eq!(spec.to_string(), "P('dp', ('tp', 'sp'), None)");
/// assert!("P('dp'".parse::<PartitionSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PartitionSpec {
    /// Axes per dimension; empty = `None`.
    pub dims: Vec<Vec<String>>,
}

pub use super::fault::JaxFault;

impl From<JaxFault> for LayoutError {
    fn from(fault: JaxFault) -> Self {
        LayoutError::Jax(fault)
    }
}

impl std::str::FromStr for PartitionSpec {
    type Err = LayoutError;

    fn from_str(text: &str) -> Result<Self, LayoutError> {
        let t = text.trim();
        let inner = t
            .strip_prefix("PartitionSpec(")
            .or_else(|| t.strip_prefix("P("))
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| JaxFault::NotAPartitionSpec {
                text: text.to_string(),
            })?;
        let mut dims = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            let (entry, tail) = if let Some(r) = rest.strip_prefix('(') {
                let close = r.find(')').ok_or_else(|| JaxFault::UnclosedTuple {
                    text: text.to_string(),
                })?;
                let names = r[..close]
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| axis_name(s, text))
                    .collect::<Result<Vec<_>, _>>()?;
                (names, &r[close + 1..])
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                let item = rest[..end].trim();
                let names = if item == "None" {
                    Vec::new()
                } else {
                    vec![axis_name(item, text)?]
                };
                (names, &rest[end..])
            };
            dims.push(entry);
            let tail = tail.trim_start();
            rest = match tail.strip_prefix(',') {
                Some(t) => t.trim_start(),
                None if tail.is_empty() => tail,
                None => {
                    return Err(JaxFault::ExpectedComma {
                        text: text.to_string(),
                    }
                    .into());
                }
            };
        }
        Ok(PartitionSpec { dims })
    }
}

fn axis_name(item: &str, text: &str) -> Result<String, LayoutError> {
    let unquoted = item
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| item.strip_prefix('"').and_then(|s| s.strip_suffix('"')));
    match unquoted {
        Some(name)
            if !name.is_empty()
                && !name
                    .chars()
                    .any(|c| c.is_whitespace() || "'\"(),".contains(c)) =>
        {
            Ok(name.to_string())
        }
        _ => Err(JaxFault::BadEntry {
            item: item.to_string(),
            text: text.to_string(),
        }
        .into()),
    }
}

impl std::fmt::Display for PartitionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "P(")?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match d.as_slice() {
                [] => write!(f, "None")?,
                [a] => write!(f, "'{a}'")?,
                many => {
                    let q: Vec<String> = many.iter().map(|a| format!("'{a}'")).collect();
                    write!(f, "({})", q.join(", "))?;
                }
            }
        }
        write!(f, ")")
    }
}

impl PartitionSpec {
    /// The layout of a tensor of `shape` under this spec on `mesh`; splits are even.
    ///
    /// # Errors
    ///
    /// [`LayoutError::Jax`] ([`JaxFault::TooManyEntries`]) when the spec has
    /// more entries than the tensor has dimensions; otherwise whatever
    /// [`TensorLayout::new`] refuses.
    pub fn to_layout(
        &self,
        mesh: Arc<DeviceMesh>,
        shape: &[u64],
    ) -> Result<TensorLayout, LayoutError> {
        if self.dims.len() > shape.len() {
            return Err(JaxFault::TooManyEntries {
                spec: self.to_string(),
                entries: self.dims.len(),
                tensor_dims: shape.len(),
            }
            .into());
        }
        let mut dims: Vec<DimSplit> = self
            .dims
            .iter()
            .map(|a| DimSplit::over(a.clone()))
            .collect();
        dims.resize(shape.len(), DimSplit::none());
        TensorLayout::new(mesh, shape, &LayoutConfig::new(dims))
    }

    /// The spec of `layout`.
    ///
    /// # Errors
    ///
    /// [`LayoutError::Jax`] for a layout given box by box
    /// ([`JaxFault::Explicit`]), partial axes ([`JaxFault::Partial`]), pins
    /// ([`JaxFault::Pinned`]), and uneven blocks ([`JaxFault::UnevenBlocks`]),
    /// which a `PartitionSpec` cannot express.
    pub fn from_layout(layout: &TensorLayout) -> Result<Self, LayoutError> {
        super::refuse_explicit(layout, |layout| JaxFault::Explicit { layout }.into())?;
        if !layout.partial().is_empty() {
            return Err(JaxFault::Partial {
                layout: layout.to_string(),
            }
            .into());
        }
        if !layout.pin().is_empty() {
            return Err(JaxFault::Pinned {
                layout: layout.to_string(),
            }
            .into());
        }
        let mut dims = Vec::new();
        for (d, dim) in layout.dims().iter().enumerate() {
            if !is_even_blocks(dim, layout.shape()[d]) {
                return Err(JaxFault::UnevenBlocks {
                    dim: d,
                    layout: layout.to_string(),
                }
                .into());
            }
            dims.push(
                dim.axes()
                    .iter()
                    .map(|&a| layout.axis_name(a).to_string())
                    .collect(),
            );
        }
        Ok(PartitionSpec { dims })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_forms() {
        let text = |t: &str| t.to_string();
        let cases: Vec<(&str, Result<&str, JaxFault>)> = vec![
            ("P()", Ok("P()")),
            ("PartitionSpec('a', None)", Ok("P('a', None)")),
            ("P(\"a\", ('b',))", Ok("P('a', 'b')")),
            ("P(None, ('x', 'y'))", Ok("P(None, ('x', 'y'))")),
            (
                "P(a)",
                Err(JaxFault::BadEntry {
                    item: text("a"),
                    text: text("P(a)"),
                }),
            ),
            (
                "Q('a')",
                Err(JaxFault::NotAPartitionSpec {
                    text: text("Q('a')"),
                }),
            ),
            (
                "P(('a', 'b')",
                Err(JaxFault::UnclosedTuple {
                    text: text("P(('a', 'b')"),
                }),
            ),
            (
                "P('a' 'b')",
                Err(JaxFault::BadEntry {
                    item: text("'a' 'b'"),
                    text: text("P('a' 'b')"),
                }),
            ),
            (
                "P(('a') 'b')",
                Err(JaxFault::ExpectedComma {
                    text: text("P(('a') 'b')"),
                }),
            ),
        ];
        for (t, expect) in cases {
            let got = t.parse::<PartitionSpec>().map(|s| s.to_string());
            assert_eq!(
                got,
                expect.map(str::to_string).map_err(LayoutError::Jax),
                "{t}"
            );
        }
    }

    /// The fault's text follows the notation's name; code and help are the
    /// fault's.
    #[test]
    fn fault_text_code_and_help() {
        use miette::Diagnostic;
        let e = "P(a)".parse::<PartitionSpec>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "jax: `a` in `P(a)` is not None, a quoted axis name or a tuple of them"
        );
        assert_eq!(
            e.code().unwrap().to_string(),
            "shardplan::notation::jax::bad_entry"
        );
        assert_eq!(
            e.help().unwrap().to_string(),
            super::super::fault::SPEC_HELP
        );
    }
}
