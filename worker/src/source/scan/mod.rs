//! Projection and predicate pushdown into a source's scan (late materialisation).
//!
//! The engine computes, once per query, which columns of each source the SQL reads and which
//! conjuncts of a filter right above the source's only scan can be tested on single values
//! (`sql::pushdown`). A scan that knows them still validates every record as before (a malformed
//! record still becomes a bad record), but builds only the columns the query reads, and only for
//! the rows that pass those conjuncts. DataFusion still runs the whole filter afterwards, so the
//! pushed test only has to be *no stricter* than SQL's; here it is exactly SQL's for the forms it
//! takes (comparisons and `IN` of a column with literals of the column's own type; a NULL value
//! fails them, as in a `WHERE`).

pub mod json;
#[cfg(test)]
mod tests;

use std::cmp::Ordering;

/// What a query needs of one source's rows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScanPushdown {
    /// `columns[i]`: whether the query reads column `i` of the source schema. Columns it does not
    /// read come back as all-null columns (non-nullable ones are always built).
    pub columns: Vec<bool>,
    /// Conjuncts every returned row passes; a row failing one is validated and counted, not built.
    pub predicates: Vec<ScanPredicate>,
}

impl ScanPushdown {
    /// Every column, no predicate: what a scan without pushdown returns.
    pub fn everything(columns: usize) -> Self {
        Self {
            columns: vec![true; columns],
            predicates: Vec::new(),
        }
    }

    /// Whether this reads every column and tests nothing (then pushdown changes nothing).
    pub fn is_everything(&self) -> bool {
        self.predicates.is_empty() && self.columns.iter().all(|c| *c)
    }
}

/// One pushed conjunct: a test of one source column.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanPredicate {
    /// Index of the column in the source schema.
    pub column: usize,
    pub test: ScanTest,
}

/// A test of a single value against literals of the column's type.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanTest {
    /// `column <op> literal`.
    Compare(CompareOp, ScanValue),
    /// `column [NOT] IN (literals)` (no NULL among the literals).
    In {
        values: Vec<ScanValue>,
        negated: bool,
    },
}

/// A comparison operator of SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CompareOp {
    fn holds(self, ordering: Ordering) -> bool {
        match self {
            Self::Eq => ordering == Ordering::Equal,
            Self::NotEq => ordering != Ordering::Equal,
            Self::Lt => ordering == Ordering::Less,
            Self::LtEq => ordering != Ordering::Greater,
            Self::Gt => ordering == Ordering::Greater,
            Self::GtEq => ordering != Ordering::Less,
        }
    }

    /// The operator with its operands swapped (`1 < x` is `x > 1`).
    pub fn swapped(self) -> Self {
        match self {
            Self::Lt => Self::Gt,
            Self::LtEq => Self::GtEq,
            Self::Gt => Self::Lt,
            Self::GtEq => Self::LtEq,
            other => other,
        }
    }
}

/// A literal of a pushed test. Integers (and timestamps, in the column's unit) are `Int`.
#[derive(Debug, Clone, PartialEq)]
pub enum ScanValue {
    Utf8(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// A field value of the record being scanned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Str(&'a [u8]),
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// Arrow's order of the value against a literal: strings by bytes, floats by `total_cmp` (as
/// arrow's comparison kernels, so `-0.0 < 0.0`); `None` when the types do not match (then the
/// test is not decided here and the row is kept).
fn compare(value: FieldValue<'_>, literal: &ScanValue) -> Option<Ordering> {
    match (value, literal) {
        (FieldValue::Str(v), ScanValue::Utf8(l)) => Some(v.cmp(l.as_bytes())),
        (FieldValue::Int(v), ScanValue::Int(l)) => Some(v.cmp(l)),
        (FieldValue::Float(v), ScanValue::Float(l)) => Some(v.total_cmp(l)),
        (FieldValue::Bool(v), ScanValue::Bool(l)) => Some(v.cmp(l)),
        _ => None,
    }
}

impl ScanTest {
    /// Whether a row with this value can pass the SQL filter: NULL never does (a comparison with
    /// NULL is NULL, which `WHERE` drops).
    pub fn passes(&self, value: FieldValue<'_>) -> bool {
        if value == FieldValue::Null {
            return false;
        }
        match self {
            Self::Compare(op, literal) => compare(value, literal).is_none_or(|o| op.holds(o)),
            Self::In { values, negated } => {
                let mut undecided = false;
                for literal in values {
                    match compare(value, literal) {
                        Some(Ordering::Equal) => return !negated,
                        Some(_) => {}
                        None => undecided = true,
                    }
                }
                undecided || *negated
            }
        }
    }
}
