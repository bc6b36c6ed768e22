//! Key groups: the unit in which state is kept, checkpointed and moved between tasks
//! (docs/keyed-exchange.md, "Key groups"; Flink's `KeyGroupRangeAssignment`).
//!
//! A row's key group is `hash(key) % maxParallelism`. The hash is part of the checkpoint format:
//! it must never change, or a restart would look for a group's state in the wrong key group. It is
//! FNV-1a 64 over a canonical encoding of the key values (not Arrow's row format, which is not
//! stable across Arrow versions), finished with MurmurHash3's `fmix64`; the test
//! `hash_values_are_pinned` fails if any of it changes.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Decimal128Array, Float64Array, Int64Array, StructArray,
    UInt64Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, UInt64Type};

use crate::error::{EngineError, Result};

/// Key groups when `spec.parallelism.maxParallelism` is not set (Flink's default for small jobs).
pub const DEFAULT_MAX_PARALLELISM: u32 = 128;
/// Largest `maxParallelism` (Flink's upper bound, 2^15): a key group fits a `u16`.
pub const MAX_MAX_PARALLELISM: u32 = 32_768;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

// Type tags of the canonical encoding (part of the format: never renumber).
const TAG_NULL: u8 = 0;
const TAG_BOOL: u8 = 1;
const TAG_INT: u8 = 2;
const TAG_UINT: u8 = 3;
const TAG_FLOAT: u8 = 4;
const TAG_STRING: u8 = 5;
const TAG_BINARY: u8 = 6;
const TAG_DECIMAL: u8 = 7;
const TAG_STRUCT: u8 = 8;

/// An inclusive range of key groups `[start, end]`, owned by one stateful task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyGroupRange {
    pub start: u16,
    pub end: u16,
}

impl KeyGroupRange {
    /// Every key group of `max_parallelism`.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when `max_parallelism` is out of `1..=32768`.
    pub fn all(max_parallelism: u32) -> Result<Self> {
        check_max_parallelism(max_parallelism)?;
        Ok(Self {
            start: 0,
            end: (max_parallelism - 1) as u16,
        })
    }

    /// Whether `key_group` is in the range.
    pub fn contains(&self, key_group: u16) -> bool {
        (self.start..=self.end).contains(&key_group)
    }

    /// Whether the two ranges share a key group.
    pub fn overlaps(&self, other: &KeyGroupRange) -> bool {
        self.start <= other.end && other.start <= self.end
    }
}

impl std::fmt::Display for KeyGroupRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Task ids of stateful-stage tasks start here, above any source task id, so that a sink's
/// idempotence on (task, batch id) and the metrics' `task` label never mix the two stages.
pub const STATEFUL_TASK_BASE: u32 = 1 << 20;

/// The task id of the stateful task owning `range`: [`STATEFUL_TASK_BASE`] + its first key group.
/// Unique within one plan's ranges; ranges of different parallelisms that start at the same key
/// group share it, which is why their batch ids never overlap (a rescale continues the plan ids).
pub fn stateful_task_id(range: KeyGroupRange) -> u32 {
    STATEFUL_TASK_BASE + u32::from(range.start)
}

/// Checks `maxParallelism` is in `1..=32768`.
///
/// # Errors
/// [`EngineError::InvalidQuery`] naming `spec.parallelism.maxParallelism`.
pub fn check_max_parallelism(max_parallelism: u32) -> Result<()> {
    if (1..=MAX_MAX_PARALLELISM).contains(&max_parallelism) {
        Ok(())
    } else {
        Err(EngineError::InvalidQuery(format!(
            "spec.parallelism.maxParallelism must be between 1 and {MAX_MAX_PARALLELISM}, got {max_parallelism}"
        )))
    }
}

/// The key groups task `task` of `parallelism` owns (Flink's
/// `computeKeyGroupRangeForOperatorIndex`): `[ceil(task·M / P), ((task + 1)·M − 1) / P]`.
///
/// # Errors
/// [`EngineError::InvalidQuery`] when `parallelism` is 0 or above `max_parallelism`, or `task` is
/// not below `parallelism`.
pub fn range_for_task(max_parallelism: u32, parallelism: u32, task: u32) -> Result<KeyGroupRange> {
    check_max_parallelism(max_parallelism)?;
    if parallelism == 0 || parallelism > max_parallelism || task >= parallelism {
        return Err(EngineError::InvalidQuery(format!(
            "{parallelism} stateful tasks (task {task}) do not fit {max_parallelism} key groups \
             (spec.parallelism.maxParallelism bounds the tasks of a stateful query)"
        )));
    }
    let (m, p, t) = (
        u64::from(max_parallelism),
        u64::from(parallelism),
        u64::from(task),
    );
    Ok(KeyGroupRange {
        start: (t * m).div_ceil(p) as u16,
        end: (((t + 1) * m - 1) / p) as u16,
    })
}

/// The task of `parallelism` owning `key_group` (Flink's `computeOperatorIndexForKeyGroup`):
/// `key_group · P / M`.
pub fn task_for_key_group(max_parallelism: u32, parallelism: u32, key_group: u16) -> u32 {
    (u64::from(key_group) * u64::from(parallelism) / u64::from(max_parallelism.max(1))) as u32
}

/// The key group of each of `rows` rows whose key is `columns` (in key order): `hash % M`. With
/// no key column every row is in key group 0 (a global aggregate cannot be split).
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a key column type that has no canonical encoding.
pub fn key_groups(columns: &[ArrayRef], rows: usize, max_parallelism: u32) -> Result<Vec<u16>> {
    check_max_parallelism(max_parallelism)?;
    if columns.is_empty() {
        return Ok(vec![0; rows]);
    }
    let m = u64::from(max_parallelism);
    Ok(key_hashes(columns, rows)?
        .into_iter()
        .map(|h| (h % m) as u16)
        .collect())
}

/// The stable 64-bit hash of each row's key (see the module docs).
///
/// # Errors
/// [`EngineError::InvalidQuery`] for a key column type that has no canonical encoding.
pub fn key_hashes(columns: &[ArrayRef], rows: usize) -> Result<Vec<u64>> {
    let mut states = vec![FNV_OFFSET; rows];
    for column in columns {
        if column.len() != rows {
            return Err(EngineError::Internal(format!(
                "key column of {} rows, expected {rows}",
                column.len()
            )));
        }
        feed(column, &mut states, None)?;
    }
    Ok(states.into_iter().map(fmix64).collect())
}

fn fnv(state: &mut u64, bytes: &[u8]) {
    for byte in bytes {
        *state ^= u64::from(*byte);
        *state = state.wrapping_mul(FNV_PRIME);
    }
}

/// MurmurHash3's 64-bit finaliser.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b93f_e53a_2e63);
    k ^= k >> 33;
    k
}

/// Feeds the canonical encoding of every row of `array` into its row's state; rows where `skip`
/// is true (a null parent struct) get nothing.
fn feed(array: &ArrayRef, states: &mut [u64], skip: Option<&[bool]>) -> Result<()> {
    let skipped = |r: usize| skip.is_some_and(|s| s.get(r).copied().unwrap_or(false));
    let each = |states: &mut [u64], encode: &dyn Fn(usize, &mut u64)| {
        for (r, state) in states.iter_mut().enumerate() {
            if skipped(r) {
                continue;
            }
            if array.is_null(r) {
                fnv(state, &[TAG_NULL]);
            } else {
                encode(r, state);
            }
        }
    };
    let unsupported = || {
        EngineError::InvalidQuery(format!(
            "a key of type {} has no key group (supported: booleans, numbers, strings, binaries, \
             dates, times, timestamps, decimals and structs of them)",
            array.data_type()
        ))
    };
    match array.data_type() {
        DataType::Boolean => {
            let values = array
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(unsupported)?;
            each(states, &|r, s| {
                fnv(s, &[TAG_BOOL, u8::from(values.value(r))]);
            });
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Date32
        | DataType::Date64
        | DataType::Time32(_)
        | DataType::Time64(_)
        | DataType::Timestamp(_, _)
        | DataType::Duration(_) => {
            let ints = to_int64(array)?;
            let values: &Int64Array = ints.as_primitive::<Int64Type>();
            each(states, &|r, s| {
                fnv(s, &[TAG_INT]);
                fnv(s, &values.value(r).to_le_bytes());
            });
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let ints = cast(array, &DataType::UInt64)?;
            let values: &UInt64Array = ints.as_primitive::<UInt64Type>();
            each(states, &|r, s| {
                fnv(s, &[TAG_UINT]);
                fnv(s, &values.value(r).to_le_bytes());
            });
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let floats = cast(array, &DataType::Float64)?;
            let values: &Float64Array = floats.as_primitive::<Float64Type>();
            each(states, &|r, s| {
                let v = values.value(r);
                // Equal values hash equal: -0.0 == 0.0, and one NaN for all NaNs.
                let bits = if v == 0.0 {
                    0u64
                } else if v.is_nan() {
                    f64::NAN.to_bits()
                } else {
                    v.to_bits()
                };
                fnv(s, &[TAG_FLOAT]);
                fnv(s, &bits.to_le_bytes());
            });
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let strings = cast(array, &DataType::LargeUtf8)?;
            let values = strings.as_string::<i64>();
            each(states, &|r, s| {
                let bytes = values.value(r).as_bytes();
                fnv(s, &[TAG_STRING]);
                fnv(s, &(bytes.len() as u64).to_le_bytes());
                fnv(s, bytes);
            });
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => {
            let binaries = cast(array, &DataType::LargeBinary)?;
            let values = binaries.as_binary::<i64>();
            each(states, &|r, s| {
                let bytes = values.value(r);
                fnv(s, &[TAG_BINARY]);
                fnv(s, &(bytes.len() as u64).to_le_bytes());
                fnv(s, bytes);
            });
        }
        DataType::Decimal128(_, _) => {
            let values = array
                .as_any()
                .downcast_ref::<Decimal128Array>()
                .ok_or_else(unsupported)?;
            each(states, &|r, s| {
                fnv(s, &[TAG_DECIMAL]);
                fnv(s, &values.value(r).to_le_bytes());
            });
        }
        DataType::Struct(_) => {
            let fields = array
                .as_any()
                .downcast_ref::<StructArray>()
                .ok_or_else(unsupported)?;
            let mut null_here = Vec::with_capacity(states.len());
            for (r, state) in states.iter_mut().enumerate() {
                let skip_row = skipped(r);
                let null = !skip_row && array.is_null(r);
                if !skip_row {
                    fnv(state, &[if null { TAG_NULL } else { TAG_STRUCT }]);
                }
                null_here.push(skip_row || null);
            }
            for child in fields.columns() {
                feed(child, states, Some(&null_here))?;
            }
        }
        DataType::Dictionary(_, value_type) => {
            let values: ArrayRef = cast(array, value_type)?;
            feed(&values, states, skip)?;
        }
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// Integer-like columns (signed ints, dates, times, timestamps, durations) as `Int64` in their
/// own unit.
fn to_int64(array: &ArrayRef) -> Result<ArrayRef> {
    match array.data_type() {
        DataType::Timestamp(unit, _) => {
            // Drop the zone: the instant's number is the same in every zone.
            let plain = cast(array, &DataType::Timestamp(*unit, None))?;
            Ok(cast(&plain, &DataType::Int64)?)
        }
        DataType::Date32 | DataType::Time32(_) => {
            let narrow = cast(array, &DataType::Int32)?;
            Ok(cast(&narrow, &DataType::Int64)?)
        }
        _ => Ok(Arc::clone(&cast(array, &DataType::Int64)?)),
    }
}

#[cfg(test)]
mod tests;
