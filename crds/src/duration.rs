//! Durations as users write them: `10s`, `500ms`, `10m`, `1 minute`, `5 minutes` (Spark's interval
//! strings and Kubernetes-style short units both parse).

use std::time::Duration;

/// The longest duration accepted: `i64::MAX` microseconds (about 292,000 years). Durations are
/// added to and subtracted from event times, which are microseconds in an `i64` (Arrow's
/// `Timestamp(Microsecond)`, Spark's `TimestampType`), and converted to `i64` milliseconds; within
/// this bound none of that overflows.
pub const MAX_DURATION: Duration = Duration::from_micros(i64::MAX as u64);

/// Parses a duration string.
///
/// Accepts `humantime` syntax (`10s`, `1m 30s`, `250ms`, `2h`) and Spark's `'10 minutes'` form.
///
/// # Errors
/// A message naming the offending text when it is empty, negative, has an unknown unit or is
/// longer than [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration".to_string());
    }
    // humantime wants `10minutes`; Spark writes `10 minutes`. Join a number and its unit.
    let mut joined = String::with_capacity(trimmed.len());
    let mut previous_was_digit = false;
    for part in trimmed.split_whitespace() {
        let starts_alpha = part.chars().next().is_some_and(|c| c.is_alphabetic());
        if !(joined.is_empty() || previous_was_digit && starts_alpha) {
            joined.push(' ');
        }
        joined.push_str(part);
        previous_was_digit = part.chars().last().is_some_and(|c| c.is_ascii_digit());
    }
    // humantime sums the components itself and panics ("overflow in Duration::new") when the
    // sum reaches u64::MAX seconds with nanoseconds to carry (`18446744073709551615s 500ms 500ms`).
    // One component alone cannot overflow so, parsed one by one, the sum is checked here.
    let mut total = Duration::ZERO;
    for component in components(&joined) {
        let part = humantime::parse_duration(component)
            .map_err(|e| format!("`{text}` is not a duration ({e})"))?;
        total = total
            .checked_add(part)
            .filter(|sum| *sum <= MAX_DURATION)
            .ok_or_else(|| {
                format!(
                    "`{text}` is longer than the longest duration supported (about 292,000 years)"
                )
            })?;
    }
    Ok(total)
}

/// `1h30m 10s` → `1h`, `30m`, `10s`: a new component at each digit that follows a non-digit.
fn components(joined: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for word in joined.split_whitespace() {
        let mut start = 0;
        let mut previous_digit = true;
        for (i, c) in word.char_indices() {
            if c.is_ascii_digit() && !previous_digit {
                out.push(&word[start..i]);
                start = i;
            }
            previous_digit = c.is_ascii_digit();
        }
        out.push(&word[start..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_spark_forms() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1 minute"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10 minutes"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_duration("1 hour 30 seconds"),
            Ok(Duration::from_secs(3630))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_duration("").is_err());
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("10 parsecs").is_err());
    }

    // Found by the `duration`/`sql_plan` fuzz targets: humantime accepts up to u64::MAX seconds,
    // which overflowed `window()`'s microsecond arithmetic and wrapped `as i64` conversions.
    #[test]
    fn rejects_durations_beyond_i64_microseconds() {
        assert_eq!(
            parse_duration("292000 years"),
            Ok(Duration::from_secs(292_000 * 31_557_600))
        );
        let err = parse_duration("300000 years").expect_err("too long");
        assert!(err.contains("`300000 years` is longer than"), "{err}");
        assert!(parse_duration("18446744073709551615s").is_err());
        // MAX_DURATION is 9223372036854.775807 s.
        assert_eq!(
            parse_duration("9223372036854s 775ms 807us"),
            Ok(MAX_DURATION)
        );
        assert!(parse_duration("9223372036854s 775ms 808us").is_err());
    }

    // Found by the `duration` fuzz target: humantime's own sum panicked on this.
    #[test]
    fn components_summing_past_u64_seconds_are_an_error_not_a_panic() {
        let err = parse_duration("18446744073709551615s 500ms 500ms").expect_err("too long");
        assert!(err.contains("longer than"), "{err}");
        assert!(parse_duration("18446744073709551615s500ms500ms").is_err());
        assert_eq!(parse_duration("1h30m 10s"), Ok(Duration::from_secs(5410)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5s;").is_err());
        assert!(parse_duration("1.5h").is_err());
    }
}
