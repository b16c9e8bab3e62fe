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

fn bad(reason: impl Into<String>) -> LayoutError {
    LayoutError::notation(
        "jax",
        reason,
        "write a PartitionSpec such as P('dp', ('tp', 'sp'), None)",
    )
}

impl std::str::FromStr for PartitionSpec {
    type Err = LayoutError;

    fn from_str(text: &str) -> Result<Self, LayoutError> {
        let t = text.trim();
        let inner = t
            .strip_prefix("PartitionSpec(")
            .or_else(|| t.strip_prefix("P("))
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| bad(format!("`{text}` is not of the form P(...)")))?;
        let mut dims = Vec::new();
        let mut rest = inner.trim();
        while !rest.is_empty() {
            let (entry, tail) = if let Some(r) = rest.strip_prefix('(') {
                let close = r
                    .find(')')
                    .ok_or_else(|| bad(format!("unclosed tuple in `{text}`")))?;
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
                None => return Err(bad(format!("expected `,` in `{text}`"))),
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
        _ => Err(bad(format!(
            "`{item}` in `{text}` is not None, a quoted axis name or a tuple of them"
        ))),
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
    /// [`LayoutError::Notation`] when the spec has more entries than the
    /// tensor has dimensions; otherwise whatever [`TensorLayout::new`] refuses.
    pub fn to_layout(
        &self,
        mesh: Arc<DeviceMesh>,
        shape: &[u64],
    ) -> Result<TensorLayout, LayoutError> {
        if self.dims.len() > shape.len() {
            return Err(bad(format!(
                "{} has {} entries but the tensor has {} dimensions",
                self,
                self.dims.len(),
                shape.len()
            )));
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
    /// [`LayoutError::Notation`] for partial axes, pins, and uneven blocks,
    /// which a `PartitionSpec` cannot express.
    pub fn from_layout(layout: &TensorLayout) -> Result<Self, LayoutError> {
        super::refuse_explicit("jax", layout)?;
        if !layout.partial().is_empty() {
            return Err(LayoutError::notation(
                "jax",
                format!("layout {layout} has partial-sum axes"),
                "reduce the partial sums first; a PartitionSpec has no partial state",
            ));
        }
        if !layout.pin().is_empty() {
            return Err(LayoutError::notation(
                "jax",
                format!("layout {layout} is pinned to a sub-mesh"),
                "express the pipeline stage as a mesh of its own",
            ));
        }
        let mut dims = Vec::new();
        for (d, dim) in layout.dims().iter().enumerate() {
            if !is_even_blocks(dim, layout.shape()[d]) {
                return Err(LayoutError::notation(
                    "jax",
                    format!("dimension {d} of layout {layout} has uneven blocks"),
                    "use a size the split divides, or another notation",
                ));
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
        let cases: &[(&str, Option<&str>)] = &[
            ("P()", Some("P()")),
            ("PartitionSpec('a', None)", Some("P('a', None)")),
            ("P(\"a\", ('b',))", Some("P('a', 'b')")),
            ("P(None, ('x', 'y'))", Some("P(None, ('x', 'y'))")),
            ("P(a)", None),
            ("Q('a')", None),
            ("P(('a', 'b')", None),
            ("P('a' 'b')", None),
        ];
        for (text, expect) in cases {
            let got = text.parse::<PartitionSpec>().map(|s| s.to_string()).ok();
            assert_eq!(got.as_deref(), *expect, "{text}");
        }
    }
}
