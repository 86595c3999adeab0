//! `ExecuteBatch`: many `Execute` calls in one stream. Each call gets what `Execute`
//! would give it — its events (or only its first and last with `ends_only`), or the one
//! error that ends it — under its tag; one call's refusal leaves the others running; a
//! batch that is not well formed is refused whole, and the server keeps serving.

mod common;

use std::collections::BTreeMap;

use almanac_proto::executor::v1::{
    ExecuteBatchRequest, ExecuteCall, ExecuteRequest, ExecutionEvent, execute_update::Update,
};
use almanac_proto::status::field_violations;
use common::*;
use tonic::Code;
use tonic::transport::Channel;

type Client = almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient<Channel>;

/// Every call's events, and the error that ended it if one did, by tag.
#[derive(Debug, Default)]
struct Answers {
    events: BTreeMap<u64, Vec<ExecutionEvent>>,
    errors: BTreeMap<u64, (Code, String)>,
}

async fn batch(client: &mut Client, calls: Vec<ExecuteCall>) -> Answers {
    let mut stream = client
        .execute_batch(ExecuteBatchRequest { calls })
        .await
        .expect("the batch is taken")
        .into_inner();
    let mut answers = Answers::default();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while let Some(response) = tokio::time::timeout_at(deadline, stream.message())
        .await
        .expect("the batch ends within 30 s")
        .expect("the stream does not break")
    {
        for update in response.updates {
            match update.update.expect("an update carries something") {
                Update::Event(event) => answers.events.entry(update.tag).or_default().push(event),
                Update::Error(error) => {
                    let previous = answers
                        .errors
                        .insert(update.tag, (Code::from(error.code), error.message));
                    assert!(previous.is_none(), "call {} ended twice", update.tag);
                }
            }
        }
    }
    answers
}

fn call_of(tag: u64, request: ExecuteRequest, ends_only: bool) -> ExecuteCall {
    ExecuteCall {
        tag,
        request: Some(request),
        ends_only,
    }
}

#[tokio::test]
async fn each_call_of_a_batch_gets_what_execute_would_give_it_under_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;
    // Stored beforehand: the batch attaches to it, and another request under its key is
    // refused, as Execute would.
    let stored = execute_all(
        &mut client,
        execute_request("stored", call(&target.url("/ok"))),
    )
    .await;

    let mut unkeyed = execute_request("", call(&target.url("/ok")));
    unkeyed.idempotency_key.clear();
    let mut tail = execute_request("stored", call(&target.url("/ok")));
    tail.after_seq = 2;
    let answers = batch(
        &mut client,
        vec![
            call_of(
                7,
                execute_request("all-events", call(&target.url("/ok"))),
                false,
            ),
            call_of(
                3,
                execute_request("ends-only", call(&target.url("/ok"))),
                true,
            ),
            call_of(9, unkeyed, false),
            call_of(4, tail, false),
            call_of(
                5,
                execute_request("stored", call(&target.url("/status/500"))),
                false,
            ),
            ExecuteCall {
                tag: 6,
                request: None,
                ends_only: false,
            },
        ],
    )
    .await;

    let all = &answers.events[&7];
    assert_eq!(
        kinds(all),
        [
            "ExecutionStarted",
            "NodeStarted",
            "NodeSucceeded",
            "ExecutionFinished"
        ]
    );
    assert_eq!(seqs(all), [1, 2, 3, 4]);
    let ends = &answers.events[&3];
    assert_eq!(kinds(ends), ["ExecutionStarted", "ExecutionFinished"]);
    assert_eq!(
        seqs(ends),
        [1, 4],
        "node events are left out, their seqs still count"
    );
    assert_eq!(
        answers.events[&4],
        stored[2..],
        "a repeat attaches after its seq"
    );

    let (code, message) = &answers.errors[&9];
    assert_eq!(*code, Code::InvalidArgument);
    assert!(message.contains("idempotency_key"), "{message}");
    let (code, message) = &answers.errors[&5];
    assert_eq!(*code, Code::AlreadyExists, "{message}");
    let (code, message) = &answers.errors[&6];
    assert_eq!(*code, Code::InvalidArgument);
    assert!(message.contains("request"), "{message}");
    assert_eq!(answers.errors.len(), 3, "{:?}", answers.errors);
    for tag in [9, 5, 6] {
        assert!(
            !answers.events.contains_key(&tag),
            "a refused call has no events"
        );
    }
    assert_eq!(
        target.requests().len(),
        3,
        "the stored execution and the two new ones ran once each"
    );
    executor.stop().await;
}

#[tokio::test]
async fn a_batch_that_is_not_well_formed_is_refused_whole_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let target = Target::start().await;
    let executor = Executor::start(&dir.path().join("executor.db")).await;
    let mut client = executor.client().await;

    let empty = client
        .execute_batch(ExecuteBatchRequest { calls: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert_eq!(field_violations(&empty)[0].field, "calls");

    let twice = client
        .execute_batch(ExecuteBatchRequest {
            calls: vec![
                call_of(1, execute_request("a", call(&target.url("/ok"))), false),
                call_of(2, execute_request("b", call(&target.url("/ok"))), false),
                call_of(1, execute_request("c", call(&target.url("/ok"))), false),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::InvalidArgument);
    let violations = field_violations(&twice);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, "calls[2].tag");

    let too_many = client
        .execute_batch(ExecuteBatchRequest {
            calls: (0..1001)
                .map(|tag| {
                    call_of(
                        tag,
                        execute_request(&format!("k{tag}"), call(&target.url("/ok"))),
                        true,
                    )
                })
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::InvalidArgument);
    assert!(
        too_many.message().contains("1000"),
        "{}",
        too_many.message()
    );

    // Nothing ran, and the server still serves.
    let answers = batch(
        &mut client,
        vec![call_of(
            1,
            execute_request("a", call(&target.url("/ok"))),
            true,
        )],
    )
    .await;
    assert_eq!(seqs(&answers.events[&1]), [1, 4]);
    assert_eq!(target.requests().len(), 1);
    executor.stop().await;
}
