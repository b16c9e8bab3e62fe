//! A streaming pre-scan that enforces the spec budget before any value is
//! built: depth, documents, alias uses, and the node count with every alias
//! expanded (so a "billion laughs" bomb is refused after reading its few
//! hundred bytes, wherever in the document it sits).

use serde_saphyr::granit_parser::{Event, Parser};

use super::{Span, SpecBudget};

/// What went over budget, and where.
pub(crate) struct Breach {
    pub message: String,
    pub span: Span,
}

pub(crate) fn prescan(text: &str, budget: &SpecBudget) -> Result<(), Breach> {
    // Expanded size of each anchored node, by anchor id.
    let mut anchored: Vec<u64> = Vec::new();
    // Open collections: (anchor id, expanded nodes so far).
    let mut stack: Vec<(usize, u64)> = Vec::new();
    let mut total: u64 = 0;
    let mut aliases = 0usize;
    let mut documents = 0usize;
    for item in Parser::new_from_str(text) {
        // Syntax errors are reported, with a better message, by the reader.
        let Ok((event, span)) = item else {
            return Ok(());
        };
        let at = Span {
            offset: span.start.byte_offset().unwrap_or(0),
            len: span
                .end
                .byte_offset()
                .unwrap_or(0)
                .saturating_sub(span.start.byte_offset().unwrap_or(0)),
        };
        let add = |n: u64, stack: &mut Vec<(usize, u64)>| {
            if let Some(top) = stack.last_mut() {
                top.1 = top.1.saturating_add(n);
            }
        };
        let record = |anchored: &mut Vec<u64>, id: usize, size: u64| {
            if id > 0 {
                if anchored.len() <= id {
                    anchored.resize(id + 1, 0);
                }
                anchored[id] = size;
            }
        };
        match event {
            Event::DocumentStart(..) => {
                documents += 1;
                if documents > 1 {
                    return Err(Breach {
                        message: "the file holds several YAML documents; a spec is one document"
                            .into(),
                        span: at,
                    });
                }
            }
            Event::Scalar(_, _, id, _) => {
                total = total.saturating_add(1);
                add(1, &mut stack);
                record(&mut anchored, id, 1);
            }
            Event::SequenceStart(_, id, _) | Event::MappingStart(_, id, _) => {
                total = total.saturating_add(1);
                stack.push((id, 1));
                if stack.len() > budget.max_depth {
                    return Err(Breach {
                        message: format!(
                            "the spec nests deeper than the budget of {} levels",
                            budget.max_depth
                        ),
                        span: at,
                    });
                }
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((id, size)) = stack.pop() {
                    record(&mut anchored, id, size);
                    add(size, &mut stack);
                }
            }
            Event::Alias(id) => {
                aliases += 1;
                if aliases > budget.max_aliases {
                    return Err(Breach {
                        message: format!(
                            "the spec uses more than the budget of {} aliases",
                            budget.max_aliases
                        ),
                        span: at,
                    });
                }
                let size = anchored.get(id).copied().unwrap_or(1);
                total = total.saturating_add(size);
                add(size, &mut stack);
            }
            _ => {}
        }
        if total > budget.max_nodes as u64 {
            return Err(Breach {
                message: format!(
                    "the spec expands to more than the budget of {} YAML nodes (aliases counted expanded)",
                    budget.max_nodes
                ),
                span: at,
            });
        }
    }
    Ok(())
}
