//! The text form of a layout: `[tp, (dp, sp), -] partial(..) at pp=1`.

use super::{SplitPolicy, TensorLayout};

impl std::fmt::Display for TensorLayout {
    /// `[tp, (dp, sp), -]`, then `partial(..)` and `at pp=1` when present.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(b) = &self.boxes {
            let holding = b.by_rank.iter().filter(|r| r.is_some()).count();
            return write!(
                f,
                "boxes({} distinct on {holding} rank(s))",
                b.distinct.len()
            );
        }
        write!(f, "[")?;
        for (i, dim) in self.dims.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            match dim.axes.len() {
                0 => write!(f, "-")?,
                1 => write!(f, "{}", self.axis_name(dim.axes[0]))?,
                _ => {
                    let names: Vec<&str> = dim.axes.iter().map(|&a| self.axis_name(a)).collect();
                    write!(f, "({})", names.join(", "))?;
                }
            }
            if dim.policy != SplitPolicy::Even {
                write!(f, " {}", dim.policy)?;
            }
        }
        write!(f, "]")?;
        if !self.partial.is_empty() {
            let names: Vec<&str> = self.partial.iter().map(|&a| self.axis_name(a)).collect();
            write!(f, " partial({})", names.join(", "))?;
        }
        if !self.pin.is_empty() {
            write!(f, " at {}", self.pin_text())?;
        }
        Ok(())
    }
}
