//! A client in another language: a Python program generates its stubs from `proto/` with
//! grpcio-tools and drives the scheduler (create, idempotent create, a refused create,
//! runs that succeed). Skipped when Python's grpcio is missing, unless the test script
//! requires it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::sink::Sink;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_generated_from_the_protos_drives_the_scheduler() {
    let python = std::env::var("ALMANAC_PYTHON").unwrap_or_else(|_| "python3".into());
    let present = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !tool_available(
        "python grpcio + grpcio-tools",
        present,
        "pip install grpcio grpcio-tools",
    ) {
        return;
    }
    let stack = Stack::start().await;
    let sink = Sink::start().await;
    let root = env!("CARGO_MANIFEST_DIR");
    let mut cmd = Command::new(&python);
    cmd.arg(format!("{root}/tests/clients/scheduler_client.py"))
        .arg(stack.scheduler.addr.to_string())
        .arg(sink.url("/py"))
        .arg(format!("{root}/proto"));
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || run_command(&mut cmd, Duration::from_secs(60)))
            .await
            .unwrap();
    assert!(ok, "python client failed:\n{out}\n{err}");
    assert!(out.contains("ok:"), "{out}");
    assert!(!sink.hits_on("/py").is_empty());
}
