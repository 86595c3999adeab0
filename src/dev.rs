//! `almanac dev`: the scheduler and the executor in one process, on loopback, talking real
//! gRPC to each other, with their SQLite files in one data folder. Both listeners are
//! bound first (so port 0 works and the scheduler learns the executor's real address);
//! one cancellation token stops both on SIGINT/SIGTERM.

use std::time::Duration;

use almanac_executor::config::Config as ExecutorConfig;
use almanac_scheduler::config::Config as SchedulerConfig;
use almanac_scheduler::telemetry;
use anyhow::{Context, anyhow};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::cli::DevArgs;
use crate::error::CliError;

/// How long the services get to report SERVING after they are spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long both get to stop after the signal (each has its own, shorter, grace).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs both services until SIGINT/SIGTERM, then stops them gracefully.
pub async fn run(args: DevArgs) -> Result<(), CliError> {
    telemetry::init(args.log_format);
    let data = &args.data_dir;
    std::fs::create_dir_all(data)
        .with_context(|| format!("cannot create the data folder {}", data.display()))?;

    let executor_listener = bind(args.executor_listen, "executor").await?;
    let scheduler_listener = bind(args.scheduler_listen, "scheduler").await?;
    let executor_url = format!("http://{}", local_addr(&executor_listener)?);
    let scheduler_url = format!("http://{}", local_addr(&scheduler_listener)?);

    // One token stops both; a service that ends on its own cancels it too, so the other
    // one never keeps running alone.
    let stop = CancellationToken::new();
    let mut executor_config = ExecutorConfig::new(data.join("executor.db"));
    executor_config.actions =
        almanac_executor::config::ActionsConfig::load(args.executor_config.as_deref())
            .map_err(|e| anyhow::Error::new(e).context("the executor's configuration"))?;
    // Development targets live on this machine: the egress guard lets loopback through.
    executor_config.actions.allow_loopback();
    tracing::warn!("dev mode: the egress guard allows loopback (127.0.0.0/8, ::1)");
    let executor = spawn_service(
        "executor",
        &stop,
        almanac_executor::server::run(
            executor_config,
            executor_listener,
            stop.clone().cancelled_owned(),
        ),
    );
    let scheduler = spawn_service(
        "scheduler",
        &stop,
        almanac_scheduler::server::run(
            SchedulerConfig::new(data.join("scheduler.db"), executor_url.clone()),
            scheduler_listener,
            stop.clone().cancelled_owned(),
        ),
    );

    let ready = async {
        wait_serving(&executor_url, "almanac.executor.v1.ExecutorService").await;
        wait_serving(&scheduler_url, "almanac.scheduler.v1.SchedulerService").await;
    };
    let mut problem = tokio::select! {
        ready = tokio::time::timeout(READY_TIMEOUT, ready) => ready.err().map(|_| {
            anyhow!("the services did not report SERVING within {READY_TIMEOUT:?}")
        }),
        () = stop.cancelled() => Some(anyhow!("a service stopped while starting")),
    };
    if problem.is_none() {
        // Serving goes on even if nobody reads stdout any more.
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "scheduler  {scheduler_url}");
        let _ = writeln!(stdout, "executor   {executor_url}");
        let _ = writeln!(stdout, "data       {}", data.display());
        let _ = writeln!(
            stdout,
            "egress     loopback allowed (dev mode); other private networks refused"
        );
        let _ = stdout.flush();
        drop(stdout);
        tokio::select! {
            () = telemetry::shutdown_signal() => {}
            () = stop.cancelled() => problem = Some(anyhow!("a service stopped unexpectedly")),
        }
    }
    stop.cancel();

    let (executor, scheduler) =
        tokio::time::timeout(STOP_TIMEOUT, async { tokio::join!(executor, scheduler) })
            .await
            .map_err(|_| anyhow!("the services did not stop within {STOP_TIMEOUT:?}"))?;
    // A service's own error says more than "stopped unexpectedly".
    outcome("executor", executor)?;
    outcome("scheduler", scheduler)?;
    match problem {
        Some(problem) => Err(problem.into()),
        None => Ok(()),
    }
}

/// Spawns a service; when it ends, for whatever reason, it cancels `stop`.
fn spawn_service<E>(
    service: &'static str,
    stop: &CancellationToken,
    serve: impl Future<Output = Result<(), E>> + Send + 'static,
) -> JoinHandle<Result<(), E>>
where
    E: Send + 'static,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let result = serve.await;
        if !stop.is_cancelled() {
            tracing::error!(service, "service ended before shutdown was requested");
            stop.cancel();
        }
        result
    })
}

async fn bind(addr: std::net::SocketAddr, service: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {service}"))
}

fn local_addr(listener: &TcpListener) -> anyhow::Result<std::net::SocketAddr> {
    listener.local_addr().context("cannot read a bound address")
}

/// The result of a finished service task.
fn outcome<E>(
    service: &str,
    ended: Result<Result<(), E>, tokio::task::JoinError>,
) -> anyhow::Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("the {service} failed"))),
        Err(e) => Err(anyhow::Error::new(e).context(format!("the {service} task panicked"))),
    }
}

/// Polls `service`'s gRPC health at `url` until it answers SERVING (the caller bounds it).
async fn wait_serving(url: &str, service: &str) {
    let Ok(endpoint) = Endpoint::from_shared(url.to_owned()) else {
        // `url` is built from a bound socket address, so this cannot happen; the caller's
        // deadline reports it if it ever does.
        return std::future::pending().await;
    };
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(1));
    loop {
        if let Ok(channel) = endpoint.connect().await {
            let mut health = HealthClient::new(channel);
            let request = HealthCheckRequest {
                service: service.to_owned(),
            };
            if let Ok(response) = health.check(request).await
                && response.into_inner().status() == ServingStatus::Serving
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
