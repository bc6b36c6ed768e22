//! `sluice-operator kubernetes [--namespace NS] [--default-checkpoint-location URL] [--metrics-port N]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_operator::checkpoint::{CheckpointManager, StoreConfig};
use sluice_operator::controller::{self, Context};
use sluice_operator::leader::LeaderElector;
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::OperatorConfig;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-operator",
    version,
    about = "Runs StreamingQuery resources as Sluice workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Reconcile StreamingQuery resources in a Kubernetes cluster.
    Kubernetes(KubernetesArgs),
}

#[derive(clap::Args, Debug)]
struct KubernetesArgs {
    /// Watch only this namespace (namespaced RBAC); all namespaces when unset.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Checkpoint base URL for queries without `spec.checkpoint.location` (e.g. `s3://checkpoints/`).
    #[arg(long, env = "SLUICE_DEFAULT_CHECKPOINT_LOCATION")]
    default_checkpoint_location: Option<String>,
    /// Worker image for queries without `spec.image`.
    #[arg(
        long,
        env = "SLUICE_WORKER_IMAGE",
        default_value = "ghcr.io/sluice/sluice-worker:latest"
    )]
    worker_image: String,
    /// Port of the operator's `/metrics` and `/healthz`.
    #[arg(long, env = "SLUICE_METRICS_PORT", default_value_t = 8080)]
    metrics_port: u16,
    /// Elect a leader with a Lease (run several replicas safely).
    #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease.
    #[arg(long, default_value = "sluice-operator-leader")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Kubernetes(args) => run_kubernetes(args).await,
    }
}

async fn run_kubernetes(args: KubernetesArgs) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let metrics = Metrics::default();
    let address = SocketAddr::from(([0, 0, 0, 0], args.metrics_port));
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("binding {address}"))?;
    let router = metrics.router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let config = OperatorConfig {
        default_image: args.worker_image,
        default_checkpoint_location: args.default_checkpoint_location,
        ..OperatorConfig::default()
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        CheckpointManager::new(StoreConfig::from_env()),
        config,
        metrics,
    ));

    if !args.leader_election {
        controller::run(ctx, args.namespace).await;
        return Ok(());
    }
    let identity = args
        .identity
        .unwrap_or_else(|| format!("sluice-operator-{}", uuid::Uuid::new_v4()));
    let lease_duration = Duration::from_secs(15);
    let elector = LeaderElector::new(
        client,
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        lease_duration,
    );
    tracing::info!(%identity, lease = %args.lease_name, "waiting for leadership");
    elector.acquire(Duration::from_secs(2)).await;
    tracing::info!(%identity, "leading");
    tokio::select! {
        () = controller::run(ctx, args.namespace) => Ok(()),
        () = elector.hold(Duration::from_secs(5)) => {
            // Exit so Kubernetes restarts us as a follower; never run two controllers at once.
            anyhow::bail!("lost leadership")
        }
    }
}
