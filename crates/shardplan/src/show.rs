//! Terminal drawings of which ranks hold which block of a tensor.
//!
//! [`draw_holdings`] turns a [`TensorLayout`] into text: a grid of boxes for
//! 1-D and 2-D tensors, a table otherwise (or when the grid would not fit).

use std::collections::BTreeMap;

use crate::Region;
use crate::TensorLayout;

/// Widest holder label drawn inside a grid cell; longer holder lists are
/// abbreviated.
const CELL_LABEL_MAX: usize = 16;

/// Narrowest the holder column of the table is allowed to get, whatever
/// `max_width` says.
const TABLE_LABEL_MIN: usize = 16;

/// Options for drawing.
///
/// Built with [`DrawConfig::new`] or [`DrawConfig::default`]; the fields
/// can be read and changed directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DrawConfig {
    /// Widest line, in characters, the grid may take; a wider grid is
    /// replaced by a table. Holder lists in the table and the footer are
    /// abbreviated to fit it where they can.
    pub max_width: usize,
    /// Most lines the whole drawing (header, body and footer) may take; a
    /// taller grid is replaced by a table, and a table with more blocks than
    /// fit shows the first ones and says how many it left out.
    pub max_height: usize,
}

impl DrawConfig {
    /// Drawing in at most `max_width` characters by `max_height` lines (see
    /// [`DrawConfig::max_width`] and [`DrawConfig::max_height`]).
    pub const fn new(max_width: usize, max_height: usize) -> Self {
        DrawConfig {
            max_width,
            max_height,
        }
    }
}

impl Default for DrawConfig {
    /// A classic 80 x 24 terminal.
    fn default() -> Self {
        DrawConfig::new(80, 24)
    }
}

/// A distinct block of the tensor and the ranks holding it, as
/// [`TensorLayout::shards`] gives them.
type Shard = (Region, Vec<u64>);

/// Draws the holdings of `layout`: which ranks hold which block of the
/// tensor.
///
/// The text starts with two header lines (shape, layout, mesh; number of
/// distinct blocks and replica count) and a blank line. Then:
///
/// - for a 2-D tensor, a grid of boxes, one cell per distinct block, the row
///   index ranges on the left and the column index ranges on top; cells have
///   one width per column, not proportional to the block size;
/// - for a 1-D tensor, a single row of such cells;
/// - for a 0-D or more than 2-D tensor, or when the grid would exceed
///   `cfg.max_width` or `cfg.max_height`, a table with one line per block:
///   its box and its holders.
///
/// Holders are written `r0,4`, `r0-3` or `r0-3,8-11`; a list too long for
/// its place is abbreviated, to `r0,8,…,56 (8)` when the ranks are evenly
/// spaced and to its leading runs, as in `r0-3,8-11,… (32)`, otherwise; the
/// number in parentheses counts the ranks.
///
/// Empty blocks (possible under the `chunk` policy or explicit blocks) are
/// not drawn but listed in a footer line, as are the ranks that hold no part
/// of the tensor because it is pinned to a sub-mesh. Lines are joined by
/// `\n`, without a trailing newline and without trailing spaces.
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use shardplan::show::{DrawConfig, draw_holdings};
/// use shardplan::{DeviceMesh, DimSplit, LayoutConfig, TensorLayout};
///
/// let mesh = Arc::new(DeviceMesh::new([("dp", 2), ("tp", 4)]).unwrap());
/// let cfg = LayoutConfig::new(vec![DimSplit::over(["dp"]), DimSplit::over(["tp"])]);
/// let layout = TensorLayout::new(mesh, &[8, 8], &cfg).unwrap();
/// let text = draw_holdings(&layout, &DrawConfig::new(80, 24));
/// assert_eq!(
///     text,
///     "\
/// shape [8, 8], layout [dp, tp], mesh [dp=2, tp=4]
/// 8 distinct blocks, replica count 1
///
///        0..2   2..4   4..6   6..8
///      ┌──────┬──────┬──────┬──────┐
/// 0..4 │  r0  │  r1  │  r2  │  r3  │
///      ├──────┼──────┼──────┼──────┤
/// 4..8 │  r4  │  r5  │  r6  │  r7  │
///      └──────┴──────┴──────┴──────┘"
/// );
/// ```
pub fn draw_holdings(layout: &TensorLayout, cfg: &DrawConfig) -> String {
    let shards = layout.shards();
    let (empty, full): (Vec<&Shard>, Vec<&Shard>) = shards.iter().partition(|(r, _)| r.is_empty());

    let mut head = vec![format!(
        "shape {:?}, layout {}, mesh {}",
        layout.shape(),
        layout,
        layout.mesh()
    )];
    let mut counts = format!("{} distinct block{}", shards.len(), plural(shards.len()));
    if !empty.is_empty() {
        counts.push_str(&format!(" ({} empty)", empty.len()));
    }
    counts.push_str(&format!(", replica count {}", layout.replica_count()));
    head.push(counts);
    head.push(String::new());

    let mut foot = Vec::new();
    if !empty.is_empty() {
        foot.push(empty_line(&empty, cfg.max_width));
    }
    let off: Vec<u64> = (0..layout.mesh().rank_count())
        .filter(|&r| !layout.holds(r))
        .collect();
    if !off.is_empty() {
        let lead = "ranks without this tensor: ";
        let budget = cfg.max_width.saturating_sub(width(lead));
        foot.push(format!("{lead}{}", abbreviate(&off, "", budget)));
    }

    let budget = cfg.max_height.saturating_sub(head.len() + foot.len());
    let body = match layout.shape().len() {
        1 | 2 => grid(&full, layout.shape().len(), cfg.max_width, budget),
        _ => None,
    }
    .unwrap_or_else(|| table(&full, cfg.max_width, budget));

    let lines: Vec<String> = head
        .into_iter()
        .chain(body)
        .chain(foot)
        .map(|l| l.trim_end().to_string())
        .collect();
    lines.join("\n")
}

/// Formats ranks, sorted ascending, as runs: `0-3,8,10-11`. Duplicates are
/// written once; an empty list gives an empty string.
fn compact_ranks(ranks: &[u64]) -> String {
    runs(ranks)
        .iter()
        .map(|&(a, b)| run_text(a, b))
        .collect::<Vec<_>>()
        .join(",")
}

/// Maximal runs of consecutive ranks, as inclusive `(first, last)`.
fn runs(ranks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &r in ranks {
        match out.last_mut() {
            Some((_, last)) if r == *last => {}
            Some((_, last)) if Some(r) == last.checked_add(1) => *last = r,
            _ => out.push((r, r)),
        }
    }
    out
}

fn run_text(a: u64, b: u64) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a}-{b}")
    }
}

/// `prefix` and the compact form of `ranks`, abbreviated when longer than
/// `max` characters: to `first,second,…,last (n)` for evenly spaced ranks,
/// otherwise to the leading runs and `,… (n)`. The result may exceed `max`
/// when not even one run fits.
fn abbreviate(ranks: &[u64], prefix: &str, max: usize) -> String {
    let full = format!("{prefix}{}", compact_ranks(ranks));
    if width(&full) <= max {
        return full;
    }
    let n = ranks.len();
    if n >= 3 {
        let step = ranks[1].checked_sub(ranks[0]).filter(|&s| s > 0);
        if step.is_some() && ranks.windows(2).all(|w| w[1].checked_sub(w[0]) == step) {
            let short = format!("{prefix}{},{},…,{} ({n})", ranks[0], ranks[1], ranks[n - 1]);
            if width(&short) <= max {
                return short;
            }
        }
    }
    let suffix = format!(",… ({n})");
    let mut out = prefix.to_string();
    for (i, &(a, b)) in runs(ranks).iter().enumerate() {
        let piece = run_text(a, b);
        let sep = if i == 0 { "" } else { "," };
        if i > 0 && width(&out) + sep.len() + width(&piece) + width(&suffix) > max {
            break;
        }
        out.push_str(sep);
        out.push_str(&piece);
    }
    out + &suffix
}

/// The footer line listing the empty blocks and their holders, cut short
/// with `; … N more` when it would exceed `max_width`.
fn empty_line(empty: &[&Shard], max_width: usize) -> String {
    let mut line = String::from("empty blocks:");
    for (i, (region, ranks)) in empty.iter().enumerate() {
        let sep = if i == 0 { "" } else { ";" };
        let item = format!(" {region} on {}", abbreviate(ranks, "r", CELL_LABEL_MAX));
        let left = empty.len() - i - 1;
        let more = format!("; … {left} more");
        let reserve = if left > 0 { width(&more) } else { 0 };
        if i > 0 && width(&line) + sep.len() + width(&item) + reserve > max_width {
            line.push_str(&format!("; … {} more", left + 1));
            break;
        }
        line.push_str(sep);
        line.push_str(&item);
    }
    line
}

/// The grid of cells for a 1-D (`dims == 1`) or 2-D tensor, or `None` when
/// the blocks do not form a grid or it would exceed the given size.
fn grid(full: &[&Shard], dims: usize, max_width: usize, max_height: usize) -> Option<Vec<String>> {
    if full.is_empty() {
        return None;
    }
    let cols = spans(full, dims - 1)?;
    let rows = if dims == 2 {
        spans(full, 0)?
    } else {
        Vec::new()
    };
    let nrows = rows.len().max(1);
    // Every cell takes at least two lines and every column two characters:
    // give up early on grids that cannot fit.
    if 2 * nrows + 2 > max_height || 2 * cols.len() + 1 > max_width {
        return None;
    }
    let cells = cell_labels(full, dims, &rows, &cols)?;
    draw_grid(&rows, &cols, &cells, max_width, max_height)
}

/// The distinct ranges of the blocks along dimension `d`, sorted; `None`
/// when two overlap (they cannot be drawn as a grid).
fn spans(full: &[&Shard], d: usize) -> Option<Vec<(u64, u64)>> {
    let mut v: Vec<(u64, u64)> = full
        .iter()
        .map(|(r, _)| (r.offset()[d], r.end(d)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v.windows(2).all(|w| w[0].1 <= w[1].0).then_some(v)
}

/// Each cell's label (its holders) by (row, column); `None` unless every
/// cell of the grid holds exactly one block.
fn cell_labels(
    full: &[&Shard],
    dims: usize,
    rows: &[(u64, u64)],
    cols: &[(u64, u64)],
) -> Option<BTreeMap<(usize, usize), String>> {
    let mut cells: BTreeMap<(usize, usize), String> = BTreeMap::new();
    for (region, ranks) in full {
        let ri = if dims == 2 {
            rows.binary_search(&(region.offset()[0], region.end(0)))
                .ok()?
        } else {
            0
        };
        let ci = cols
            .binary_search(&(region.offset()[dims - 1], region.end(dims - 1)))
            .ok()?;
        let label = abbreviate(ranks, "r", CELL_LABEL_MAX);
        if cells.insert((ri, ci), label).is_some() {
            return None;
        }
    }
    (cells.len() == rows.len().max(1) * cols.len()).then_some(cells)
}

/// Draws the grid: column ranges on top, row ranges (a 2-D tensor's) on
/// the left, box-drawing rules between the cells; `None` when wider or
/// taller than allowed.
fn draw_grid(
    rows: &[(u64, u64)],
    cols: &[(u64, u64)],
    cells: &BTreeMap<(usize, usize), String>,
    max_width: usize,
    max_height: usize,
) -> Option<Vec<String>> {
    let nrows = rows.len().max(1);
    let col_heads: Vec<String> = cols.iter().map(|(a, b)| format!("{a}..{b}")).collect();
    let row_heads: Vec<String> = rows.iter().map(|(a, b)| format!("{a}..{b}")).collect();
    let widths: Vec<usize> = (0..cols.len())
        .map(|ci| {
            let labels = (0..nrows).map(|ri| width(&cells[&(ri, ci)]));
            labels.chain([width(&col_heads[ci])]).max().unwrap_or(0) + 2
        })
        .collect();
    let head_width = row_heads.iter().map(|h| width(h)).max().unwrap_or(0);
    // Row ranges, right-aligned, then a space before the grid.
    let margin = if rows.is_empty() { 0 } else { head_width + 1 };
    let total = margin + 1 + widths.iter().map(|w| w + 1).sum::<usize>();
    if total > max_width || 2 * nrows + 2 > max_height {
        return None;
    }
    let rule = |left: char, mid: char, right: char| {
        let mut s = " ".repeat(margin);
        s.push(left);
        for (ci, &w) in widths.iter().enumerate() {
            if ci > 0 {
                s.push(mid);
            }
            s.extend(std::iter::repeat_n('─', w));
        }
        s.push(right);
        s
    };
    let mut lines = Vec::with_capacity(2 * nrows + 2);
    let mut top = " ".repeat(margin + 1);
    for (head, &w) in col_heads.iter().zip(&widths) {
        top.push_str(&center(head, w));
        top.push(' ');
    }
    lines.push(top);
    lines.push(rule('┌', '┬', '┐'));
    for ri in 0..nrows {
        if ri > 0 {
            lines.push(rule('├', '┼', '┤'));
        }
        let mut s = match row_heads.get(ri) {
            Some(h) => format!("{h:>head_width$} "),
            None => String::new(),
        };
        s.push('│');
        for (ci, &w) in widths.iter().enumerate() {
            s.push_str(&center(&cells[&(ri, ci)], w));
            s.push('│');
        }
        lines.push(s);
    }
    lines.push(rule('└', '┴', '┘'));
    Some(lines)
}

/// One line per block, its box and its holders, under a heading line; at
/// most `max_height` lines (but at least one block), the blocks left out
/// counted on the last line.
fn table(full: &[&Shard], max_width: usize, max_height: usize) -> Vec<String> {
    if full.is_empty() {
        return vec!["(no block holds an element)".to_string()];
    }
    // Heading plus every block, or heading, some blocks and the count of the rest.
    let shown = if full.len() < max_height {
        full.len()
    } else {
        max_height.saturating_sub(2).clamp(1, full.len())
    };
    let boxes: Vec<String> = full[..shown].iter().map(|(r, _)| r.to_string()).collect();
    let box_width = boxes.iter().map(|b| width(b)).chain([5]).max().unwrap_or(0);
    let label_max = max_width.saturating_sub(box_width + 2).max(TABLE_LABEL_MIN);
    let mut lines = vec![format!("{:<box_width$}  held by", "block")];
    for (b, (_, ranks)) in boxes.iter().zip(full) {
        lines.push(format!(
            "{b:<box_width$}  {}",
            abbreviate(ranks, "r", label_max)
        ));
    }
    if shown < full.len() {
        let rest = full.len() - shown;
        lines.push(format!("… {rest} more block{}", plural(rest)));
    }
    lines
}

/// `s` centred in `w` columns (extra space on the right).
fn center(s: &str, w: usize) -> String {
    let pad = w.saturating_sub(width(s));
    let left = pad / 2;
    format!("{}{s}{}", " ".repeat(left), " ".repeat(pad - left))
}

/// Columns taken by `s` on a terminal; every character this module writes
/// is one column wide.
fn width(s: &str) -> usize {
    s.chars().count()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::DeviceMesh;
    use crate::{DimSplit, LayoutConfig, SplitPolicy};

    const WIDE: DrawConfig = DrawConfig::new(100, 40);

    fn layout(axes: &[(&str, u64)], shape: &[u64], cfg: LayoutConfig) -> TensorLayout {
        let mesh = Arc::new(DeviceMesh::new(axes.iter().copied()).unwrap());
        TensorLayout::new(mesh, shape, &cfg).unwrap()
    }

    #[test]
    fn boxes_given_one_by_one_are_drawn_as_held() {
        // A brick wall over 4 ranks, rank 3 a replica of rank 0.
        let mesh = Arc::new(DeviceMesh::new([("rank", 4)]).unwrap());
        let b = |o: &[u64], e: &[u64]| crate::Region::new(o.to_vec(), e.to_vec());
        let l = TensorLayout::from_boxes(
            mesh,
            &[4, 8],
            [
                (0, b(&[0, 0], &[2, 6])),
                (1, b(&[0, 6], &[2, 2])),
                (2, b(&[2, 0], &[2, 8])),
                (3, b(&[0, 0], &[2, 6])),
            ],
        )
        .unwrap();
        let text = draw_holdings(&l, &WIDE);
        // No grid fits a brick wall: the table of blocks.
        assert_eq!(
            text,
            "shape [4, 8], layout boxes(3 distinct on 4 rank(s)), mesh [rank=4]\n\
             3 distinct blocks, replica count 2\n\
             \n\
             block         held by\n\
             [0..2, 0..6]  r0,3\n\
             [0..2, 6..8]  r1\n\
             [2..4, 0..8]  r2"
        );
    }

    fn dims(splits: Vec<DimSplit>) -> LayoutConfig {
        LayoutConfig::new(splits)
    }

    #[test]
    fn compact_forms() {
        assert_eq!(compact_ranks(&[]), "");
        assert_eq!(compact_ranks(&[5]), "5");
        assert_eq!(compact_ranks(&[0, 1, 2, 3, 8, 10, 11]), "0-3,8,10-11");
        assert_eq!(compact_ranks(&[0, 4]), "0,4");
        assert_eq!(compact_ranks(&[1, 1, 2]), "1-2");
        assert_eq!(
            compact_ranks(&[u64::MAX - 1, u64::MAX]),
            format!("{}-{}", u64::MAX - 1, u64::MAX)
        );
    }

    #[test]
    fn abbreviations() {
        let strided: Vec<u64> = (0..64).map(|r| r * 8).collect();
        assert_eq!(abbreviate(&strided, "r", 16), "r0,8,…,504 (64)");
        let blocks: Vec<u64> = (0..8)
            .flat_map(|b| (0..4).map(move |r| b * 8 + r))
            .collect();
        assert_eq!(abbreviate(&blocks, "r", 16), "r0-3,8-11,… (32)");
        assert_eq!(abbreviate(&[0, 4], "r", 16), "r0,4");
        // Not even one run fits: the first run is kept anyway.
        assert_eq!(abbreviate(&[0, 2, 3, 9], "r", 3), "r0,… (4)");
    }

    #[test]
    fn rows_split_over_tp() {
        let l = layout(
            &[("dp", 2), ("tp", 4)],
            &[8, 8],
            dims(vec![DimSplit::over(["tp"]), DimSplit::none()]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn grid_dp_by_tp() {
        let l = layout(
            &[("dp", 2), ("tp", 4)],
            &[8, 8],
            dims(vec![DimSplit::over(["dp"]), DimSplit::over(["tp"])]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn bias_over_tp() {
        let l = layout(
            &[("dp", 2), ("tp", 4)],
            &[8],
            dims(vec![DimSplit::over(["tp"])]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn three_d_table() {
        let l = layout(
            &[("dp", 2), ("tp", 4)],
            &[4, 8, 6],
            dims(vec![
                DimSplit::over(["dp"]),
                DimSplit::over(["tp"]),
                DimSplit::none(),
            ]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn pinned_to_stage() {
        let l = layout(
            &[("pp", 2), ("dp", 2), ("tp", 2)],
            &[4, 6],
            LayoutConfig::new(vec![DimSplit::none(), DimSplit::over(["tp"])]).with_pin([("pp", 1)]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn chunk_with_empty_block() {
        // 3 rows over 4 tp blocks: the last block is empty.
        let l = layout(
            &[("dp", 2), ("tp", 4)],
            &[3, 8],
            dims(vec![
                DimSplit {
                    axes: vec!["tp".into()],
                    policy: SplitPolicy::Chunk,
                },
                DimSplit::over(["dp"]),
            ]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn many_holders_abbreviated() {
        let l = layout(
            &[("dp", 8), ("tp", 4)],
            &[8, 8],
            dims(vec![DimSplit::over(["tp"]), DimSplit::none()]),
        );
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn too_wide_falls_back_to_table() {
        let l = layout(
            &[("dp", 2), ("tp", 16)],
            &[64],
            dims(vec![DimSplit::over(["tp"])]),
        );
        let cfg = DrawConfig::new(60, 12);
        let text = draw_holdings(&l, &cfg);
        assert!(!text.contains('┌'));
        assert!(text.lines().count() <= 12, "{text}");
        insta::assert_snapshot!(text);
    }

    #[test]
    fn scalar() {
        let l = layout(&[("dp", 2)], &[], dims(vec![]));
        insta::assert_snapshot!(draw_holdings(&l, &WIDE));
    }

    #[test]
    fn fits_limits() {
        let l = layout(
            &[("dp", 4), ("tp", 4)],
            &[16, 16],
            dims(vec![DimSplit::over(["dp"]), DimSplit::over(["tp"])]),
        );
        for (w, h) in [(80, 24), (30, 24), (80, 10), (10, 5), (0, 0)] {
            let cfg = DrawConfig::new(w, h);
            let text = draw_holdings(&l, &cfg);
            let grid = text.contains('┌');
            if grid {
                assert!(text.lines().all(|l| width(l) <= w), "{text}");
                assert!(text.lines().count() <= h, "{text}");
            }
            assert!(text.lines().all(|l| l == l.trim_end()));
        }
    }
}
