//! The scheduler reaching its executors through a name (`dns:///name:port`), as it does
//! behind a headless Kubernetes Service: the name is resolved by the scheduler itself,
//! again every few seconds, and the channel balances over what it finds.

mod common;

use almanac_proto::scheduler::v1 as pb;
use common::sink::Sink;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_given_a_dns_name_runs_its_fires_on_the_executor_behind_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Sink::start().await;
    let executor = start_executor(dir.path()).await;
    let target = format!("dns:///localhost:{}", executor.addr.port());
    let scheduler = start_scheduler(dir.path(), &target).await;
    let mut client = scheduler_client(&scheduler.url()).await;
    for i in 0..5 {
        let run = trigger_idle_schedule(
            &mut client,
            &format!("by-name-{i}"),
            call_api("GET", &sink.url(&format!("/n/{i}"))),
        )
        .await;
        let done = wait_for_run(&client, &run.id, "the run ends", is_terminal).await;
        assert_eq!(status_of(&done), pb::RunStatus::Succeeded, "{done:?}");
    }
    assert_eq!(sink.hits().len(), 5);
}
