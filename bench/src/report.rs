//! The side-by-side result table: what was measured for each engine, printed and saved as JSON (the
//! PNG chart is drawn from that JSON by `bench/plot.py`).

use serde::Serialize;

/// Units of a metric; they decide formatting and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Unit {
    /// Rows per second (higher is better).
    #[serde(rename = "rows/s")]
    RowsPerSecond,
    /// Milliseconds (lower is better).
    #[serde(rename = "ms")]
    Millis,
    /// Bytes (lower is better).
    #[serde(rename = "bytes")]
    Bytes,
}

impl Unit {
    pub fn higher_is_better(self) -> bool {
        matches!(self, Self::RowsPerSecond)
    }

    /// `3.12M rows/s`, `45 ms`, `412 MiB`.
    pub fn format(self, value: f64) -> String {
        match self {
            Self::RowsPerSecond if value >= 1e6 => format!("{:.2}M rows/s", value / 1e6),
            Self::RowsPerSecond => format!("{:.0}k rows/s", value / 1e3),
            Self::Millis if value >= 10_000.0 => format!("{:.1} s", value / 1000.0),
            Self::Millis => format!("{value:.0} ms"),
            Self::Bytes if value >= 1024.0 * 1024.0 * 1024.0 => {
                format!("{:.2} GiB", value / (1024.0 * 1024.0 * 1024.0))
            }
            Self::Bytes => format!("{:.0} MiB", value / (1024.0 * 1024.0)),
        }
    }
}

/// One engine's figure: a measured value, or why there is none.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cell {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Why there is no value (`unsupported in this build`, `pyspark not installed`, ...) or a
    /// qualifier of the value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Cell {
    pub fn value(value: f64) -> Self {
        Self {
            value: Some(value),
            note: None,
        }
    }

    pub fn missing(note: impl Into<String>) -> Self {
        Self {
            value: None,
            note: Some(note.into()),
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.note = Some(note.into());
        self
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// `1 json → filter → parquet`, ...
    pub scenario: String,
    /// `throughput`, `peak RSS`, ...
    pub metric: String,
    pub unit: Unit,
    pub sluice: Cell,
    pub spark: Cell,
}

impl Row {
    /// How many times better Sluice is: Sluice/Spark for rows/s, Spark/Sluice for time and memory,
    /// so above 1 always means Sluice wins.
    pub fn advantage(&self) -> Option<f64> {
        let (sluice, spark) = (self.sluice.value?, self.spark.value?);
        if sluice <= 0.0 || spark <= 0.0 {
            return None;
        }
        Some(if self.unit.higher_is_better() {
            sluice / spark
        } else {
            spark / sluice
        })
    }
}

/// The whole run, as saved to JSON.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// RFC 3339 UTC of the run.
    pub date: String,
    /// `nproc`, CPU model, memory, kernel.
    pub machine: String,
    pub data_set: String,
    pub sluice_version: String,
    pub spark_version: Option<String>,
    pub rows: Vec<Row>,
    /// Extra facts (settings, caveats) printed under the table.
    pub notes: Vec<String>,
}

#[derive(Serialize)]
struct RowJson<'a> {
    #[serde(flatten)]
    row: &'a Row,
    /// Sluice/Spark (rows/s) or Spark/Sluice (ms, bytes): above 1 means Sluice wins.
    advantage: Option<f64>,
}

impl Report {
    /// JSON with each row's `advantage` included.
    pub fn to_json(&self) -> serde_json::Value {
        let rows: Vec<RowJson<'_>> = self
            .rows
            .iter()
            .map(|row| RowJson {
                row,
                advantage: row.advantage(),
            })
            .collect();
        serde_json::json!({
            "date": self.date,
            "machine": self.machine,
            "dataSet": self.data_set,
            "sluiceVersion": self.sluice_version,
            "sparkVersion": self.spark_version,
            "rows": rows,
            "notes": self.notes,
        })
    }

    /// The table as text, one line per row.
    pub fn table(&self) -> String {
        let cell = |row: &Row, cell: &Cell| match (cell.value, &cell.note) {
            (Some(v), None) => row.unit.format(v),
            (Some(v), Some(note)) => format!("{} ({note})", row.unit.format(v)),
            (None, Some(note)) => note.clone(),
            (None, None) => "-".into(),
        };
        let lines: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|row| {
                [
                    row.scenario.clone(),
                    row.metric.clone(),
                    cell(row, &row.sluice),
                    cell(row, &row.spark),
                    row.advantage()
                        .map(|a| format!("{a:.1}x"))
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        let header = [
            "scenario".to_string(),
            "metric".into(),
            "Sluice".into(),
            format!(
                "Spark {}",
                self.spark_version.as_deref().unwrap_or("").trim()
            )
            .trim()
            .to_string(),
            "Sluice advantage".into(),
        ];
        let mut widths = header.clone().map(|h| h.chars().count());
        for line in &lines {
            for (w, c) in widths.iter_mut().zip(line) {
                *w = (*w).max(c.chars().count());
            }
        }
        let render = |cols: &[String; 5]| {
            cols.iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_string()
        };
        let mut out = vec![
            render(&header),
            widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("  "),
        ];
        out.extend(lines.iter().map(render));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(unit: Unit, sluice: Cell, spark: Cell) -> Row {
        Row {
            scenario: "1 filter".into(),
            metric: "throughput".into(),
            unit,
            sluice,
            spark,
        }
    }

    #[test]
    fn advantage_is_above_one_when_sluice_wins_either_way() {
        let fast = row(Unit::RowsPerSecond, Cell::value(4e6), Cell::value(0.5e6));
        assert_eq!(fast.advantage(), Some(8.0));
        let small = row(Unit::Bytes, Cell::value(100.0), Cell::value(1000.0));
        assert_eq!(small.advantage(), Some(10.0));
        let missing = row(
            Unit::Millis,
            Cell::missing("unsupported in this build"),
            Cell::value(3.0),
        );
        assert_eq!(missing.advantage(), None);
    }

    #[test]
    fn table_shows_values_notes_and_ratios() {
        let report = Report {
            date: "2026-11-21T00:00:00Z".into(),
            machine: "2 cores".into(),
            data_set: "10 x 1000000".into(),
            sluice_version: "0.1.0".into(),
            spark_version: Some("4.3.0".into()),
            rows: vec![
                row(
                    Unit::RowsPerSecond,
                    Cell::value(3_120_000.0),
                    Cell::value(390_000.0),
                ),
                row(
                    Unit::RowsPerSecond,
                    Cell::missing("unsupported in this build"),
                    Cell::value(200_000.0),
                ),
            ],
            notes: vec![],
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].contains("Spark 4.3.0"), "{table}");
        assert!(lines[2].contains("3.12M rows/s") && lines[2].contains("390k rows/s"));
        assert!(lines[2].ends_with("8.0x"), "{table}");
        assert!(lines[3].contains("unsupported in this build") && lines[3].ends_with('-'));
        let json = report.to_json();
        assert_eq!(json["rows"][0]["advantage"], 8.0);
        assert_eq!(
            json["rows"][1]["sluice"]["note"],
            "unsupported in this build"
        );
        assert_eq!(json["rows"][0]["unit"], "rows/s");
    }
}
