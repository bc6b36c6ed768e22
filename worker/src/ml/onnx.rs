//! ONNX models for `predict`, run by tract (Sonos' pure-Rust ONNX inference: no native
//! onnxruntime library to download, standard operators plus the `ai.onnx.ml` ones tract has —
//! `LinearRegressor`, `LinearClassifier`, `TreeEnsembleClassifier`, `Normalizer`,
//! `CategoryMapper`).
//!
//! Shapes: the graph's one input is `[rows, features]` (f32, or f64 when the model declares
//! `double`); `predict` feeds all rows of a DataFusion batch whose features are not null as one
//! tensor and runs the model once per batch. The score is one output of the graph (`output:`, by
//! default the first floating-point output, so a classifier's `probabilities` rather than its
//! `label`): a `[rows]` output is the score itself, a `[rows, 1]` output its only column, a
//! `[rows, 2]` output (binary classifier) its column 1 — the positive class — and a
//! `[rows, classes]` output the column `classIndex:` names.

use std::io::Cursor;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;
use tract_onnx::tract_hir::internal::DimLike;

/// Which part of the chosen output is the score.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScoreLayout {
    /// A `[rows]` output.
    Vector,
    /// Column `c` of a `[rows, columns]` output.
    Column(usize),
}

/// An ONNX model ready to run: optimised for a symbolic row count and pruned to the score output.
#[derive(Clone)]
pub struct OnnxModel {
    plan: Arc<TypedRunnableModel>,
    features: usize,
    input_type: DatumType,
    output: String,
    layout: ScoreLayout,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("features", &self.features)
            .field("input_type", &self.input_type)
            .field("output", &self.output)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Two models are equal when they are the same loaded model.
impl PartialEq for OnnxModel {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.plan, &other.plan)
    }
}

impl OnnxModel {
    /// Parses and optimises an ONNX file. `output` names the graph output holding the score
    /// (default: the first floating-point one); `class_index` the column of a
    /// `[rows, classes]` output (default 1 of 2 columns, 0 of 1; required above 2).
    ///
    /// CPU-bound (graph analysis and optimisation): call it outside the async runtime's threads.
    ///
    /// # Errors
    /// A message (without the model's name) when the bytes are not an ONNX model tract can run,
    /// the input is not `[rows, features]`, or the output is missing or has no usable score.
    pub fn load(
        bytes: &[u8],
        output: Option<&str>,
        class_index: Option<u32>,
    ) -> Result<Self, String> {
        let tract = |e: TractError| format!("{e:#}");
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut Cursor::new(bytes))
            .map_err(|e| format!("not an ONNX model tract can read: {e:#}"))?;
        let inputs = model.input_outlets().map_err(tract)?.len();
        if inputs != 1 {
            return Err(format!(
                "the graph has {inputs} inputs; predict feeds exactly one [rows, features] tensor"
            ));
        }
        let declared = model.input_fact(0).map_err(tract)?.clone();
        let features = (declared.shape.rank().concretize() == Some(2))
            .then(|| declared.shape.dim(1))
            .flatten()
            .and_then(|d| d.concretize())
            .and_then(|d| d.to_usize().ok())
            .ok_or_else(|| {
                format!(
                    "the input must be declared as [rows, features] with a fixed feature count, \
                     not {declared:?}"
                )
            })?;
        let input_type = match declared.datum_type.concretize() {
            Some(DatumType::F64) => DatumType::F64,
            _ => DatumType::F32,
        };
        let rows = model.sym("rows");
        model
            .set_input_fact(
                0,
                InferenceFact::dt_shape(input_type, tvec![rows.to_dim(), features.to_dim()]),
            )
            .map_err(tract)?;
        let output_names: Vec<String> = model
            .output_outlets()
            .map_err(tract)?
            .iter()
            .map(|o| model.outlet_label(*o).unwrap_or("?").to_string())
            .collect();
        if let Some(name) = output {
            if !output_names.iter().any(|n| n == name) {
                return Err(format!(
                    "no output named `{name}`; the graph's outputs are {output_names:?}"
                ));
            }
            model.select_outputs_by_name([name]).map_err(tract)?;
        }
        let mut typed = model
            .into_typed()
            .map_err(|e| format!("cannot analyse the graph: {e:#}"))?;
        let outlets = typed.output_outlets().map_err(tract)?.to_vec();
        let mut chosen = None;
        for outlet in outlets {
            let fact = typed.outlet_fact(outlet).map_err(tract)?;
            if output.is_some() || fact.datum_type.is_float() {
                chosen = Some((outlet, fact.clone()));
                break;
            }
        }
        let Some((outlet, fact)) = chosen else {
            return Err(format!(
                "no floating-point output to score with among {output_names:?}; name one with `output`"
            ));
        };
        let output = typed.outlet_label(outlet).unwrap_or("?").to_string();
        let columns = match fact.rank() {
            1 => None,
            2 => Some(
                fact.shape
                    .get(1)
                    .and_then(|d| d.to_usize().ok())
                    .ok_or_else(|| {
                        format!("output `{output}` has no fixed column count: {fact:?}")
                    })?,
            ),
            _ => {
                return Err(format!(
                    "output `{output}` must be [rows] or [rows, columns], not {fact:?}"
                ));
            }
        };
        let layout =
            score_layout(columns, class_index).map_err(|e| format!("output `{output}`: {e}"))?;
        typed.select_output_outlets(&[outlet]).map_err(tract)?;
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| format!("cannot optimise the graph: {e:#}"))?;
        Ok(Self {
            plan,
            features,
            input_type,
            output,
            layout,
        })
    }

    /// The number of features the model takes.
    pub fn features(&self) -> usize {
        self.features
    }

    /// Scores `rows` rows given row-major as `rows × features()` values: one model run.
    ///
    /// # Errors
    /// A message when the values are not `rows × features()` or the model fails (or panics).
    pub fn score(&self, rows: usize, values: &[f64]) -> Result<Vec<f64>, String> {
        if values.len() != rows * self.features {
            return Err(format!(
                "{} values for {rows} rows of {} features",
                values.len(),
                self.features
            ));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let shape = [rows, self.features];
        let input = if self.input_type == DatumType::F64 {
            Tensor::from_shape(&shape, values)
        } else {
            let values: Vec<f32> = values.iter().map(|v| *v as f32).collect();
            Tensor::from_shape(&shape, &values)
        }
        .map_err(|e| format!("{e:#}"))?;
        let outputs = catch_unwind(AssertUnwindSafe(|| {
            self.plan.run(tvec![input.into_tvalue()])
        }))
        .map_err(|_| "the model panicked".to_string())?
        .map_err(|e| format!("running the model failed: {e:#}"))?;
        let out = outputs
            .first()
            .ok_or_else(|| "the model returned no output".to_string())?;
        let out = out.cast_to::<f64>().map_err(|e| format!("{e:#}"))?;
        let view = out
            .to_plain_array_view::<f64>()
            .map_err(|e| format!("{e:#}"))?;
        let scores: Vec<f64> = match self.layout {
            ScoreLayout::Vector if view.ndim() == 1 => view.iter().copied().collect(),
            ScoreLayout::Column(c)
                if view.ndim() == 2 && view.shape().get(1).is_some_and(|n| c < *n) =>
            {
                view.index_axis(tract_ndarray::Axis(1), c)
                    .iter()
                    .copied()
                    .collect()
            }
            _ => {
                return Err(format!(
                    "output `{}` has shape {:?}, expected {:?}",
                    self.output,
                    view.shape(),
                    self.layout
                ));
            }
        };
        if scores.len() != rows {
            return Err(format!(
                "output `{}` has {} rows for {rows} input rows",
                self.output,
                scores.len()
            ));
        }
        Ok(scores)
    }
}

/// Which column of an output with `columns` columns (`None`: a `[rows]` output) is the score.
fn score_layout(columns: Option<usize>, class_index: Option<u32>) -> Result<ScoreLayout, String> {
    match (columns, class_index) {
        (None, None) => Ok(ScoreLayout::Vector),
        (None, Some(_)) => Err("classIndex given but the output has no class columns".into()),
        (Some(n), Some(c)) if (c as usize) < n => Ok(ScoreLayout::Column(c as usize)),
        (Some(n), Some(c)) => Err(format!("classIndex {c} but the output has {n} columns")),
        (Some(1), None) => Ok(ScoreLayout::Column(0)),
        (Some(2), None) => Ok(ScoreLayout::Column(1)),
        (Some(n), None) => Err(format!(
            "{n} class columns: say which one is the score with classIndex"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_column_is_the_positive_class_unless_chosen() {
        assert_eq!(score_layout(None, None), Ok(ScoreLayout::Vector));
        assert_eq!(score_layout(Some(1), None), Ok(ScoreLayout::Column(0)));
        assert_eq!(score_layout(Some(2), None), Ok(ScoreLayout::Column(1)));
        assert_eq!(score_layout(Some(2), Some(0)), Ok(ScoreLayout::Column(0)));
        assert_eq!(score_layout(Some(5), Some(4)), Ok(ScoreLayout::Column(4)));
        assert!(score_layout(Some(3), None).is_err());
        assert!(score_layout(Some(3), Some(3)).is_err());
        assert!(score_layout(None, Some(0)).is_err());
    }
}
