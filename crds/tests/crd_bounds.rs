//! The generated CRD must be accepted by a real apiserver: every list, map and string bounded,
//! only formats Kubernetes knows, no unknown fields preserved, and every CEL rule's estimated
//! worst-case cost within the apiserver's budgets.
//!
//! # The cost model
//!
//! The apiserver (`apiextensions-apiserver`, `ValidateCustomResourceDefinition`) estimates, for
//! every `x-kubernetes-validations` rule, `MaxCost × MaxCardinality` and refuses the CRD when
//!
//! * one rule's product exceeds `StaticEstimatedCostLimit` (10,000,000), or
//! * the sum over all rules exceeds `StaticEstimatedCRDCostLimit` (100,000,000).
//!
//! At run time one evaluation may cost at most `PerCallLimit` (1,000,000); this test also keeps
//! each rule's `MaxCost` under it.
//!
//! `MaxCardinality` is how often the rule can run for one object: the product of the `maxItems` /
//! `maxProperties` of every list and map above the rule's node. When one of them is unbounded the
//! apiserver falls back to how many copies of the node fit into a request:
//! `3 MiB / (minimum serialized size of the node + 1)` (a string's minimum is `""`, 2 bytes; an
//! object's is `{}` plus its required fields without defaults).
//!
//! `MaxCost` follows cel-go's static estimator with the sizes the apiserver derives from the
//! schema: a string with `maxLength: n` may hold `4n` bytes (a code point is up to 4 bytes), a
//! string without it the whole request; a list holds `maxItems` items (else what fits in a
//! request). Per operation: a field selection, identifier, `has()`, comparison or arithmetic
//! costs 1; a string equality or `startsWith`/`endsWith` costs `⌈0.1 × size⌉` more (traversal);
//! `matches` costs `⌈0.1 × string size⌉ × ⌈0.25 × regex length⌉`; a comprehension costs its
//! range's size times its step; a list literal 10, a map literal 30. Both branches of `&&`, `||`
//! and `?:` are counted (cel-go counts the larger one for `?:`), so the estimate is an upper bound
//! of cel-go's. A function the model does not know fails the test: extend the model first.

use std::path::{Path, PathBuf};

use cel::common::ast::{CallExpr, Expr, LiteralValue};
use serde_json::Value;
use sluice_crds::crd::crd;

/// `StaticEstimatedCostLimit`: the most one rule (cost × cardinality) may cost.
const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// `StaticEstimatedCRDCostLimit`: the most all rules of a CRD may cost together.
const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// `PerCallLimit`: the most one evaluation of a rule may cost at run time.
const PER_CALL_LIMIT: u64 = 1_000_000;
/// `DefaultMaxRequestSizeBytes` of the apiserver (3 MiB).
const MAX_REQUEST_SIZE_BYTES: u64 = 3 * 1024 * 1024;
/// Formats the apiserver recognizes (`k8s.io/kube-openapi` strfmt plus the numeric ones);
/// anything else is warned about and ignored.
const KNOWN_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "binary",
    "date",
    "date-time",
    "datetime",
    "duration",
    "password",
    "uri",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "cidr",
    "mac",
    "uuid",
    "uuid3",
    "uuid4",
    "uuid5",
];

fn schema() -> Value {
    let crd = serde_json::to_value(crd().expect("CRD")).expect("json");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

fn is_string(node: &Value) -> bool {
    node["type"] == "string" || node["x-kubernetes-int-or-string"] == true
}

fn is_map(node: &Value) -> bool {
    node["type"] == "object" && node.get("additionalProperties").is_some()
}

/// Every problem a real apiserver would have with the schema's shape, as `path: problem`.
fn shape_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    if is_string(node) && node.get("maxLength").is_none() && node.get("enum").is_none() {
        out.push(format!("{path}: string without maxLength"));
    }
    if node["type"] == "array" && node.get("maxItems").is_none() {
        out.push(format!("{path}: list without maxItems"));
    }
    if is_map(node) && node.get("maxProperties").is_none() {
        out.push(format!("{path}: map without maxProperties"));
    }
    if let Some(format) = node["format"].as_str()
        && !KNOWN_FORMATS.contains(&format)
    {
        out.push(format!("{path}: format `{format}` unknown to Kubernetes"));
    }
    if node["x-kubernetes-preserve-unknown-fields"] == true {
        out.push(format!(
            "{path}: preserves unknown fields (a typo would pass)"
        ));
    }
    if let Some(items) = node.get("items") {
        shape_problems(items, &format!("{path}[*]"), out);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        shape_problems(values, &format!("{path}{{*}}"), out);
    }
    if let Some(properties) = node["properties"].as_object() {
        for (name, property) in properties {
            shape_problems(property, &format!("{path}.{name}"), out);
        }
    }
}

#[test]
fn every_list_map_and_string_is_bounded_and_formats_are_known() {
    let mut problems = Vec::new();
    shape_problems(&schema(), "", &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The minimum serialized size of a value of `node` (apiserver's `MinSerializedSize`).
fn min_size(node: &Value) -> u64 {
    if node["x-kubernetes-int-or-string"] == true {
        return 1;
    }
    match node["type"].as_str() {
        Some("boolean") => 4,
        Some("number" | "integer") => 1,
        Some("string") => 2,
        Some("array") => 2,
        Some("object") => {
            let required: Vec<&str> = node["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let mut size = 2;
            if let Some(properties) = node["properties"].as_object() {
                for (name, property) in properties {
                    if required.contains(&name.as_str()) && property.get("default").is_none() {
                        size += name.len() as u64 + min_size(property) + 4;
                    }
                }
            }
            size
        }
        _ => 1,
    }
}

/// The largest size (string bytes, list items, map entries) a value of `node` may have.
fn max_size(node: &Value) -> u64 {
    if is_string(node) {
        if let Some(length) = node["maxLength"].as_u64() {
            return length * 4;
        }
        if let Some(values) = node["enum"].as_array() {
            return values
                .iter()
                .filter_map(Value::as_str)
                .map(|v| v.len() as u64)
                .max()
                .unwrap_or(0);
        }
        return MAX_REQUEST_SIZE_BYTES - 2;
    }
    match node["type"].as_str() {
        Some("array") => node["maxItems"]
            .as_u64()
            .unwrap_or_else(|| (MAX_REQUEST_SIZE_BYTES - 2) / (min_size(&node["items"]) + 1)),
        Some("object") if is_map(node) => node["maxProperties"].as_u64().unwrap_or_else(|| {
            (MAX_REQUEST_SIZE_BYTES - 2) / (min_size(&node["additionalProperties"]) + 6)
        }),
        _ => 1,
    }
}

/// What an expression evaluates to, as far as sizes go.
#[derive(Clone, Copy)]
enum Ty<'a> {
    /// A value described by this schema node.
    Schema(&'a Value),
    /// A string (or list) of at most this size.
    Sized(u64),
    /// A scalar.
    Scalar,
}

impl Ty<'_> {
    fn size(self) -> u64 {
        match self {
            Ty::Schema(node) => max_size(node),
            Ty::Sized(size) => size,
            Ty::Scalar => 1,
        }
    }
}

fn traversal(size: u64) -> u64 {
    size.div_ceil(10)
}

struct Estimator<'a> {
    /// Variables in scope: `self`, `oldSelf`, comprehension variables.
    scope: Vec<(String, Ty<'a>)>,
}

impl<'a> Estimator<'a> {
    fn lookup(&self, name: &str) -> Ty<'a> {
        self.scope
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, ty)| *ty)
            .unwrap_or_else(|| panic!("unknown identifier `{name}` in a rule"))
    }

    fn cost(&mut self, expr: &Expr) -> (u64, Ty<'a>) {
        match expr {
            Expr::Literal(LiteralValue::String(text)) => (0, Ty::Sized(text.inner().len() as u64)),
            Expr::Literal(_) => (0, Ty::Scalar),
            Expr::Ident(name) => (1, self.lookup(name)),
            Expr::Select(select) => {
                let (cost, operand) = self.cost(&select.operand.expr);
                let ty = match operand {
                    Ty::Schema(node) => node["properties"]
                        .get(&select.field)
                        .or_else(|| node.get("additionalProperties"))
                        .map_or(Ty::Scalar, Ty::Schema),
                    _ => Ty::Scalar,
                };
                if select.test {
                    (cost + 1, Ty::Scalar)
                } else {
                    (cost + 1, ty)
                }
            }
            Expr::Call(call) => self.call(call),
            Expr::Comprehension(comprehension) => {
                let (range_cost, range) = self.cost(&comprehension.iter_range.expr);
                let element = match range {
                    Ty::Schema(node) if node["type"] == "array" => Ty::Schema(&node["items"]),
                    // Map comprehensions iterate over the keys (strings).
                    Ty::Schema(node) if is_map(node) => Ty::Sized(MAX_REQUEST_SIZE_BYTES - 2),
                    _ => Ty::Scalar,
                };
                let (init, _) = self.cost(&comprehension.accu_init.expr);
                self.scope.push((comprehension.iter_var.clone(), element));
                self.scope
                    .push((comprehension.accu_var.clone(), Ty::Scalar));
                let (condition, _) = self.cost(&comprehension.loop_cond.expr);
                let (step, _) = self.cost(&comprehension.loop_step.expr);
                let (result, _) = self.cost(&comprehension.result.expr);
                self.scope.pop();
                self.scope.pop();
                (
                    range_cost + init + range.size() * (condition + step) + result,
                    Ty::Scalar,
                )
            }
            Expr::List(list) => {
                let mut cost = 10;
                for element in &list.elements {
                    cost += self.cost(&element.expr).0;
                }
                (cost, Ty::Sized(list.elements.len() as u64))
            }
            Expr::Map(map) => (30 + 30 * map.entries.len() as u64, Ty::Scalar),
            other => panic!("the cost model does not know {other:?}; extend it"),
        }
    }

    fn call(&mut self, call: &CallExpr) -> (u64, Ty<'a>) {
        let target = call.target.as_ref().map(|t| self.cost(&t.expr));
        let args: Vec<(u64, Ty<'a>)> = call.args.iter().map(|a| self.cost(&a.expr)).collect();
        let operands: u64 = target.iter().chain(args.iter()).map(|(c, _)| c).sum();
        let arg_size = |i: usize| args.get(i).map_or(1, |(_, ty)| ty.size());
        let target_size = target.map_or(1, |(_, ty)| ty.size());
        let (own, ty) = match call.func_name.as_str() {
            "_&&_" | "_||_" | "_?_:_" | "!_" | "@not_strictly_false" => (0, Ty::Scalar),
            "_<_" | "_<=_" | "_>_" | "_>=_" | "_%_" | "_/_" | "_*_" | "-_" | "size" | "has"
            | "int" | "double" | "uint" => (1, Ty::Scalar),
            "_-_" => (1, Ty::Scalar),
            "_+_" => {
                let size = arg_size(0) + arg_size(1);
                (1 + traversal(size), Ty::Sized(size))
            }
            "_==_" | "_!=_" => (1 + traversal(arg_size(0).max(arg_size(1))), Ty::Scalar),
            "_[_]" => (
                1,
                match args.first() {
                    Some((_, Ty::Schema(node))) if node["type"] == "array" => {
                        Ty::Schema(&node["items"])
                    }
                    Some((_, Ty::Schema(node))) if is_map(node) => {
                        Ty::Schema(&node["additionalProperties"])
                    }
                    _ => Ty::Scalar,
                },
            ),
            "@in" => (1 + arg_size(1), Ty::Scalar),
            "matches" => (
                1 + traversal(target_size) * arg_size(0).div_ceil(4),
                Ty::Scalar,
            ),
            "startsWith" | "endsWith" => (1 + traversal(arg_size(0)), Ty::Scalar),
            "contains" => (
                1 + traversal(target_size) * traversal(arg_size(0)),
                Ty::Scalar,
            ),
            other => panic!("the cost model does not know function `{other}`; extend it"),
        };
        (operands + own, ty)
    }
}

/// One rule with its estimated cost per evaluation and how often it may run.
#[derive(Debug)]
struct RuleCost {
    path: String,
    rule: String,
    max_cost: u64,
    cardinality: u64,
}

impl RuleCost {
    fn total(&self) -> u64 {
        self.max_cost.saturating_mul(self.cardinality)
    }
}

fn estimate(rule: &str, node: &Value) -> u64 {
    let parsed = cel::parser::Parser::new()
        .parse(rule)
        .unwrap_or_else(|e| panic!("rule `{rule}` does not parse: {e}"));
    let mut estimator = Estimator {
        scope: vec![
            ("self".to_string(), Ty::Schema(node)),
            ("oldSelf".to_string(), Ty::Schema(node)),
        ],
    };
    estimator.cost(&parsed.expr).0
}

/// Walks the schema; `cardinality` is `None` under an unbounded list or map.
fn rule_costs(node: &Value, path: &str, cardinality: Option<u64>, out: &mut Vec<RuleCost>) {
    if let Some(rules) = node["x-kubernetes-validations"].as_array() {
        for rule in rules {
            let rule = rule["rule"].as_str().expect("rule text");
            out.push(RuleCost {
                path: path.to_string(),
                rule: rule.to_string(),
                max_cost: estimate(rule, node),
                cardinality: cardinality.unwrap_or(MAX_REQUEST_SIZE_BYTES / (min_size(node) + 1)),
            });
        }
    }
    let factor = |bound: Option<u64>| cardinality.zip(bound).map(|(c, b)| c.saturating_mul(b));
    if let Some(items) = node.get("items") {
        rule_costs(
            items,
            &format!("{path}[*]"),
            factor(node["maxItems"].as_u64()),
            out,
        );
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        rule_costs(
            values,
            &format!("{path}{{*}}"),
            factor(node["maxProperties"].as_u64()),
            out,
        );
    }
    if let Some(properties) = node["properties"].as_object() {
        for (name, property) in properties {
            rule_costs(property, &format!("{path}.{name}"), cardinality, out);
        }
    }
}

fn all_rule_costs(schema: &Value) -> Vec<RuleCost> {
    let mut costs = Vec::new();
    rule_costs(schema, "", Some(1), &mut costs);
    costs
}

/// The apiserver's verdict on the rules of `schema`, as error messages.
fn cost_problems(schema: &Value) -> Vec<String> {
    let costs = all_rule_costs(schema);
    let mut problems = Vec::new();
    for cost in &costs {
        if cost.max_cost > PER_CALL_LIMIT {
            problems.push(format!(
                "{}: `{}` may cost {} per evaluation (PerCallLimit {PER_CALL_LIMIT})",
                cost.path, cost.rule, cost.max_cost
            ));
        }
        if cost.total() > STATIC_ESTIMATED_COST_LIMIT {
            problems.push(format!(
                "{}: `{}` costs {} × {} = {} (StaticEstimatedCostLimit {STATIC_ESTIMATED_COST_LIMIT})",
                cost.path,
                cost.rule,
                cost.max_cost,
                cost.cardinality,
                cost.total()
            ));
        }
    }
    let total = costs
        .iter()
        .fold(0u64, |sum, cost| sum.saturating_add(cost.total()));
    if total > STATIC_ESTIMATED_CRD_COST_LIMIT {
        problems.push(format!(
            "all rules cost {total} (StaticEstimatedCRDCostLimit {STATIC_ESTIMATED_CRD_COST_LIMIT})"
        ));
    }
    problems
}

#[test]
fn every_cel_rule_fits_the_apiserver_cost_budgets() {
    let schema = schema();
    let costs = all_rule_costs(&schema);
    assert!(costs.len() >= 10, "rules found: {costs:#?}");
    let problems = cost_problems(&schema);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The model reproduces what a real apiserver said about the CRD before the bounds: a duration
/// rule under an unbounded list costs more than 100 × the per-rule budget.
#[test]
fn the_cost_model_refuses_a_rule_under_an_unbounded_list() {
    let mut schema = schema();
    let tables = schema
        .pointer_mut("/properties/spec/properties/tables")
        .expect("spec.tables");
    tables.as_object_mut().expect("object").remove("maxItems");
    let problems = cost_problems(&schema);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with(".spec.tables[*].refreshInterval:")
                && p.contains("StaticEstimatedCostLimit")),
        "{problems:#?}"
    );
    let refresh = all_rule_costs(&schema)
        .into_iter()
        .find(|c| c.path == ".spec.tables[*].refreshInterval")
        .expect("the refreshInterval rule");
    assert_eq!(refresh.cardinality, MAX_REQUEST_SIZE_BYTES / 3);
    assert!(
        refresh.total() > 100 * STATIC_ESTIMATED_COST_LIMIT,
        "{refresh:?}"
    );
    assert!(problems.iter().any(|p| p.starts_with("all rules cost")));

    // An unbounded string under a regex is refused on its own too.
    let mut schema = self::schema();
    schema
        .pointer_mut("/properties/spec/properties/trigger/properties/processingTime")
        .and_then(Value::as_object_mut)
        .expect("processingTime")
        .remove("maxLength");
    assert!(
        cost_problems(&schema)
            .iter()
            .any(|p| p.starts_with(".spec.trigger.processingTime:")),
        "{:#?}",
        cost_problems(&schema)
    );
}

#[test]
fn shape_check_finds_unbounded_lists_strings_and_unknown_formats() {
    let node = serde_json::json!({
        "type": "object",
        "properties": {
            "names": {"type": "array", "items": {"type": "string"}},
            "count": {"type": "integer", "format": "uint32"},
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}
        }
    });
    let mut problems = Vec::new();
    shape_problems(&node, "", &mut problems);
    problems.sort();
    assert_eq!(
        problems,
        [
            ".count: format `uint32` unknown to Kubernetes",
            ".labels: map without maxProperties",
            ".names: list without maxItems",
            ".names[*]: string without maxLength",
        ]
    );
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The committed CRD (what `helm install` sends) passes the same checks.
#[test]
fn committed_crd_passes_the_checks() {
    let text = std::fs::read_to_string(workspace_root().join(sluice_crds::crd::CRD_CHART_PATH))
        .expect("committed CRD");
    let crd: Value = serde_saphyr::from_str(&text).expect("yaml");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut problems = Vec::new();
    shape_problems(schema, "", &mut problems);
    problems.extend(cost_problems(schema));
    assert!(problems.is_empty(), "{problems:#?}");
}
