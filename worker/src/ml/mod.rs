//! Machine learning in SQL (seed 001: streaming jobs that apply or learn models).
//!
//! - Models trained offline (`models[].file`): a JSON file `{"type": "linear" | "logistic",
//!   "coefficients": [..], "intercept": b}` scored by `predict('name', x1, x2, ...)` →
//!   `Float64` (`b + Σ cᵢxᵢ`, passed through the logistic function for `logistic`), or an ONNX
//!   graph (`format: onnx` or a `.onnx` path) run by tract once per batch on a `[rows, features]`
//!   tensor (see [`onnx`] for which output is the score). The file is re-read when its
//!   modification time or size changes (checked once per batch); when a new version cannot be
//!   read or is not a model, the previous one keeps scoring (warning logged) until a readable
//!   version appears. Features must be numeric, as many as the model takes; a row with a null
//!   feature scores null.
//! - Models learned from the stream (`streamingKMeans`, `streamingLinearRegression`, as MLlib's):
//!   trained on every micro-batch of their source, per task, AFTER the batch's SQL ran (a row is
//!   scored by the model as it stood before the row arrived, MLlib's `predictOn` after the previous
//!   `trainOn`). SQL: `kmeans_cluster('name', x...)` → `Int64` cluster index,
//!   `kmeans_distance('name', x...)` → `Float64` Euclidean distance to that center,
//!   `predict('name', x...)` for a regression. Tables `<name>_centers (cluster BIGINT, center
//!   LIST<DOUBLE>, weight DOUBLE)` and `<name>_weights (i BIGINT, weight DOUBLE)` show the current
//!   model, so a query can write it to its sink.
//! - Learned models are query state: saved with every batch as `tasks/<p>/models/<batchId>` (JSON)
//!   before the commit, restored from the last committed batch on start, so a replay after a crash
//!   trains from exactly the state the lost run had.

pub mod kmeans;
pub mod onnx;
pub mod regression;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use arrow::array::{
    Array, ArrayRef, Float64Array, Float64Builder, Int64Array, Int64Builder, ListBuilder,
    RecordBatch,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};
use sluice_crds::{KMeansTimeUnit, ModelFormat, ModelSpec};

use self::kmeans::{Decay, KMeansState, decay_from_half_life};
use self::onnx::OnnxModel;
use self::regression::RegressionState;
use crate::error::{EngineError, Result};
use crate::storage::Location;

/// A model trained offline, as stored in its JSON file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FileModel {
    Linear {
        coefficients: Vec<f64>,
        intercept: f64,
    },
    Logistic {
        coefficients: Vec<f64>,
        intercept: f64,
    },
}

impl FileModel {
    /// The score of one row.
    pub fn score(&self, x: &[f64]) -> f64 {
        match self {
            Self::Linear {
                coefficients,
                intercept,
            } => dot(coefficients, x) + intercept,
            Self::Logistic {
                coefficients,
                intercept,
            } => 1.0 / (1.0 + (-(dot(coefficients, x) + intercept)).exp()),
        }
    }

    /// The number of features the model takes (`predict` checks it before [`FileModel::score`]).
    pub fn features(&self) -> usize {
        match self {
            Self::Linear { coefficients, .. } | Self::Logistic { coefficients, .. } => {
                coefficients.len()
            }
        }
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The current state of one model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum ModelState {
    File {
        model: FileModel,
    },
    KMeans {
        state: KMeansState,
    },
    Regression {
        state: RegressionState,
    },
    /// An ONNX model file: never checkpointed (it is re-read from its file).
    #[serde(skip)]
    Onnx {
        model: OnnxModel,
    },
}

/// Models of one task, shared with the SQL functions of that task's session.
pub type ModelTable = Arc<RwLock<BTreeMap<String, ModelState>>>;

struct FileSource {
    name: String,
    /// The path as the spec gives it, for messages.
    spec_path: String,
    format: ModelFormat,
    output: Option<String>,
    class_index: Option<u32>,
    location: Location,
    path: object_store::path::Path,
    /// (modified ms, size) of the loaded version.
    version: Option<(i64, u64)>,
    /// A version that was read and is not a model (not read again).
    rejected: Option<(i64, u64)>,
}

/// The models of one task: their state, how to train them, where their files are.
pub struct TaskModels {
    specs: Vec<ModelSpec>,
    table: ModelTable,
    files: Vec<FileSource>,
}

impl TaskModels {
    /// Models as the spec declares them, with learned state from `restored` (the saved state of
    /// the last committed batch) where present.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] for an unusable model path.
    pub fn new(
        specs: &[ModelSpec],
        restored: Option<BTreeMap<String, ModelState>>,
    ) -> Result<Self> {
        let mut restored = restored.unwrap_or_default();
        let mut table = BTreeMap::new();
        let mut files = Vec::new();
        for spec in specs {
            if let Some(file) = &spec.file {
                let (dir, name) = file
                    .path
                    .rsplit_once('/')
                    .unwrap_or((".", file.path.as_str()));
                let location = Location::parse(if dir.is_empty() { "/" } else { dir })?;
                let format =
                    file.format
                        .unwrap_or(if file.path.to_ascii_lowercase().ends_with(".onnx") {
                            ModelFormat::Onnx
                        } else {
                            ModelFormat::Json
                        });
                if format == ModelFormat::Json
                    && (file.output.is_some() || file.class_index.is_some())
                {
                    return Err(EngineError::InvalidQuery(format!(
                        "model `{}`: `output` and `classIndex` apply to ONNX models only",
                        spec.name
                    )));
                }
                files.push(FileSource {
                    name: spec.name.clone(),
                    spec_path: file.path.clone(),
                    format,
                    output: file.output.clone(),
                    class_index: file.class_index,
                    path: location.child(name),
                    location,
                    version: None,
                    rejected: None,
                });
            } else if let Some(state) = restored.remove(&spec.name) {
                table.insert(spec.name.clone(), state);
            } else if let Some(km) = &spec.streaming_k_means {
                let state = if km.initial_centers.is_empty() {
                    KMeansState::random(km.k as usize, km.features.len(), 0.0, km.seed)
                } else {
                    let weights = if km.initial_weights.is_empty() {
                        vec![0.0; km.k as usize]
                    } else {
                        km.initial_weights.clone()
                    };
                    KMeansState {
                        centers: km.initial_centers.clone(),
                        weights,
                    }
                };
                table.insert(spec.name.clone(), ModelState::KMeans { state });
            } else if let Some(lr) = &spec.streaming_linear_regression {
                let dims = lr.features.len() + usize::from(lr.fit_intercept);
                let weights = if lr.initial_weights.is_empty() {
                    vec![0.0; dims]
                } else {
                    lr.initial_weights.clone()
                };
                table.insert(
                    spec.name.clone(),
                    ModelState::Regression {
                        state: RegressionState {
                            weights,
                            fit_intercept: lr.fit_intercept,
                        },
                    },
                );
            }
        }
        Ok(Self {
            specs: specs.to_vec(),
            table: Arc::new(RwLock::new(table)),
            files,
        })
    }

    /// The SQL functions bound to these models.
    pub fn functions(&self) -> Vec<ScalarUDF> {
        [
            ModelFunction::Predict,
            ModelFunction::KMeansCluster,
            ModelFunction::KMeansDistance,
        ]
        .into_iter()
        .map(|kind| ScalarUDF::new_from_impl(ModelUdf::new(kind, self.table.clone())))
        .collect()
    }

    /// Tables showing the learned models: name and schema.
    pub fn table_schemas(&self) -> Vec<(String, SchemaRef)> {
        self.specs
            .iter()
            .filter_map(|spec| {
                if spec.streaming_k_means.is_some() {
                    Some((format!("{}_centers", spec.name), centers_schema()))
                } else if spec.streaming_linear_regression.is_some() {
                    Some((format!("{}_weights", spec.name), weights_schema()))
                } else {
                    None
                }
            })
            .collect()
    }

    /// The current content of the tables of [`TaskModels::table_schemas`].
    ///
    /// # Errors
    /// Arrow errors building the batches.
    pub fn tables(&self) -> Result<Vec<(String, RecordBatch)>> {
        let table = self.read()?;
        let mut out = Vec::new();
        for (name, state) in table.iter() {
            match state {
                ModelState::KMeans { state } => {
                    let mut centers = ListBuilder::new(Float64Builder::new());
                    for center in &state.centers {
                        centers.values().append_slice(center);
                        centers.append(true);
                    }
                    let batch = RecordBatch::try_new(
                        centers_schema(),
                        vec![
                            Arc::new(Int64Array::from_iter_values(0..state.centers.len() as i64))
                                as ArrayRef,
                            Arc::new(centers.finish()),
                            Arc::new(Float64Array::from(state.weights.clone())),
                        ],
                    )?;
                    out.push((format!("{name}_centers"), batch));
                }
                ModelState::Regression { state } => {
                    let batch = RecordBatch::try_new(
                        weights_schema(),
                        vec![
                            Arc::new(Int64Array::from_iter_values(0..state.weights.len() as i64))
                                as ArrayRef,
                            Arc::new(Float64Array::from(state.weights.clone())),
                        ],
                    )?;
                    out.push((format!("{name}_weights"), batch));
                }
                ModelState::File { .. } | ModelState::Onnx { .. } => {}
            }
        }
        Ok(out)
    }

    /// Re-reads model files that changed since they were loaded. A model that was loaded before
    /// keeps scoring when its new version cannot be read or parsed (a warning is logged and the
    /// read retried next batch): a half-written file must not stop the query.
    ///
    /// # Errors
    /// Only for a model not loaded yet: [`EngineError::InvalidQuery`] when its file does not exist
    /// or is not a model; [`EngineError::Storage`] (retryable) when it cannot be read.
    pub async fn refresh_files(&mut self) -> Result<()> {
        for file in &mut self.files {
            let loaded = file.version.is_some();
            let version = match file_version(file).await {
                Ok(version) => version,
                Err(e) if loaded => {
                    tracing::warn!(model = %file.name, error = %e, "model file not checked; the loaded version keeps scoring");
                    continue;
                }
                Err(e) => return Err(e),
            };
            if file.version == Some(version) || file.rejected == Some(version) {
                continue;
            }
            match load_file(file).await {
                Ok(model) => {
                    tracing::info!(model = %file.name, path = %file.spec_path, "loaded model file");
                    self.table
                        .write()
                        .map_err(|_| EngineError::Internal("model table lock poisoned".into()))?
                        .insert(file.name.clone(), model);
                    file.version = Some(version);
                }
                Err(e) if loaded => {
                    tracing::warn!(model = %file.name, error = %e, "model file not reloaded; the previous version keeps scoring");
                    if !e.is_retryable() {
                        // Not a model: wait for the next version rather than re-read this one.
                        file.rejected = Some(version);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Trains the learned models whose source is `source` on that source's rows of one batch.
    ///
    /// # Errors
    /// [`EngineError::InvalidQuery`] when a feature or label column is missing or not numeric.
    pub fn train(&self, source: &str, batches: &[RecordBatch]) -> Result<()> {
        let mut table = self
            .table
            .write()
            .map_err(|_| EngineError::Internal("model table lock poisoned".into()))?;
        for spec in &self.specs {
            if let Some(km) = &spec.streaming_k_means
                && km.source == source
                && let Some(ModelState::KMeans { state }) = table.get_mut(&spec.name)
            {
                let points: Vec<Vec<f64>> = feature_rows(batches, &km.features, None)?
                    .into_iter()
                    .map(|(x, _)| x)
                    .collect();
                let decay = km
                    .half_life
                    .map(decay_from_half_life)
                    .unwrap_or(km.decay_factor);
                let decay = match km.time_unit {
                    KMeansTimeUnit::Batches => Decay::PerBatch(decay),
                    KMeansTimeUnit::Points => Decay::PerPoint(decay),
                };
                state.update(&points, decay);
            }
            if let Some(lr) = &spec.streaming_linear_regression
                && lr.source == source
                && let Some(ModelState::Regression { state }) = table.get_mut(&spec.name)
            {
                let rows = feature_rows(batches, &lr.features, Some(&lr.label))?;
                state.train(&rows, lr.step_size, lr.num_iterations);
            }
        }
        Ok(())
    }

    /// True when some model learns from the stream (its state must be checkpointed).
    pub fn has_learned_models(&self) -> bool {
        self.specs.iter().any(|s| s.file.is_none())
    }

    /// Puts back a state taken with [`TaskModels::learned_state`] (a failed batch must not have
    /// trained the model, since its replay will train it again).
    ///
    /// # Errors
    /// Only a poisoned lock.
    pub fn restore(&self, state: BTreeMap<String, ModelState>) -> Result<()> {
        let mut table = self
            .table
            .write()
            .map_err(|_| EngineError::Internal("model table lock poisoned".into()))?;
        table.extend(state);
        Ok(())
    }

    /// The learned models' state, to checkpoint.
    ///
    /// # Errors
    /// Only a poisoned lock.
    pub fn learned_state(&self) -> Result<BTreeMap<String, ModelState>> {
        Ok(self
            .read()?
            .iter()
            .filter(|(_, s)| !matches!(s, ModelState::File { .. } | ModelState::Onnx { .. }))
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect())
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelState>>> {
        self.table
            .read()
            .map_err(|_| EngineError::Internal("model table lock poisoned".into()))
    }
}

fn storage_error(file: &FileSource, e: object_store::Error) -> EngineError {
    match e {
        object_store::Error::NotFound { .. } => EngineError::InvalidQuery(format!(
            "model `{}`: file {} not found",
            file.name, file.spec_path
        )),
        e => EngineError::storage(format!("model `{}` file {}", file.name, file.spec_path), e),
    }
}

/// The (modified ms, size) version of a model file.
async fn file_version(file: &FileSource) -> Result<(i64, u64)> {
    let meta = file
        .location
        .store
        .head(&file.path)
        .await
        .map_err(|e| storage_error(file, e))?;
    Ok((meta.last_modified.timestamp_millis(), meta.size))
}

/// Reads and parses a model file.
async fn load_file(file: &FileSource) -> Result<ModelState> {
    let bytes = file
        .location
        .store
        .get(&file.path)
        .await
        .map_err(|e| storage_error(file, e))?
        .bytes()
        .await
        .map_err(|e| storage_error(file, e))?;
    let invalid = |e: String| {
        EngineError::InvalidQuery(format!("model `{}` ({}): {e}", file.name, file.spec_path))
    };
    Ok(match file.format {
        ModelFormat::Json => ModelState::File {
            model: serde_json::from_slice(&bytes)
                .map_err(|e| invalid(format!("not a model file: {e}")))?,
        },
        ModelFormat::Onnx => {
            let (output, class_index) = (file.output.clone(), file.class_index);
            // Graph analysis and optimisation are CPU work: off the async threads. A panic in
            // the loader (a malformed graph) ends the blocking task, not the worker.
            let loaded = tokio::task::spawn_blocking(move || {
                OnnxModel::load(&bytes, output.as_deref(), class_index)
            })
            .await
            .map_err(|e| invalid(format!("the ONNX loader failed: {e}")))?;
            ModelState::Onnx {
                model: loaded.map_err(invalid)?,
            }
        }
    })
}

fn centers_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("cluster", DataType::Int64, false),
        Field::new("center", DataType::new_list(DataType::Float64, true), false),
        Field::new("weight", DataType::Float64, false),
    ]))
}

fn weights_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, false),
        Field::new("weight", DataType::Float64, false),
    ]))
}

/// Rows of `features` (and `label`) as f64, skipping rows with a null.
fn feature_rows(
    batches: &[RecordBatch],
    features: &[String],
    label: Option<&String>,
) -> Result<Vec<(Vec<f64>, f64)>> {
    let mut rows = Vec::new();
    for batch in batches {
        let column = |name: &String| -> Result<Float64Array> {
            let array = batch.column_by_name(name).ok_or_else(|| {
                EngineError::InvalidQuery(format!(
                    "model feature `{name}` is not a column of the source"
                ))
            })?;
            let cast = arrow::compute::cast(array, &DataType::Float64).map_err(|e| {
                EngineError::InvalidQuery(format!("model feature `{name}` is not numeric: {e}"))
            })?;
            Ok(cast
                .as_any()
                .downcast_ref::<Float64Array>()
                .cloned()
                .unwrap_or_else(|| Float64Array::from(Vec::<f64>::new())))
        };
        let xs = features.iter().map(column).collect::<Result<Vec<_>>>()?;
        let y = label.map(column).transpose()?;
        'rows: for i in 0..batch.num_rows() {
            let mut x = Vec::with_capacity(xs.len());
            for array in &xs {
                if array.is_null(i) {
                    continue 'rows;
                }
                x.push(array.value(i));
            }
            let label = match &y {
                Some(y) if y.is_null(i) => continue 'rows,
                Some(y) => y.value(i),
                None => 0.0,
            };
            rows.push((x, label));
        }
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ModelFunction {
    Predict,
    KMeansCluster,
    KMeansDistance,
}

/// `predict` / `kmeans_cluster` / `kmeans_distance`: `(model name, feature, ...)`.
#[derive(Debug)]
struct ModelUdf {
    kind: ModelFunction,
    signature: Signature,
    table: ModelTable,
}

impl PartialEq for ModelUdf {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.table, &other.table)
    }
}

impl Eq for ModelUdf {}

impl std::hash::Hash for ModelUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
    }
}

impl ModelUdf {
    fn new(kind: ModelFunction, table: ModelTable) -> Self {
        Self {
            kind,
            signature: Signature::variadic_any(Volatility::Volatile),
            table,
        }
    }
}

impl ScalarUDFImpl for ModelUdf {
    fn name(&self) -> &str {
        match self.kind {
            ModelFunction::Predict => "predict",
            ModelFunction::KMeansCluster => "kmeans_cluster",
            ModelFunction::KMeansDistance => "kmeans_distance",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(match self.kind {
            ModelFunction::KMeansCluster => DataType::Int64,
            _ => DataType::Float64,
        })
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let plan_error = |m: String| DataFusionError::Plan(format!("{}: {m}", self.name()));
        let Some((name, features)) = args.args.split_first() else {
            return Err(plan_error("needs a model name and features".into()));
        };
        let name = match name {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(n))
                | ScalarValue::LargeUtf8(Some(n))
                | ScalarValue::Utf8View(Some(n)),
            ) => n.clone(),
            _ => {
                return Err(plan_error(
                    "the first argument must be the model name as a string literal".into(),
                ));
            }
        };
        for (i, feature) in features.iter().enumerate() {
            let data_type = feature.data_type();
            if !(data_type.is_numeric() || data_type == DataType::Null) {
                return Err(plan_error(format!(
                    "model `{name}`: feature {} is of type {data_type}, not a number",
                    i + 1
                )));
            }
        }
        let rows = args.number_rows;
        let columns = features
            .iter()
            .map(|f| {
                let array = f.to_array(rows)?;
                Ok(arrow::compute::cast(&array, &DataType::Float64)?)
            })
            .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
        let columns: Vec<&Float64Array> = columns
            .iter()
            .filter_map(|c| c.as_any().downcast_ref::<Float64Array>())
            .collect();
        let table = self
            .table
            .read()
            .map_err(|_| plan_error("model table lock poisoned".into()))?;
        let model = table
            .get(&name)
            .ok_or_else(|| plan_error(format!("no model named `{name}`")))?;
        let takes = match model {
            ModelState::File { model } => Some(model.features()),
            ModelState::Onnx { model } => Some(model.features()),
            _ => None,
        };
        if let Some(takes) = takes
            && takes != columns.len()
        {
            return Err(plan_error(format!(
                "model `{name}` takes {takes} features, got {}",
                columns.len()
            )));
        }
        if let (ModelFunction::Predict, ModelState::Onnx { model }) = (self.kind, model) {
            return onnx_scores(model, &columns, rows)
                .map(|scores| ColumnarValue::Array(Arc::new(scores)))
                .map_err(|e| plan_error(format!("model `{name}`: {e}")));
        }
        let mut point = vec![0.0; columns.len()];
        let mut floats = Float64Builder::with_capacity(rows);
        let mut ints = Int64Builder::with_capacity(rows);
        for i in 0..rows {
            if columns.iter().any(|c| c.is_null(i)) {
                floats.append_null();
                ints.append_null();
                continue;
            }
            for (p, c) in point.iter_mut().zip(&columns) {
                *p = c.value(i);
            }
            match (self.kind, model) {
                (ModelFunction::Predict, ModelState::File { model }) => {
                    floats.append_value(model.score(&point))
                }
                (ModelFunction::Predict, ModelState::Regression { state }) => {
                    floats.append_value(state.predict(&point))
                }
                (ModelFunction::KMeansCluster, ModelState::KMeans { state }) => {
                    ints.append_value(state.nearest(&point).0 as i64)
                }
                (ModelFunction::KMeansDistance, ModelState::KMeans { state }) => {
                    floats.append_value(state.nearest(&point).1.sqrt())
                }
                _ => {
                    return Err(plan_error(format!(
                        "model `{name}` is not of a kind this function uses"
                    )));
                }
            }
        }
        Ok(ColumnarValue::Array(match self.kind {
            ModelFunction::KMeansCluster => Arc::new(ints.finish()),
            _ => Arc::new(floats.finish()),
        }))
    }
}

/// Scores the rows of `columns` with one run of `model` over the rows without a null feature
/// (a `[rows, features]` tensor); rows with a null feature score null.
fn onnx_scores(
    model: &OnnxModel,
    columns: &[&Float64Array],
    rows: usize,
) -> std::result::Result<Float64Array, String> {
    let complete: Vec<bool> = (0..rows)
        .map(|i| columns.iter().all(|c| !c.is_null(i)))
        .collect();
    let n = complete.iter().filter(|c| **c).count();
    let mut values = Vec::with_capacity(n * columns.len());
    for (i, _) in complete.iter().enumerate().filter(|(_, ok)| **ok) {
        values.extend(columns.iter().map(|c| c.value(i)));
    }
    let mut scores = model.score(n, &values)?.into_iter();
    Ok(complete
        .iter()
        .map(|c| if *c { scores.next() } else { None })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_logistic_scores_are_exact() {
        let linear = FileModel::Linear {
            coefficients: vec![2.0, -0.5],
            intercept: 1.0,
        };
        assert_eq!(linear.score(&[3.0, 4.0]), 2.0 * 3.0 - 0.5 * 4.0 + 1.0);
        let logistic = FileModel::Logistic {
            coefficients: vec![1.0],
            intercept: -1.0,
        };
        assert_eq!(logistic.score(&[1.0]), 0.5);
        let parsed: FileModel =
            serde_json::from_str(r#"{"type":"linear","coefficients":[2.0,-0.5],"intercept":1.0}"#)
                .expect("json");
        assert_eq!(parsed, linear);
    }
}
