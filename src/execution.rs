//! `almanac execution ...`: get (with the node table), watch (the live node view on a
//! terminal, else one line per event, see `live.rs`; the exit code says whether the
//! execution succeeded), cancel and list, each against the executor's ExecutorService.

use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::{
    CancelExecutionRequest, CancelMode, Execution, ExecutionEvent, ExecutionStatus,
    GetExecutionRequest, ListExecutionsRequest, NodeStatus, execution_event::Kind,
};

use crate::cli::{ExecutionCmd, Output};
use crate::error::CliError;
use crate::output::{self, Table, label, or_dash, outln, print_json, time};
use crate::schedule_view;

/// Runs one `execution` subcommand against the executor at `endpoint`.
pub async fn run(cmd: ExecutionCmd, endpoint: &str, out: Output) -> Result<(), CliError> {
    let channel = crate::client::executor_channel(endpoint).await?;
    let mut client = ExecutorServiceClient::new(channel.clone());
    match cmd {
        ExecutionCmd::Get { id } => {
            let request = GetExecutionRequest {
                execution_id: id,
                idempotency_key: String::new(),
            };
            let response = client.get_execution(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            print_execution(&response.execution.unwrap_or_default());
            Ok(())
        }
        ExecutionCmd::Watch { id, after_seq } => {
            crate::live::watch(channel, id, after_seq, out).await
        }
        ExecutionCmd::Cancel {
            id,
            terminate,
            reason,
        } => {
            let mode = if terminate {
                CancelMode::Terminate
            } else {
                CancelMode::Graceful
            };
            let request = CancelExecutionRequest {
                execution_id: id,
                mode: mode as i32,
                reason: reason.unwrap_or_default(),
                ..Default::default()
            };
            let response = client.cancel_execution(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let e = response.execution.unwrap_or_default();
            let mut line = format!("execution {}: {}", e.id, exec_status(e.status));
            if e.cancel_requested != 0 {
                line.push_str(&format!(
                    ", cancel requested ({})",
                    cancel_mode(e.cancel_requested)
                ));
            }
            outln!("{line}");
            Ok(())
        }
        ExecutionCmd::List {
            status,
            schedule,
            page_size,
            page_token,
        } => {
            let request = ListExecutionsRequest {
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
                status: status.map_or(0, |s| ExecutionStatus::from(s) as i32),
                schedule_id: schedule.unwrap_or_default(),
            };
            let response = client.list_executions(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let mut table = Table::new(&[
                "ID", "STATUS", "ACTION", "SCHEDULE", "CREATED", "DURATION", "ERROR",
            ]);
            for e in &response.executions {
                table.row(vec![
                    e.id.clone(),
                    exec_status(e.status),
                    schedule_view::action(e.action.as_ref()),
                    or_dash(e.origin.as_ref().map_or("", |o| &o.schedule_id)),
                    time(e.create_time.as_ref()),
                    output::elapsed(e.create_time.as_ref(), e.finish_time.as_ref()),
                    or_dash(&e.error),
                ]);
            }
            table.print();
            if !response.next_page_token.is_empty() {
                outln!("more: --page-token {}", response.next_page_token);
            }
            Ok(())
        }
    }
}

/// `succeeded`, `timed_out`, ...
pub fn exec_status(status: i32) -> String {
    ExecutionStatus::try_from(status)
        .map(|s| label(s.as_str_name(), "EXECUTION_STATUS_"))
        .unwrap_or_else(|_| status.to_string())
}

fn cancel_mode(mode: i32) -> String {
    CancelMode::try_from(mode)
        .map(|m| label(m.as_str_name(), "CANCEL_MODE_"))
        .unwrap_or_else(|_| mode.to_string())
}

/// The `key  value` block and node table of `execution get`.
fn print_execution(e: &Execution) {
    let origin = e.origin.as_ref().map_or_else(String::new, |o| {
        if o.schedule_id.is_empty() && o.run_id.is_empty() {
            return String::new();
        }
        format!(
            "schedule {} run {} attempt {} nominal {}",
            or_dash(&o.schedule_id),
            or_dash(&o.run_id),
            o.attempt,
            time(o.nominal_time.as_ref())
        )
    });
    let cancel = if e.cancel_requested == 0 {
        String::new()
    } else {
        cancel_mode(e.cancel_requested)
    };
    let retryable = match (e.error.is_empty(), e.retryable) {
        (true, _) => String::new(),
        (false, true) => "yes".to_owned(),
        (false, false) => "no".to_owned(),
    };
    output::print_fields(&[
        ("id", e.id.clone()),
        ("key", e.idempotency_key.clone()),
        ("status", exec_status(e.status)),
        ("action", schedule_view::action(e.action.as_ref())),
        ("origin", origin),
        ("created", time(e.create_time.as_ref())),
        ("finished", time(e.finish_time.as_ref())),
        (
            "deadline",
            e.deadline
                .as_ref()
                .map_or_else(String::new, |d| time(Some(d))),
        ),
        ("result", output::value(e.result.as_ref())),
        ("error", e.error.clone()),
        ("retryable", retryable),
        ("cancel", cancel),
        ("last seq", e.last_seq.to_string()),
    ]);
    if e.nodes.is_empty() {
        return;
    }
    outln!();
    let mut table = Table::new(&["NODE", "KIND", "ATTEMPT", "STATUS", "DURATION", "ERROR"]);
    for n in &e.nodes {
        let status = NodeStatus::try_from(n.status)
            .map(|s| label(s.as_str_name(), "NODE_STATUS_"))
            .unwrap_or_else(|_| n.status.to_string());
        table.row(vec![
            n.node_id.clone(),
            n.kind.clone(),
            n.attempt.to_string(),
            status,
            output::duration(n.duration.as_ref()),
            or_dash(&n.error),
        ]);
    }
    table.print();
}

/// One event as `seq  time  kind  node  details`.
pub fn event_line(event: &ExecutionEvent) -> String {
    let (kind, node, details) = match &event.kind {
        Some(Kind::ExecutionStarted(s)) => (
            "execution_started",
            "",
            format!("key={}", s.idempotency_key),
        ),
        Some(Kind::NodeStarted(n)) => ("node_started", n.node_id.as_str(), attempt(n.attempt)),
        Some(Kind::NodeSucceeded(n)) => (
            "node_succeeded",
            n.node_id.as_str(),
            format!(
                "{} in {} output={}",
                attempt(n.attempt),
                output::duration(n.duration.as_ref()),
                output::value(n.output.as_ref())
            ),
        ),
        Some(Kind::NodeFailed(n)) => (
            "node_failed",
            n.node_id.as_str(),
            format!(
                "{} retryable={}: {}",
                attempt(n.attempt),
                n.retryable,
                n.error
            ),
        ),
        Some(Kind::NodeRetrying(n)) => (
            "node_retrying",
            n.node_id.as_str(),
            format!(
                "{} after {}",
                attempt(n.attempt),
                output::duration(n.backoff.as_ref())
            ),
        ),
        Some(Kind::NodeSkipped(n)) => ("node_skipped", n.node_id.as_str(), n.reason.clone()),
        Some(Kind::Progress(p)) => (
            "progress",
            p.node_id.as_str(),
            format!("{:.0}% {}", p.percent, p.message),
        ),
        Some(Kind::ExecutionFinished(f)) => {
            let mut details = exec_status(f.status);
            if f.result.is_some() {
                details.push_str(&format!(" result={}", output::value(f.result.as_ref())));
            }
            if !f.error.is_empty() {
                details.push_str(&format!(" retryable={}: {}", f.retryable, f.error));
            }
            ("execution_finished", "", details)
        }
        None => ("unknown", "", String::new()),
    };
    let line = format!(
        "{:>4}  {}  {kind:<18}  {:<12}  {details}",
        event.seq,
        time(event.time.as_ref()),
        or_dash(node)
    );
    line.trim_end().to_owned()
}

fn attempt(n: u32) -> String {
    format!("attempt {n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use almanac_proto::executor::v1::{ExecutionFinished, NodeFailed};
    use almanac_proto::time::ms_to_timestamp;

    fn event(seq: u64, kind: Kind) -> ExecutionEvent {
        ExecutionEvent {
            execution_id: "e".into(),
            seq,
            time: Some(ms_to_timestamp(1_772_953_200_000)),
            kind: Some(kind),
        }
    }

    #[test]
    fn events_print_seq_time_kind_node_and_details() {
        let failed = event(
            3,
            Kind::NodeFailed(NodeFailed {
                node_id: "action".into(),
                attempt: 1,
                error: "HTTP 503".into(),
                retryable: true,
            }),
        );
        assert_eq!(
            event_line(&failed),
            "   3  2026-03-08T07:00:00.000Z  node_failed         action        \
             attempt 1 retryable=true: HTTP 503"
        );
        let finished = event(
            4,
            Kind::ExecutionFinished(ExecutionFinished {
                status: ExecutionStatus::Succeeded as i32,
                ..ExecutionFinished::default()
            }),
        );
        assert_eq!(
            event_line(&finished),
            "   4  2026-03-08T07:00:00.000Z  execution_finished  -             succeeded"
        );
    }
}
