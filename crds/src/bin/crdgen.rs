//! Writes the `StreamingQuery` CRD to `charts/sluice/crds/streamingqueries.sluice.dev.yaml`.
//!
//! Usage: `cargo run -p sluice-crds --bin crdgen [-- --stdout | PATH]`. Without arguments the file in
//! the chart is rewritten (run from anywhere: the path is resolved from this crate's directory).

use std::path::PathBuf;

use sluice_crds::crd::{CRD_CHART_PATH, crd_yaml};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = crd_yaml()?;
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        Some("--stdout") => print!("{yaml}"),
        Some(path) => std::fs::write(path, yaml)?,
        None => {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(CRD_CHART_PATH);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&path, yaml)?;
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(())
}
