//! Byte sizes as users write them: `134217728`, `128MiB`, `128Mi`, `64 KiB`.

/// CEL rule (apiserver-side) for a size string [`parse_size`] accepts.
pub const SIZE_RULE: &str = r"self.matches('^\\s*[0-9]+\\s*(B|KiB|MiB|GiB|Ki|Mi|Gi)?\\s*$')";
/// The message of [`SIZE_RULE`].
pub const SIZE_MESSAGE: &str = "must be a size such as `128MiB`, `64Ki` or a number of bytes";

/// Parses a size: a number of bytes with an optional binary unit (`B`, `KiB`/`Ki`, `MiB`/`Mi`,
/// `GiB`/`Gi`).
///
/// # Errors
/// A message naming the text when it is not a number with one of those units, or overflows `u64`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(digits);
    let bad = || format!("`{text}` is not a size such as `128MiB`, `64Ki` or a number of bytes");
    let number: u64 = number.parse().map_err(|_| bad())?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        _ => return Err(bad()),
    };
    number.checked_mul(factor).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size(" 64 Ki "), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        for bad in ["", "MiB", "1.5MiB", "10MB", "-1", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
