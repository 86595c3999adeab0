//! Wires the scheduler together and serves it: store, executor client, engine, and the
//! gRPC services (scheduler, health, reflection v1 and v1alpha) on a bound listener.

use std::future::Future;
use std::sync::Arc;

use almanac_proto::scheduler::v1::scheduler_service_server::SchedulerServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::Config;
use crate::engine::Engine;
use crate::engine::clock::{Clock, DatabaseClock, SystemClock};
use crate::grpc::executor_client::GrpcExecutorClient;
use crate::grpc::service::SchedulerApi;
use crate::store::{Location, StoreError};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the store")]
    Store(#[from] StoreError),
    #[error("unsupported database url scheme {scheme:?}: use postgres:// or postgresql://")]
    DatabaseScheme { scheme: String },
    #[error("bad executor endpoint {endpoint:?}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: crate::grpc::balance::EndpointError,
    },
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the scheduler on `listener` until `shutdown` resolves, on the production clock:
/// the database's where replicas share one (PostgreSQL), else the system's.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve(config, None, listener, shutdown).await
}

/// Serves the scheduler with an injected clock (tests drive time by hand).
pub async fn run_with_clock(
    config: Config,
    clock: Arc<dyn Clock>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve(config, Some(clock), listener, shutdown).await
}

async fn serve(
    config: Config,
    clock: Option<Arc<dyn Clock>>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let location = Location::choose(config.database_url.as_deref(), &config.database_path)
        .map_err(|scheme| ServerError::DatabaseScheme { scheme })?;
    let store = location.open(config.synchronous_full).await?;
    let background = CancellationToken::new();
    let clock: Arc<dyn Clock> = match clock {
        Some(clock) => clock,
        None => match DatabaseClock::start(store.clone(), background.clone()).await? {
            Some(clock) => clock,
            None => Arc::new(SystemClock),
        },
    };
    let client = GrpcExecutorClient::connect_lazy(&config.executor_endpoint).map_err(|source| {
        ServerError::Endpoint {
            endpoint: config.executor_endpoint.clone(),
            source,
        }
    })?;
    let engine = Engine::new(store, clock, Arc::new(client), config.engine.clone());
    engine.start(background.clone()).await?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<SchedulerServiceServer<SchedulerApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(almanac_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // The descriptor set holds both services' protos: list only what is served.
            .with_service_name("almanac.scheduler.v1.SchedulerService")
            .with_service_name("grpc.health.v1.Health")
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    tracing::info!(address = ?listener.local_addr().ok(), executor = %config.executor_endpoint,
        database = %location.describe(), replica = %config.engine.replica_id, "scheduler serving");
    let served = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(SchedulerServiceServer::new(SchedulerApi::new(
            engine.clone(),
        )))
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await;
    tracing::info!("scheduler stopping: no new fires; waiting for dispatches and ledger writes");
    background.cancel();
    engine.stopped(config.shutdown_grace).await;
    tracing::info!("scheduler stopped");
    served.map_err(ServerError::from)
}

/// The accepted connections, with `TCP_NODELAY`: without it a response written in
/// pieces (every streamed event) waits for the peer's delayed ACK, ~40 ms on Linux.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
