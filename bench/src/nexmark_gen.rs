//! `nexmark-gen`: writes the Nexmark event stream of the `nexmark` source as JSON-lines files
//! (`person.json`, `auction.json`, `bid.json`), so other engines read the identical input.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Generate the Nexmark events of the nexmark source as JSON-lines files")]
struct Args {
    /// Output directory.
    #[arg(long, default_value = "data/nexmark")]
    out: std::path::PathBuf,
    /// Number of events (all three tables), as the source's `maxEvents`.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Event-time spacing, as the source's `eventsPerSecond` (10,000 when the source has none).
    #[arg(long, default_value_t = 10_000)]
    events_per_second: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.events_per_second > 0,
        "--events-per-second must be positive"
    );
    let started = std::time::Instant::now();
    let counts =
        sluice_bench::nexmark::write_files(&args.out, args.events, args.events_per_second)?;
    eprintln!(
        "wrote {} persons, {} auctions, {} bids to {} in {:.1}s",
        counts.persons,
        counts.auctions,
        counts.bids,
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
