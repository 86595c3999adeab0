//! The batching client against a stand-in executor served on loopback: how updates
//! are routed to calls, and what a refusal, a cut stream and an executor without
//! `ExecuteBatch` become. (The real executor's side is `executor-svc`'s
//! `tests/execute_batch.rs`; the whole path runs in every scheduling test.)

use std::pin::Pin;
use std::sync::Mutex;

use almanac_proto::executor::v1 as pb;
use almanac_proto::executor::v1::executor_service_server::{
    ExecutorService, ExecutorServiceServer,
};
use futures::Stream;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response};

use super::*;

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Answers `ExecuteBatch` (unless `no_batch`) and `Execute`: a key starting with
/// `refuse` is FAILED_PRECONDITION, `cut` gets its first event and then the stream
/// ends, any other key starts and succeeds.
#[derive(Default)]
struct StandIn {
    no_batch: bool,
    /// The keys of every batch, and of every single call as a batch of one.
    seen: Mutex<Vec<Vec<String>>>,
}

fn event(key: &str, seq: u64) -> pb::ExecutionEvent {
    use pb::execution_event::Kind as K;
    let kind = if seq == 1 {
        K::ExecutionStarted(pb::ExecutionStarted {
            execution_id: format!("exec-{key}"),
            idempotency_key: key.to_owned(),
        })
    } else {
        K::ExecutionFinished(pb::ExecutionFinished {
            status: pb::ExecutionStatus::Succeeded as i32,
            ..Default::default()
        })
    };
    pb::ExecutionEvent {
        execution_id: format!("exec-{key}"),
        seq,
        time: Some(ms_to_timestamp(1_000)),
        kind: Some(kind),
    }
}

#[tonic::async_trait]
impl ExecutorService for StandIn {
    type ExecuteStream = Responses<pb::ExecuteResponse>;
    type ExecuteBatchStream = Responses<pb::ExecuteBatchResponse>;
    type WatchExecutionStream = Responses<pb::WatchExecutionResponse>;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let key = request.into_inner().idempotency_key;
        self.seen.lock().unwrap().push(vec![key.clone()]);
        let events = [1, 4].map(|seq| {
            Ok(pb::ExecuteResponse {
                event: Some(event(&key, seq)),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(events))))
    }

    async fn execute_batch(
        &self,
        request: Request<ExecuteBatchRequest>,
    ) -> Result<Response<Self::ExecuteBatchStream>, Status> {
        if self.no_batch {
            return Err(Status::unimplemented("no ExecuteBatch here"));
        }
        let calls = request.into_inner().calls;
        let keys = calls.iter().map(|c| key_of(c).to_owned()).collect();
        self.seen.lock().unwrap().push(keys);
        let update = |tag, update| pb::ExecuteUpdate {
            tag,
            update: Some(update),
        };
        let mut firsts = Vec::new();
        let mut lasts = Vec::new();
        for call in &calls {
            let key = key_of(call);
            if key.starts_with("refuse") {
                firsts.push(update(
                    call.tag,
                    Update::Error(pb::CallError {
                        code: Code::FailedPrecondition as i32,
                        message: format!("{key} is refused"),
                    }),
                ));
                continue;
            }
            firsts.push(update(call.tag, Update::Event(event(key, 1))));
            if key != "cut" {
                lasts.push(update(call.tag, Update::Event(event(key, 4))));
            }
        }
        let responses = [firsts, lasts].map(|updates| Ok(pb::ExecuteBatchResponse { updates }));
        Ok(Response::new(Box::pin(futures::stream::iter(responses))))
    }

    async fn watch_execution(
        &self,
        _: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn get_execution(
        &self,
        _: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::GetExecutionResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn list_executions(
        &self,
        _: Request<pb::ListExecutionsRequest>,
    ) -> Result<Response<pb::ListExecutionsResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn cancel_execution(
        &self,
        _: Request<CancelExecutionRequest>,
    ) -> Result<Response<pb::CancelExecutionResponse>, Status> {
        Err(Status::unimplemented(""))
    }

    async fn validate_action(
        &self,
        _: Request<ValidateActionRequest>,
    ) -> Result<Response<pb::ValidateActionResponse>, Status> {
        Err(Status::unimplemented(""))
    }
}

fn key_of(call: &BatchCall) -> &str {
    call.request
        .as_ref()
        .map_or("", |r| r.idempotency_key.as_str())
}

/// Serves `stand_in` on 127.0.0.1:0 and returns a client of it.
async fn serve(stand_in: Arc<StandIn>) -> GrpcExecutorClient {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutorServiceServer::from_arc(stand_in))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    GrpcExecutorClient::connect_lazy(&format!("http://{address}")).unwrap()
}

fn call(key: &str) -> ExecuteCall {
    ExecuteCall {
        key: key.to_owned(),
        action: Action::default(),
        deadline_ms: None,
        schedule_id: "s".into(),
        run_id: format!("run-{key}"),
        nominal_ms: 0,
        attempt: 1,
        after_seq: 0,
    }
}

async fn events(
    client: &GrpcExecutorClient,
    key: &str,
) -> Result<Vec<Result<ExecEvent, CallError>>, CallError> {
    let stream = client.execute(call(key)).await?;
    let all = tokio::time::timeout(std::time::Duration::from_secs(10), stream.collect());
    Ok(all.await.expect("the call's events end within 10 s"))
}

fn seqs(events: &[Result<ExecEvent, CallError>]) -> Vec<Result<u64, CallError>> {
    events
        .iter()
        .map(|e| {
            e.clone().map(|e| match e {
                ExecEvent::Started { seq, .. }
                | ExecEvent::Finished { seq, .. }
                | ExecEvent::Other { seq } => seq,
            })
        })
        .collect()
}

#[tokio::test]
async fn calls_made_together_share_a_batch_and_each_gets_its_own_answer() {
    let stand_in = Arc::new(StandIn::default());
    let client = serve(Arc::clone(&stand_in)).await;
    let (a, b, refused, cut) = tokio::join!(
        events(&client, "a"),
        events(&client, "b"),
        events(&client, "refuse-c"),
        events(&client, "cut"),
    );
    assert_eq!(seqs(&a.unwrap()), [Ok(1), Ok(4)]);
    assert_eq!(seqs(&b.unwrap()), [Ok(1), Ok(4)]);
    // A refusal is the call's answer, as Execute's status would be: the dispatcher
    // fails the run instead of sending the attempt again.
    assert!(
        matches!(&refused, Err(CallError::Rejected(m)) if m.contains("refuse-c is refused")),
        "{refused:?}"
    );
    // A call its batch's stream left unfinished is to be sent again.
    let cut = cut.unwrap();
    assert_eq!(seqs(&cut)[0], Ok(1));
    assert!(
        matches!(&cut[1..], [Err(CallError::Transient(_))]),
        "{cut:?}"
    );
    let seen = stand_in.seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(Vec::len).sum::<usize>(),
        4,
        "each call sent once: {seen:?}"
    );
    assert!(
        seen.len() < 4,
        "calls made together share batches: {seen:?}"
    );
}

#[tokio::test]
async fn a_batch_stays_under_a_megabyte_of_requests() {
    let stand_in = Arc::new(StandIn::default());
    let client = serve(Arc::clone(&stand_in)).await;
    let large = |key: &str| {
        let mut call = call(key);
        call.action = Action {
            kind: Some(almanac_proto::executor::v1::action::Kind::CallApi(
                almanac_proto::executor::v1::CallApiAction {
                    url: format!("http://127.0.0.1:1/{}", "x".repeat(700_000)),
                    ..Default::default()
                },
            )),
        };
        call
    };
    let stream = |call| {
        let client = client.clone();
        async move { client.execute(call).await.map(|_| ()) }
    };
    let (a, b, c) = tokio::join!(stream(large("a")), stream(large("b")), stream(call("c")));
    assert!(a.is_ok() && b.is_ok() && c.is_ok(), "{a:?} {b:?} {c:?}");
    let seen = stand_in.seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 3, "{seen:?}");
    for batch in &seen {
        let large = batch.iter().filter(|k| *k != "c").count();
        assert!(large <= 1, "two 700 kB calls never share a batch: {seen:?}");
    }
}

#[tokio::test]
async fn an_executor_without_execute_batch_is_sent_execute_per_attempt() {
    let stand_in = Arc::new(StandIn {
        no_batch: true,
        ..Default::default()
    });
    let client = serve(Arc::clone(&stand_in)).await;
    let first = events(&client, "a").await;
    assert!(
        matches!(&first, Err(CallError::Transient(m)) if m.contains("ExecuteBatch")),
        "not a refusal of the attempt, which is sent again: {first:?}"
    );
    assert_eq!(seqs(&events(&client, "a").await.unwrap()), [Ok(1), Ok(4)]);
    assert_eq!(seqs(&events(&client, "b").await.unwrap()), [Ok(1), Ok(4)]);
    assert_eq!(
        *stand_in.seen.lock().unwrap(),
        [vec!["a".to_owned()], vec!["b".to_owned()]],
        "after the first UNIMPLEMENTED, one Execute per attempt (the batch is not recorded)"
    );
}
