//! The live view's states rendered at fixed instants: pending, running with elapsed time,
//! retrying with its countdown, failed, skipped and cancelled, the summary, and fitting.

use super::*;
use almanac_proto::executor::v1::{
    ExecutionFinished, ExecutionStarted, NodeFailed, NodeRetrying, NodeSkipped, NodeStarted,
    NodeSucceeded, Progress,
};
use almanac_proto::time::{ms_to_duration, ms_to_timestamp};

use crate::pipeline_file::{Format, parse_pipeline};

const T: i64 = 1_772_953_200_000;

fn pipeline() -> Pipeline {
    parse_pipeline(
        r#"
id: demo
nodes:
  - {id: start, trigger: {}}
  - {id: fetch, action: {callApi: {url: "http://127.0.0.1:8080/"}}}
  - {id: ok, condition: {expression: "nodes.fetch.output.status == 200"}}
  - {id: report, action: {callApi: {url: "http://127.0.0.1:8080/"}}}
  - {id: wait, delay: {duration: 2s}}
edges:
  - {from: start, to: fetch}
  - {from: fetch, to: ok}
  - {from: ok, to: report, when: TRUE}
  - {from: ok, to: wait, when: FALSE}
"#,
        Format::Yaml,
    )
    .unwrap()
}

struct Events {
    view: View,
    seq: u64,
}

impl Events {
    fn new() -> Self {
        let mut view = View::new("execution e1  execute_pipeline demo".into());
        view.add_pipeline(&pipeline());
        Self { view, seq: 0 }
    }

    fn at(&mut self, ms: i64, kind: Kind) -> &mut Self {
        self.seq += 1;
        self.view.apply(&ExecutionEvent {
            execution_id: "e1".into(),
            seq: self.seq,
            time: Some(ms_to_timestamp(T + ms)),
            kind: Some(kind),
        });
        self
    }

    fn started(&mut self, ms: i64, node: &str, attempt: u32) -> &mut Self {
        let node_id = node.into();
        self.at(ms, Kind::NodeStarted(NodeStarted { node_id, attempt }))
    }

    fn succeeded(&mut self, ms: i64, node: &str, took: i64) -> &mut Self {
        self.at(
            ms,
            Kind::NodeSucceeded(NodeSucceeded {
                node_id: node.into(),
                attempt: 1,
                output: None,
                duration: Some(ms_to_duration(took)),
            }),
        )
    }

    fn failed(&mut self, ms: i64, node: &str, attempt: u32, error: &str) -> &mut Self {
        self.at(
            ms,
            Kind::NodeFailed(NodeFailed {
                node_id: node.into(),
                attempt,
                error: error.into(),
                retryable: true,
            }),
        )
    }

    fn lines(&self, now: i64) -> Vec<String> {
        self.view.render(T + now)
    }
}

fn started() -> Events {
    let mut e = Events::new();
    let started = ExecutionStarted {
        execution_id: "e1".into(),
        idempotency_key: "k".into(),
    };
    e.at(0, Kind::ExecutionStarted(started))
        .started(1, "start", 1)
        .succeeded(3, "start", 2);
    e
}

#[test]
fn before_anything_starts_every_node_of_the_pipeline_is_pending() {
    let e = Events::new();
    assert_eq!(
        e.lines(0),
        [
            "execution e1  execute_pipeline demo",
            "NODE    KIND       STATUS   ATTEMPT  TIME  DETAIL",
            "start   trigger    pending  -",
            "fetch   call_api   pending  -",
            "ok      condition  pending  -",
            "report  call_api   pending  -",
            "wait    delay      pending  -",
            "running: 5 pending",
        ]
    );
}

#[test]
fn a_running_node_shows_its_elapsed_time_ticking_and_its_progress() {
    let mut e = started();
    e.started(10, "fetch", 1);
    let lines = e.lines(1_510);
    assert_eq!(lines[2], "start   trigger    succeeded  1        2ms");
    assert_eq!(lines[3], "fetch   call_api   running    1        1.5s");
    assert_eq!(
        lines[7],
        "running for 1.5s: 1 succeeded, 1 running, 3 pending"
    );
    assert_eq!(
        e.lines(2_730)[3],
        "fetch   call_api   running    1        2.7s"
    );
    let progress = Progress {
        node_id: "fetch".into(),
        percent: 40.0,
        message: "downloading".into(),
    };
    e.at(2_000, Kind::Progress(progress));
    assert_eq!(
        e.lines(2_730)[3],
        "fetch   call_api   running    1        2.7s  40% downloading"
    );
}

#[test]
fn a_retrying_node_counts_down_to_its_next_attempt() {
    let mut e = started();
    e.started(10, "fetch", 1)
        .failed(1_010, "fetch", 1, "HTTP 503 Service Unavailable")
        .at(
            1_010,
            Kind::NodeRetrying(NodeRetrying {
                node_id: "fetch".into(),
                attempt: 2,
                backoff: Some(ms_to_duration(2_000)),
            }),
        );
    let lines = e.lines(1_510);
    assert_eq!(
        lines[3],
        "fetch   call_api   retrying   1              \
         attempt 2 in 1.5s (backoff 2s): HTTP 503 Service Unavailable"
    );
    assert_eq!(
        lines[7],
        "running for 1.5s: 1 succeeded, 1 retrying, 3 pending"
    );
    // Past the backoff, before the next NodeStarted: 0ms, never negative.
    assert!(
        e.lines(9_000)[3].contains("attempt 2 in 0ms"),
        "{:?}",
        e.lines(9_000)
    );
    e.started(3_010, "fetch", 2);
    assert_eq!(
        e.lines(3_110)[3],
        "fetch   call_api   running    2        100ms"
    );
}

#[test]
fn failed_skipped_and_cancelled_nodes_say_why_and_the_summary_says_how_it_ended() {
    let mut e = started();
    e.started(10, "fetch", 3)
        .failed(1_250, "fetch", 3, "HTTP 503\nService Unavailable")
        .at(
            1_260,
            Kind::NodeSkipped(NodeSkipped {
                node_id: "wait".into(),
                reason: "no incoming edge was taken".into(),
            }),
        )
        .at(
            1_300,
            Kind::ExecutionFinished(ExecutionFinished {
                status: ExecutionStatus::Failed as i32,
                result: None,
                error: "node fetch failed: HTTP 503".into(),
                retryable: true,
            }),
        );
    // What no event says, the final read of the execution does.
    let cancelled = NodeRun {
        node_id: "report".into(),
        kind: "call_api".into(),
        attempt: 0,
        status: NodeStatus::Cancelled as i32,
        error: "the execution failed".into(),
        ..NodeRun::default()
    };
    let e1 = Execution {
        status: ExecutionStatus::Failed as i32,
        nodes: vec![cancelled],
        ..Execution::default()
    };
    e.view.refresh(&e1);
    assert_eq!(
        e.lines(99_999),
        [
            "execution e1  execute_pipeline demo",
            "NODE    KIND       STATUS     ATTEMPT  TIME   DETAIL",
            "start   trigger    succeeded  1        2ms",
            "fetch   call_api   failed     3        1.24s  HTTP 503 Service Unavailable",
            "ok      condition  pending    -",
            "report  call_api   cancelled  -               the execution failed",
            "wait    delay      skipped    -               no incoming edge was taken",
            "failed in 1.3s: 1 succeeded, 1 failed, 1 skipped, 1 cancelled, 1 pending: \
             node fetch failed: HTTP 503",
        ]
    );
}

#[test]
fn events_already_seen_are_ignored() {
    let mut e = started();
    e.started(10, "fetch", 1).failed(500, "fetch", 1, "boom");
    // The same NodeStarted again (a re-attached stream): seq 4 is already in the view.
    e.view.apply(&ExecutionEvent {
        execution_id: "e1".into(),
        seq: 4,
        time: Some(ms_to_timestamp(T + 10)),
        kind: Some(Kind::NodeStarted(NodeStarted {
            node_id: "fetch".into(),
            attempt: 1,
        })),
    });
    assert!(e.lines(600)[3].contains("failed"), "{:?}", e.lines(600));
}

#[test]
fn an_execution_read_mid_flight_is_caught_up_by_its_events_then_its_node_table() {
    let run = |node: &str, attempt, status: NodeStatus, error: &str| NodeRun {
        node_id: node.into(),
        kind: "from-table".into(),
        attempt,
        status: status as i32,
        error: error.into(),
        ..NodeRun::default()
    };
    // The read: seq 7 is its last event; the table has what events do not say (report).
    let read = Execution {
        id: "e1".into(),
        status: ExecutionStatus::Running as i32,
        create_time: Some(ms_to_timestamp(T)),
        last_seq: 7,
        nodes: vec![
            run("fetch", 1, NodeStatus::Failed, "HTTP 503"),
            run("start", 1, NodeStatus::Succeeded, ""),
            run("wait", 0, NodeStatus::Skipped, ""),
            run("report", 0, NodeStatus::Cancelled, "stopped"),
        ],
        ..Execution::default()
    };
    let mut e = Events::new();
    e.view = View::from_execution("title".into(), &read, Some(&pipeline()));
    assert!(e.view.catching_up());
    let before = e.lines(0);
    assert_eq!(
        before[7], "running for 0ms: 5 pending",
        "nothing from the past yet"
    );

    // The log from seq 1 (what `execution watch` streams).
    let started = ExecutionStarted {
        execution_id: "e1".into(),
        idempotency_key: "k".into(),
    };
    e.at(0, Kind::ExecutionStarted(started))
        .started(1, "start", 1)
        .succeeded(3, "start", 2)
        .started(10, "fetch", 1)
        .failed(20, "fetch", 1, "HTTP 503")
        .at(
            20,
            Kind::NodeRetrying(NodeRetrying {
                node_id: "fetch".into(),
                attempt: 2,
                backoff: Some(ms_to_duration(60_000)),
            }),
        );
    assert!(e.view.catching_up());
    let skipped = NodeSkipped {
        node_id: "wait".into(),
        reason: "no incoming edge was taken".into(),
    };
    e.at(25, Kind::NodeSkipped(skipped));
    assert!(!e.view.catching_up());
    let lines = e.lines(10_020);
    assert_eq!(
        lines[1..],
        [
            "NODE    KIND       STATUS     ATTEMPT  TIME  DETAIL",
            "start   trigger    succeeded  1        2ms",
            "fetch   call_api   retrying   1              attempt 2 in 50s (backoff 1m): HTTP 503",
            "ok      condition  pending    -",
            "report  call_api   cancelled  -              stopped",
            "wait    delay      skipped    -              no incoming edge was taken",
            "running for 10s: 1 succeeded, 1 skipped, 1 cancelled, 1 retrying, 1 pending",
        ]
    );

    // A single action (no pipeline): the nodes of the table, in its order.
    let view = View::from_execution("title".into(), &read, None);
    let ids: Vec<String> = view.render(T)[2..6]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(ids, ["fetch", "start", "wait", "report"]);
}

#[test]
fn fitting_cuts_long_lines_and_folds_rows_that_do_not_fit() {
    let lines: Vec<String> = ["title", "NODE", "a", "b", "c", "d", "e", "summary"]
        .map(String::from)
        .to_vec();
    assert_eq!(fit(lines.clone(), 80, 40), lines);
    assert_eq!(
        fit(lines.clone(), 80, 7),
        ["title", "NODE", "a", "b", "… 3 more nodes", "summary"]
    );
    assert_eq!(
        fit(vec!["x".repeat(30)], 12, 40),
        [format!("{}…", "x".repeat(10))]
    );
}
