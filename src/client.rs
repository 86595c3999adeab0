//! Connecting to the two services. The connection is made eagerly, so that an unreachable
//! endpoint is reported as such (with the endpoint) rather than as an RPC failure.

use std::time::Duration;

use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of the scheduler at `endpoint`.
pub async fn scheduler(endpoint: &str) -> Result<SchedulerServiceClient<Channel>, CliError> {
    Ok(SchedulerServiceClient::new(
        connect("scheduler", endpoint).await?,
    ))
}

/// A connection to the executor at `endpoint`, for its ExecutorService and its
/// PipelineService alike (they are served together).
pub async fn executor_channel(endpoint: &str) -> Result<Channel, CliError> {
    connect("executor", endpoint).await
}

/// A client of the executor's pipelines at `endpoint`.
pub async fn pipelines(endpoint: &str) -> Result<PipelineServiceClient<Channel>, CliError> {
    Ok(PipelineServiceClient::new(
        executor_channel(endpoint).await?,
    ))
}

async fn connect(service: &'static str, endpoint: &str) -> Result<Channel, CliError> {
    let fail = |source| CliError::Connect {
        service,
        endpoint: endpoint.to_owned(),
        source,
    };
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(fail)?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(fail)
}
