//! `sluice-operator kubernetes [--namespace NS] [--default-checkpoint-location URL] [--metrics-port N]
//! [--prometheus URL] [--worker-bin PATH]`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sluice_operator::backend::kubernetes::WorkerStorage;
use sluice_operator::backend::kubernetes::check_job::JobCheck;
use sluice_operator::checkpoint::{CheckpointManager, StoreConfig};
use sluice_operator::controller::{self, Context};
use sluice_operator::leader::LeaderElector;
use sluice_operator::metrics::Metrics;
use sluice_operator::plan::OperatorConfig;
use sluice_operator::scaling::{
    MetricsSource, ProgressMetrics, PrometheusMetrics, Scaler, pod_url,
};

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
    /// Run the StreamingQuery manifests of a folder as worker processes on this machine.
    Local(LocalArgs),
}

#[derive(clap::Args, Debug)]
struct LocalArgs {
    /// Folder of StreamingQuery manifests (`*.yaml`); status goes to `<name>.status.yaml`.
    #[arg(long)]
    manifests: std::path::PathBuf,
    /// Prometheus base URL for the autoscaler's metrics; the workers' /progress without it.
    #[arg(long, env = "SLUICE_PROMETHEUS_URL")]
    prometheus: Option<String>,
    /// The sluice-worker binary; default: `sluice-worker` beside this binary, else on PATH.
    #[arg(long, env = "SLUICE_WORKER_BIN")]
    worker_bin: Option<std::path::PathBuf>,
    /// Folder of Prometheus file-SD JSON files to keep the workers' targets in.
    #[arg(long, env = "SLUICE_PROMETHEUS_SD_DIR")]
    sd_dir: Option<std::path::PathBuf>,
    /// Seconds a new generation has to become Ready before it is rolled back.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Window (seconds) of the rates the autoscaler reads.
    #[arg(long, default_value_t = 10)]
    metrics_window: u64,
    /// Serve the operator's /metrics and /healthz on this port (0: off).
    #[arg(long, default_value_t = 0)]
    metrics_port: u16,
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
    /// Prometheus base URL the autoscaler reads worker metrics from (chart value `prometheus.url`);
    /// without it `spec.parallelism.autoscale` makes no decisions.
    #[arg(long, env = "SLUICE_PROMETHEUS_URL")]
    prometheus: Option<String>,
    /// Window (seconds) of the rates the autoscaler reads.
    #[arg(long, default_value_t = 30)]
    metrics_window: u64,
    /// Seconds between reconciles of a Running query, refreshing its rates from `/progress`.
    #[arg(long, default_value_t = 30)]
    status_refresh: u64,
    /// Seconds a restart-type rollout may take to become Ready before it is rolled back to the
    /// last stable spec.
    #[arg(long, env = "SLUICE_READY_TIMEOUT", default_value_t = 300)]
    ready_timeout: u64,
    /// Secret (by name, in each query's namespace) with the object store's `AWS_*` credentials,
    /// given to workers of queries without `spec.storageSecretRef` (chart:
    /// `checkpoint.credentialsSecret`).
    #[arg(long, env = "SLUICE_WORKER_CREDENTIALS_SECRET")]
    worker_credentials_secret: Option<String>,
    /// Object store endpoint given to those workers (chart: `checkpoint.endpoint`).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    worker_s3_endpoint: Option<String>,
    /// Object store region given to those workers (chart: `checkpoint.region`).
    #[arg(long, env = "AWS_REGION")]
    worker_s3_region: Option<String>,
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
        Command::Local(args) => run_local(args).await,
    }
}

async fn run_local(args: LocalArgs) -> anyhow::Result<()> {
    use sluice_operator::backend::local::LocalConfig;
    use sluice_operator::local_operator::LocalOperator;
    let worker_bin = match args.worker_bin {
        Some(path) => path,
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("sluice-worker")))
            .filter(|path| path.exists())
            .unwrap_or_else(|| "sluice-worker".into()),
    };
    anyhow::ensure!(
        args.manifests.is_dir(),
        "--manifests {} is not a folder",
        args.manifests.display()
    );
    let mut config = LocalConfig::new(args.manifests, worker_bin);
    config.prometheus = args.prometheus;
    config.sd_dir = args.sd_dir;
    config.ready_timeout = Duration::from_secs(args.ready_timeout);
    config.metrics_window = Duration::from_secs(args.metrics_window);
    tracing::info!(?config, "local backend starting");
    let operator = LocalOperator::new(config, CheckpointManager::new(StoreConfig::from_env()));
    if args.metrics_port != 0 {
        let address = SocketAddr::from(([127, 0, 0, 1], args.metrics_port));
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let router = operator.metrics().router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "metrics server stopped");
            }
        });
    }
    operator
        .run(async {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
                match term.as_mut() {
                    Ok(term) => {
                        tokio::select! {
                            _ = tokio::signal::ctrl_c() => {}
                            _ = term.recv() => {}
                        }
                    }
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                    }
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            tracing::info!("stopping workers at a batch boundary");
        })
        .await;
    Ok(())
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
        ready_timeout: Duration::from_secs(args.ready_timeout),
        ..OperatorConfig::default()
    };
    let mut ctx = Context::new(
        client.clone(),
        CheckpointManager::new(StoreConfig::from_env()),
        config,
        metrics.clone(),
    );
    let window = Duration::from_secs(args.metrics_window);
    // Without Prometheus the autoscaler reads the workers' own /progress.
    let source: Arc<dyn MetricsSource> = match args.prometheus {
        Some(url) => Arc::new(PrometheusMetrics::new(url, window)),
        None => Arc::new(ProgressMetrics::new(
            Arc::new(|name, namespace, ordinal| pod_url(name, namespace, ordinal, 9464)),
            window,
        )),
    };
    let storage = WorkerStorage {
        credentials_secret: args.worker_credentials_secret.filter(|s| !s.is_empty()),
        endpoint: args.worker_s3_endpoint.filter(|s| !s.is_empty()),
        region: args.worker_s3_region.filter(|s| !s.is_empty()),
    };
    ctx.scaler = Some(Scaler::new(
        Arc::new(JobCheck::new(client.clone(), storage.clone())),
        Some(source),
        metrics,
    ));
    ctx.status_refresh = Duration::from_secs(args.status_refresh.max(1));
    ctx.backend = ctx.backend.clone().with_worker_storage(storage);
    let ctx = Arc::new(ctx);

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
        () = controller::run(ctx, args.namespace) => {
            // Shut down (SIGTERM): hand the lease over now, not after it expires.
            match elector.release().await {
                Ok(true) => tracing::info!(lease = %args.lease_name, "lease released"),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not release the lease"),
            }
            Ok(())
        }
        () = elector.hold(Duration::from_secs(5)) => {
            // Exit so Kubernetes restarts us as a follower; never run two controllers at once.
            anyhow::bail!("lost leadership")
        }
    }
}
