//! Both servers speak the standard gRPC side protocols: health checking reports SERVING
//! and server reflection (v1 and v1alpha) lists the services, so grpcurl and buf curl
//! work without the protos.

mod common;

use common::*;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// `list_services_<version>(url)`: the services a server lists through one version of
/// the reflection protocol (v1 and v1alpha have the same shape and different types).
macro_rules! list_services {
    ($name:ident, $version:ident) => {
        async fn $name(url: &str) -> Vec<String> {
            use tonic_reflection::pb::$version::{
                ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse,
            };
            let mut client = ServerReflectionClient::new(channel(url).await);
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut responses = client
                .server_reflection_info(futures::stream::iter([request]))
                .await
                .expect("reflection")
                .into_inner();
            match responses
                .message()
                .await
                .expect("a response")
                .and_then(|r| r.message_response)
            {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    list.service.into_iter().map(|s| s.name).collect()
                }
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
    };
}

list_services!(list_services_v1, v1);
list_services!(list_services_v1alpha, v1alpha);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_serving_and_reflection_lists_both_services() {
    let stack = Stack::start().await;
    for (url, service) in [
        (
            stack.scheduler.url(),
            "almanac.scheduler.v1.SchedulerService",
        ),
        (stack.executor.url(), "almanac.executor.v1.ExecutorService"),
    ] {
        let mut health = HealthClient::new(channel(&url).await);
        for name in ["", service] {
            let status = health
                .check(HealthCheckRequest {
                    service: name.into(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            assert_eq!(status, ServingStatus::Serving as i32, "{url} {name:?}");
        }
        for listed in [
            list_services_v1(&url).await,
            list_services_v1alpha(&url).await,
        ] {
            assert!(
                listed.iter().any(|s| s == service),
                "{url} lists {listed:?}"
            );
            assert!(
                listed.iter().any(|s| s == "grpc.health.v1.Health"),
                "{url} lists {listed:?}"
            );
        }
    }
}
