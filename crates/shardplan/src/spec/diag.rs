//! Diagnostics of spec files: stable codes, a location, a label under the
//! exact span and a help line.

use std::sync::Arc;

use miette::{LabeledSpan, SourceSpan};

/// How bad a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Severity {
    /// Suspicious but valid (e.g. a rule that matches no tensor).
    Warning,
    /// The spec is invalid.
    Error,
}

impl Severity {
    /// `warning` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Every diagnostic code a spec can produce. The string form
/// (`shardplan::spec::unknown_axis`) is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // each variant is documented in docs/spec.md under its code
#[non_exhaustive]
pub enum DiagCode {
    Syntax,
    UnknownField,
    WrongType,
    MissingField,
    DuplicateKey,
    Budget,
    Version,
    MeshShapeMismatch,
    InvalidMesh,
    DuplicateTensor,
    UnknownDType,
    ShapeOverflow,
    UnknownMesh,
    UnknownAxis,
    AxisReused,
    RuleForm,
    BadPattern,
    BadPolicy,
    UnmatchedTensor,
    NoSuchTensor,
    UnusedRule,
    DimCount,
    UnevenSplit,
    BadBlocks,
    Notation,
    BadStages,
    PinOutOfRange,
    UnknownStrategy,
    BadOperator,
    Encoding,
}

impl DiagCode {
    /// Every code, in documentation order.
    pub const ALL: [DiagCode; 30] = [
        DiagCode::Syntax,
        DiagCode::UnknownField,
        DiagCode::WrongType,
        DiagCode::MissingField,
        DiagCode::DuplicateKey,
        DiagCode::Budget,
        DiagCode::Version,
        DiagCode::MeshShapeMismatch,
        DiagCode::InvalidMesh,
        DiagCode::DuplicateTensor,
        DiagCode::UnknownDType,
        DiagCode::ShapeOverflow,
        DiagCode::UnknownMesh,
        DiagCode::UnknownAxis,
        DiagCode::AxisReused,
        DiagCode::RuleForm,
        DiagCode::BadPattern,
        DiagCode::BadPolicy,
        DiagCode::UnmatchedTensor,
        DiagCode::NoSuchTensor,
        DiagCode::UnusedRule,
        DiagCode::DimCount,
        DiagCode::UnevenSplit,
        DiagCode::BadBlocks,
        DiagCode::Notation,
        DiagCode::BadStages,
        DiagCode::PinOutOfRange,
        DiagCode::UnknownStrategy,
        DiagCode::BadOperator,
        DiagCode::Encoding,
    ];

    /// The stable code string.
    pub fn as_str(self) -> &'static str {
        match self {
            DiagCode::Syntax => "shardplan::spec::syntax",
            DiagCode::UnknownField => "shardplan::spec::unknown_field",
            DiagCode::WrongType => "shardplan::spec::wrong_type",
            DiagCode::MissingField => "shardplan::spec::missing_field",
            DiagCode::DuplicateKey => "shardplan::spec::duplicate_key",
            DiagCode::Budget => "shardplan::spec::budget",
            DiagCode::Version => "shardplan::spec::version",
            DiagCode::MeshShapeMismatch => "shardplan::spec::mesh_shape_mismatch",
            DiagCode::InvalidMesh => "shardplan::spec::invalid_mesh",
            DiagCode::DuplicateTensor => "shardplan::spec::duplicate_tensor",
            DiagCode::UnknownDType => "shardplan::spec::unknown_dtype",
            DiagCode::ShapeOverflow => "shardplan::spec::shape_overflow",
            DiagCode::UnknownMesh => "shardplan::spec::unknown_mesh",
            DiagCode::UnknownAxis => "shardplan::spec::unknown_axis",
            DiagCode::AxisReused => "shardplan::spec::axis_reused",
            DiagCode::RuleForm => "shardplan::spec::rule_form",
            DiagCode::BadPattern => "shardplan::spec::bad_pattern",
            DiagCode::BadPolicy => "shardplan::spec::bad_policy",
            DiagCode::UnmatchedTensor => "shardplan::spec::unmatched_tensor",
            DiagCode::NoSuchTensor => "shardplan::spec::no_such_tensor",
            DiagCode::UnusedRule => "shardplan::spec::unused_rule",
            DiagCode::DimCount => "shardplan::spec::dim_count",
            DiagCode::UnevenSplit => "shardplan::spec::uneven_split",
            DiagCode::BadBlocks => "shardplan::spec::bad_blocks",
            DiagCode::Notation => "shardplan::spec::notation",
            DiagCode::BadStages => "shardplan::spec::bad_stages",
            DiagCode::PinOutOfRange => "shardplan::spec::pin_out_of_range",
            DiagCode::UnknownStrategy => "shardplan::spec::unknown_strategy",
            DiagCode::BadOperator => "shardplan::spec::bad_operator",
            DiagCode::Encoding => "shardplan::spec::encoding",
        }
    }

    /// The code without the `shardplan::spec::` prefix, e.g. `unknown_axis`.
    pub fn short(self) -> &'static str {
        self.as_str().trim_start_matches("shardplan::spec::")
    }
}

impl std::fmt::Display for DiagCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte range of the spec text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// Byte offset.
    pub offset: usize,
    /// Byte length (0 = a position).
    pub len: usize,
}

/// One problem found in a spec file.
///
/// Implements [`miette::Diagnostic`], with the file as source code, so the
/// binary can render it with a label under the exact span.
#[derive(Debug, Clone)]
pub struct SpecDiagnostic {
    /// Stable code.
    pub code: DiagCode,
    /// Warning or error.
    pub severity: Severity,
    /// What is wrong, naming the tensor, rule or axis involved.
    pub message: String,
    /// Text under the span.
    pub label: String,
    /// How to fix it.
    pub help: String,
    /// Where, in bytes.
    pub span: Span,
    /// File name as given.
    pub file: String,
    /// 1-based line of the span start.
    pub line: usize,
    /// 1-based column (in characters) of the span start.
    pub column: usize,
    pub(crate) source: Arc<String>,
}

impl SpecDiagnostic {
    /// True for errors (as opposed to warnings).
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// `file:line:column: severity[code]: message`, one line, for logs.
    pub fn one_line(&self) -> String {
        format!(
            "{}:{}:{}: {}[{}]: {}",
            self.file,
            self.line,
            self.column,
            self.severity.as_str(),
            self.code.short(),
            self.message
        )
    }
}

impl std::fmt::Display for SpecDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SpecDiagnostic {}

impl miette::Diagnostic for SpecDiagnostic {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.code.as_str()))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.severity {
            Severity::Warning => miette::Severity::Warning,
            Severity::Error => miette::Severity::Error,
        })
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(&self.help))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(self as &dyn miette::SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.label.clone()),
            SourceSpan::from((self.span.offset, self.span.len)),
        ))))
    }
}

impl miette::SourceCode for SpecDiagnostic {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner = miette::SourceCode::read_span(
            self.source.as_str(),
            span,
            context_lines_before,
            context_lines_after,
        )?;
        // Re-wrap so the rendering names the file.
        Ok(Box::new(miette::MietteSpanContents::new_named(
            self.file.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner.column(),
            inner.line_count(),
        )))
    }
}

/// Line and column (1-based, column in characters) of byte `offset`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}
