//! `gen-iot`: writes the deterministic IoT JSON-lines data set (see `sluice_bench`).

use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate deterministic IoT events as JSON-lines files")]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "data/iot")]
    out: std::path::PathBuf,
    /// Number of files.
    #[arg(long, default_value_t = 10)]
    files: u64,
    /// Rows per file.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Seed: the same seed gives the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let paths = sluice_bench::write_json_files(&args.out, args.seed, args.files, args.rows)?;
    let high = sluice_bench::events(args.seed, args.files, args.rows)
        .filter(|e| e.danger_level == "HIGH")
        .count();
    eprintln!(
        "wrote {} files x {} rows to {} in {:.1}s ({} rows are HIGH)",
        paths.len(),
        args.rows,
        args.out.display(),
        started.elapsed().as_secs_f64(),
        high
    );
    Ok(())
}
