use super::*;
use arrow::array::{Int32Array, Int64Array, StringArray, TimestampMillisecondArray};

fn strings(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(StringArray::from(values.to_vec()))
}

/// The hash is part of the checkpoint format. These values were computed independently of this
/// code (FNV-1a 64 over the documented encoding, then fmix64); if this test fails, state written by
/// earlier versions would be looked up in the wrong key group.
#[test]
fn hash_values_are_pinned() {
    let keys = strings(&[Some("sensor-1"), Some("sensor-2"), None]);
    assert_eq!(
        key_hashes(std::slice::from_ref(&keys), 3).expect("hash"),
        vec![
            5_749_839_377_611_631_006,
            16_089_839_952_654_440_792,
            16_246_023_207_804_073_718
        ]
    );
    assert_eq!(
        key_groups(&[keys], 3, 128).expect("groups"),
        vec![30, 88, 118]
    );
    let ints: ArrayRef = Arc::new(Int64Array::from(vec![42]));
    assert_eq!(
        key_hashes(&[ints], 1).expect("hash"),
        vec![9_565_955_010_234_400_396]
    );
    // Two key columns: their encodings concatenated, in key order.
    let pair = [
        strings(&[Some("sensor-1")]),
        Arc::new(Int64Array::from(vec![7])) as ArrayRef,
    ];
    assert_eq!(
        key_hashes(&pair, 1).expect("hash"),
        vec![11_425_881_342_924_534_696]
    );
}

/// Integer widths, string encodings and time zones do not change a value's key group.
#[test]
fn equal_values_hash_equal_across_physical_types() {
    let narrow: ArrayRef = Arc::new(Int32Array::from(vec![42, -1]));
    let wide: ArrayRef = Arc::new(Int64Array::from(vec![42, -1]));
    assert_eq!(
        key_hashes(&[narrow], 2).expect("i32"),
        key_hashes(&[wide], 2).expect("i64")
    );
    let large: ArrayRef = Arc::new(arrow::array::LargeStringArray::from(vec!["a", "b"]));
    assert_eq!(
        key_hashes(&[large], 2).expect("large"),
        key_hashes(&[strings(&[Some("a"), Some("b")])], 2).expect("utf8")
    );
    let utc: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_000]).with_timezone("UTC"));
    let plain: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![1_000]));
    assert_eq!(
        key_hashes(&[utc], 1).expect("utc"),
        key_hashes(&[plain], 1).expect("plain")
    );
}

/// No key column: one key group (0) for every row.
#[test]
fn an_empty_key_is_key_group_zero() {
    assert_eq!(key_groups(&[], 3, 128).expect("groups"), vec![0, 0, 0]);
}

/// Many keys spread over all key groups (no key group gets more than 3x its share).
#[test]
fn keys_spread_over_key_groups() {
    let names: Vec<String> = (0..12_800).map(|i| format!("device-{i}")).collect();
    let keys: ArrayRef = Arc::new(StringArray::from(names));
    let groups = key_groups(&[keys], 12_800, 128).expect("groups");
    let mut counts = [0u32; 128];
    for g in groups {
        counts[usize::from(g)] += 1;
    }
    assert!(counts.iter().all(|c| (30..=300).contains(c)), "{counts:?}");
}

/// Flink's `KeyGroupRangeAssignment` for 128 key groups over 3 tasks, and the inverse.
#[test]
fn ranges_follow_flinks_assignment() {
    let ranges: Vec<KeyGroupRange> = (0..3)
        .map(|t| range_for_task(128, 3, t).expect("range"))
        .collect();
    assert_eq!(
        ranges,
        vec![
            KeyGroupRange { start: 0, end: 42 },
            KeyGroupRange { start: 43, end: 85 },
            KeyGroupRange {
                start: 86,
                end: 127
            },
        ]
    );
    for (task, range) in ranges.iter().enumerate() {
        for g in range.start..=range.end {
            assert_eq!(task_for_key_group(128, 3, g), task as u32, "key group {g}");
        }
    }
    assert_eq!(
        range_for_task(128, 1, 0).expect("one"),
        KeyGroupRange::all(128).expect("all")
    );
    assert!(
        range_for_task(4, 5, 0).is_err(),
        "more tasks than key groups"
    );
    assert!(range_for_task(128, 2, 2).is_err(), "task out of range");
    let err = check_max_parallelism(40_000)
        .expect_err("too big")
        .to_string();
    assert!(err.contains("spec.parallelism.maxParallelism"), "{err}");
}
