//! Scalar functions Sluice adds to DataFusion's SQL (beside the window functions of
//! [`super::window`]).
//!
//! - `count_char(text, ch)`: how many times the character `ch` occurs in `text`, as Flink Nexmark's
//!   `CountChar` UDF of q14 (`nexmark-flink` `CountChar.eval`): `Utf8 × Utf8 → Int64`, a null
//!   `text` counts 0, `ch` must be exactly one character (else a user error naming the function).

use std::sync::Arc;

use arrow::array::{Array, Int64Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, ScalarValue, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

type DfResult<T> = datafusion::common::Result<T>;

/// The functions of this module, to register on a session.
pub fn scalar_udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(CountChar {
        signature: Signature::exact(vec![DataType::Utf8, DataType::Utf8], Volatility::Immutable),
    })]
}

/// `count_char(text, ch)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CountChar {
    signature: Signature,
}

impl ScalarUDFImpl for CountChar {
    fn name(&self) -> &str {
        "count_char"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Int64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let [text, ch] = args.args.as_slice() else {
            return plan_err!("count_char(text, ch) takes two arguments");
        };
        // The character is a constant in every use seen (Flink's q14: 'c'); a column works too.
        let single = |value: Option<&str>| -> DfResult<char> {
            let mut chars = value.unwrap_or_default().chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => Ok(c),
                // A Plan error: the SQL must change (classified as a user error, not a bug).
                _ => plan_err!("count_char(text, ch): ch must be one character, got {value:?}"),
            }
        };
        let text = cast(&text.to_array(args.number_rows)?, &DataType::Utf8)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("count_char: text is not Utf8".into()))?;
        let counts: Int64Array = match ch {
            ColumnarValue::Scalar(ScalarValue::Utf8(value)) => {
                let c = single(value.as_deref())?;
                text.iter()
                    .map(|s| Some(s.map_or(0, |s| s.chars().filter(|x| *x == c).count() as i64)))
                    .collect()
            }
            other => {
                let chars = cast(&other.to_array(args.number_rows)?, &DataType::Utf8)?;
                let chars = chars
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| {
                        DataFusionError::Internal("count_char: ch is not Utf8".into())
                    })?;
                text.iter()
                    .zip(chars.iter())
                    .map(|(s, c)| {
                        let c = single(c)?;
                        Ok(Some(s.map_or(0, |s| {
                            s.chars().filter(|x| *x == c).count() as i64
                        })))
                    })
                    .collect::<DfResult<_>>()?
            }
        };
        Ok(ColumnarValue::Array(Arc::new(counts)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    async fn one(sql: &str) -> DfResult<String> {
        let ctx = SessionContext::new();
        for udf in scalar_udfs() {
            ctx.register_udf(udf);
        }
        let batches = ctx.sql(sql).await?.collect().await?;
        Ok(arrow::util::pretty::pretty_format_batches(&batches)?.to_string())
    }

    #[tokio::test]
    async fn counts_a_character_as_flinks_count_char() {
        let out = one(
            "SELECT count_char(t, 'c') AS n FROM (VALUES ('abcabcc'), (''), (NULL), ('ççc')) AS v(t)",
        )
        .await
        .expect("query");
        let n: Vec<&str> = out
            .lines()
            .filter_map(|l| l.strip_prefix("| ")?.strip_suffix(" |"))
            .map(str::trim)
            .collect();
        assert_eq!(n, ["n", "3", "0", "0", "1"]);
    }

    #[tokio::test]
    async fn a_character_argument_of_another_length_is_an_error() {
        let error = one("SELECT count_char('abc', 'ab')")
            .await
            .expect_err("two characters");
        assert!(
            error.to_string().contains("ch must be one character"),
            "{error}"
        );
    }
}
