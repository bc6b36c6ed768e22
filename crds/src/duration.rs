//! Durations as users write them: `10s`, `500ms`, `10m`, `1 minute`, `5 minutes` (Spark's interval
//! strings and Kubernetes-style short units both parse).

use std::time::Duration;

/// Parses a duration string.
///
/// Accepts `humantime` syntax (`10s`, `1m 30s`, `250ms`, `2h`) and Spark's `'10 minutes'` form.
///
/// # Errors
/// A message naming the offending text when it is empty, negative or has an unknown unit.
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
    humantime::parse_duration(&joined).map_err(|e| format!("`{text}` is not a duration ({e})"))
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
}
