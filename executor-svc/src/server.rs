//! Wires the executor together and serves it: opens and migrates the store, reads the
//! database's clock when it is shared (PostgreSQL), kills what commands of a crashed
//! process left running, adopts and resumes what previous processes left running, keeps
//! the leases of its executions, serves `ExecutorService`, `WorkerService`, gRPC health
//! and reflection on the given listener until `shutdown` resolves, then stops taking
//! work, lets the event writes in flight finish (bounded by `SHUTDOWN_GRACE`) and
//! releases its leases.

use std::future::Future;
use std::sync::Arc;

use almanac_proto::executor::v1::executor_service_server::ExecutorServiceServer;
use almanac_proto::executor::v1::pipeline_service_server::PipelineServiceServer;
use almanac_proto::executor::v1::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::actions::run_task::RunTask;
use crate::actions::{ActionEnv, ActionRegistry};
use crate::config::{Config, MIN_LEASE_TTL, SHUTDOWN_GRACE};
use crate::engine::tasks::Workers;
use crate::engine::{Clock, DatabaseClock, Engine, Leasing, SystemClock};
use crate::grpc::{ExecutorGrpc, PipelineGrpc, WorkerGrpc};
use crate::store::{Backend, ExecutorStore};

pub use crate::error::ServerError;

/// Open files the process needs besides its running actions' sockets: the databases,
/// gRPC connections, pipes of `run_task` children, the listener.
const FILES_BESIDES_ACTIONS: u64 = 256;

/// Raises this process's soft limit on open files to its hard limit, as Go's runtime
/// does at start: every running `call_api` may hold a socket, and a soft limit of 1 024
/// (a common default) is below what `max_concurrent_executions` (1 000 by default) of
/// them need. Warns when even the hard limit is too low. Returns the soft limit now in
/// force, if it could be read.
pub fn raise_open_files_limit(max_concurrent_executions: usize) -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .inspect_err(|error| tracing::warn!(%error, "cannot read the open-file limit"))
        .ok()?;
    let soft = if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = hard, "open-file limit raised");
                hard
            }
            Err(error) => {
                tracing::warn!(%error, limit = soft, "cannot raise the open-file limit");
                soft
            }
        }
    } else {
        soft
    };
    let needed = (max_concurrent_executions as u64).saturating_add(FILES_BESIDES_ACTIONS);
    if soft < needed {
        tracing::warn!(
            limit = soft,
            max_concurrent_executions,
            "the open-file limit is below what this many running actions may need: \
             raise it (ulimit -n, LimitNOFILE=) or lower --max-concurrent-executions"
        );
    }
    Some(soft)
}

/// Runs the executor on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    raise_open_files_limit(config.max_concurrent_executions);
    let backend = Backend::from_config(&config)?;
    let store: Arc<dyn ExecutorStore> = backend.clone().open().await?;
    let env = ActionEnv::new(config.actions.clone()).map_err(ServerError::HttpClient)?;
    for net in env.egress.allowed() {
        tracing::info!(network = %net, "egress guard: network allowed by configuration");
    }
    let stop = CancellationToken::new();
    // On a shared database the replicas compare leases on the database's clock.
    let database_clock = match DatabaseClock::open(store.as_ref()).await {
        Ok(clock) => clock,
        Err(e) => {
            store.close().await;
            return Err(ServerError::Resume(e));
        }
    };
    let clock: Arc<dyn Clock> = match &database_clock {
        Some(clock) => Arc::clone(clock) as Arc<dyn Clock>,
        None => Arc::new(SystemClock),
    };
    let leasing = Leasing {
        replica_id: config.replica_id.clone(),
        ttl: config.lease_ttl.max(MIN_LEASE_TTL),
        shared_database: matches!(backend, Backend::Postgres(_)),
    };
    let run_task = RunTask::new(&env, Arc::clone(&store), Arc::clone(&clock), stop.clone());
    if let Err(e) = run_task
        .recover(&leasing.replica_id, clock.now_ms(), leasing.shared_database)
        .await
    {
        store.close().await;
        return Err(ServerError::Resume(e));
    }
    let mut registry = ActionRegistry::standard(&env);
    registry.register(run_task.clone());
    let engine = Engine::new(
        Arc::clone(&store),
        registry,
        clock,
        config.max_concurrent_executions,
        leasing.clone(),
        stop.clone(),
    );
    if let Some(clock) = database_clock {
        engine.spawn_clock_sync(clock);
    }
    engine.spawn_retention(config.retention.max(crate::config::MIN_RETENTION));
    let resumed = match engine.resume().await {
        Ok(n) => n,
        Err(e) => {
            store.close().await;
            return Err(ServerError::Resume(e));
        }
    };
    engine.spawn_lease_keeper();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ExecutorServiceServer<ExecutorGrpc>>()
        .await;
    health
        .set_serving::<WorkerServiceServer<WorkerGrpc>>()
        .await;
    health
        .set_serving::<PipelineServiceServer<PipelineGrpc>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(almanac_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The descriptor set holds both services' protos: list only what is served.
            .with_service_name("almanac.executor.v1.ExecutorService")
            .with_service_name("almanac.executor.v1.WorkerService")
            .with_service_name("almanac.executor.v1.PipelineService")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // The serve loop stops on the caller's signal; the same moment stops the engine's
    // streams and runners, so in-flight streams end and graceful shutdown completes.
    let signal = {
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                () = stop.cancelled() => {}
            }
            tracing::info!("executor shutting down");
            stop.cancel();
            health
                .set_not_serving::<ExecutorServiceServer<ExecutorGrpc>>()
                .await;
            health
                .set_not_serving::<WorkerServiceServer<WorkerGrpc>>()
                .await;
            health
                .set_not_serving::<PipelineServiceServer<PipelineGrpc>>()
                .await;
        }
    };
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(address, resumed, backend = backend.kind(), database = %backend,
        replica_id = %leasing.replica_id, lease_ttl = ?leasing.ttl, "executor serving");
    let served = tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ExecutorServiceServer::new(ExecutorGrpc::new(Arc::clone(
            &engine,
        ))))
        .add_service(PipelineServiceServer::new(PipelineGrpc::new(Arc::clone(
            &engine,
        ))))
        .add_service(WorkerServiceServer::new(WorkerGrpc::new(Workers::new(
            Arc::clone(&engine),
            run_task.queues(),
        ))))
        .serve_with_incoming_shutdown(incoming(listener), signal)
        .await;

    stop.cancel();
    if !engine.shut_down(SHUTDOWN_GRACE).await {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "runners still busy at the end of the shutdown grace");
    }
    // The runners have stopped, so the commands' supervisors are killing their groups.
    if !run_task.shut_down(SHUTDOWN_GRACE).await {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "commands still being stopped at the end of the shutdown grace");
    }
    store.close().await;
    served?;
    tracing::info!("executor stopped");
    Ok(())
}

/// The accepted connections, with `TCP_NODELAY`: without it a response written in
/// pieces (every streamed event) waits for the peer's delayed ACK, ~40 ms on Linux.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};

    use super::*;

    #[test]
    fn the_open_file_soft_limit_is_raised_to_the_hard_limit() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // Start from a low soft limit (nextest runs each test in its own process).
        let low = hard.min(512);
        setrlimit(Resource::RLIMIT_NOFILE, low, hard).unwrap();
        let raised = raise_open_files_limit(1000);
        let (now, _) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, soft.max(now), hard).unwrap();
        assert_eq!(raised, Some(hard));
        assert_eq!(now, hard);
    }
}
