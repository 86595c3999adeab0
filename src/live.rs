//! Following an execution until it ends, for `execution watch` and `pipeline run`: on a
//! terminal, the live node view of `watch_view.rs` redrawn in place (ANSI: cursor up, clear
//! line) as events arrive and as time passes; otherwise one line — or one JSON object — per
//! event. A stream that breaks is attached again after the last seq seen (a bounded number
//! of times), so no event is shown twice or missed.

use std::io::{IsTerminal as _, Write as _};
use std::pin::Pin;
use std::time::Duration;

use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::pipeline_service_client::PipelineServiceClient;
use almanac_proto::executor::v1::{
    Action, Execution, ExecutionEvent, ExecutionStatus, GetExecutionRequest, GetPipelineRequest,
    Pipeline, WatchExecutionRequest, action, execution_event::Kind,
};
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::cli::Output;
use crate::error::CliError;
use crate::execution::{event_line, exec_status};
use crate::output::{outln, print_json_line};
use crate::watch_view::{View, fit};

/// How often the live view redraws while no event arrives (elapsed times tick).
const TICK: Duration = Duration::from_millis(200);
/// Times in a row a broken stream is attached again before the command gives up.
const MAX_REATTACH: u32 = 20;
/// The wait before the first re-attach, doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Events of Execute or WatchExecution.
pub type Events = Pin<Box<dyn Stream<Item = Result<ExecutionEvent, Status>> + Send>>;

/// The events of an Execute or WatchExecution stream (responses carry one event each).
pub fn events<M: 'static, S>(stream: S, event: fn(M) -> Option<ExecutionEvent>) -> Events
where
    S: Stream<Item = Result<M, Status>> + Send + 'static,
{
    Box::pin(stream.filter_map(move |m| match m {
        Ok(m) => event(m).map(Ok),
        Err(status) => Some(Err(status)),
    }))
}

/// Where events go.
pub enum Sink {
    /// One line (text) or JSON object per event.
    Lines(Output),
    /// The node view, redrawn on the terminal.
    Live(Box<View>, Screen),
}

impl Sink {
    /// The live view when stdout is a terminal and text is asked for, else lines.
    pub fn choose(out: Output, view: impl FnOnce() -> View) -> Self {
        if out == Output::Text && std::io::stdout().is_terminal() {
            Sink::Live(Box::new(view()), Screen::default())
        } else {
            Sink::Lines(out)
        }
    }

    /// Whether this is the live view (which wants an execution and a pipeline to start).
    pub fn is_live(&self) -> bool {
        matches!(self, Sink::Live(..))
    }

    fn event(&mut self, event: &ExecutionEvent) -> Result<(), CliError> {
        match self {
            Sink::Lines(Output::Json) => print_json_line(event)?,
            Sink::Lines(Output::Text) => outln!("{}", event_line(event)),
            Sink::Live(view, screen) => {
                view.apply(event);
                if !view.catching_up() {
                    screen.draw(view)?;
                }
            }
        }
        Ok(())
    }

    fn note(&mut self, note: String) -> Result<(), CliError> {
        match self {
            Sink::Lines(_) if note.is_empty() => {}
            Sink::Lines(_) => eprintln!("note: {note}"),
            Sink::Live(view, screen) => {
                view.set_note(note);
                screen.draw(view)?;
            }
        }
        Ok(())
    }
}

/// The part of the terminal the view was drawn on.
#[derive(Debug, Default)]
pub struct Screen {
    drawn: usize,
}

impl Screen {
    /// Draws the view over its previous drawing.
    pub fn draw(&mut self, view: &View) -> Result<(), CliError> {
        let (width, height) = terminal_size::terminal_size_of(std::io::stdout())
            .map_or((80, 24), |(w, h)| (usize::from(w.0), usize::from(h.0)));
        let lines = fit(view.render(now_ms()), width, height);
        let mut frame = String::new();
        if self.drawn > 0 {
            frame.push_str(&format!("\x1b[{}A\r", self.drawn));
        }
        for line in &lines {
            frame.push_str("\x1b[2K");
            frame.push_str(line);
            frame.push('\n');
        }
        // Clear what a taller previous frame left below.
        frame.push_str("\x1b[J");
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(frame.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| anyhow::anyhow!("cannot write to the terminal: {e}"))?;
        self.drawn = lines.len();
        Ok(())
    }
}

fn now_ms() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    now.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `execution watch ID`: the live view (the execution's node table and pipeline, brought
/// up to date by its whole event log, then live), or the events after `after_seq` line by
/// line.
pub async fn watch(
    channel: Channel,
    id: String,
    after_seq: u64,
    out: Output,
) -> Result<(), CliError> {
    let mut client = ExecutorServiceClient::new(channel.clone());
    let mut sink = Sink::choose(out, View::default);
    let mut after = after_seq;
    if let Sink::Live(view, _) = &mut sink {
        let execution = get(&mut client, &id).await?;
        let definition = definition(&channel, execution.action.as_ref()).await;
        let title = title(
            &execution.id,
            execution.action.as_ref(),
            definition.as_ref(),
        );
        **view = View::from_execution(title, &execution, definition.as_ref());
        // The view replays the log from the start (see `View::from_execution`).
        after = 0;
    }
    let request = WatchExecutionRequest {
        execution_id: id.clone(),
        after_seq: after,
    };
    let stream = client.watch_execution(request).await?.into_inner();
    follow(&mut client, &id, events(stream, |m| m.event), after, sink).await
}

/// The pipeline an execution runs, when it runs one and the executor still has it.
pub async fn definition(channel: &Channel, action: Option<&Action>) -> Option<Pipeline> {
    let Some(action::Kind::ExecutePipeline(p)) = action.and_then(|a| a.kind.as_ref()) else {
        return None;
    };
    let request = GetPipelineRequest {
        pipeline_id: p.pipeline_id.clone(),
        version: p.version,
    };
    let mut pipelines = PipelineServiceClient::new(channel.clone());
    match pipelines.get_pipeline(request).await {
        Ok(response) => response.into_inner().pipeline,
        // The view does without: the node table still lists every node that started.
        Err(_) => None,
    }
}

/// `execution ID  pipeline health-check v2` (or the action, for a single action).
pub fn title(id: &str, action: Option<&Action>, pipeline: Option<&Pipeline>) -> String {
    match pipeline {
        Some(p) => format!("execution {id}  pipeline {} v{}", p.id, p.version),
        None => format!("execution {id}  {}", crate::schedule_view::action(action)),
    }
}

async fn get(client: &mut ExecutorServiceClient<Channel>, id: &str) -> Result<Execution, Status> {
    let request = GetExecutionRequest {
        execution_id: id.to_owned(),
        idempotency_key: String::new(),
    };
    Ok(client
        .get_execution(request)
        .await?
        .into_inner()
        .execution
        .unwrap_or_default())
}

/// Whether a broken stream is worth attaching again.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
    )
}

/// Sends `stream`'s events (those after `last_seq`) to `sink` until the execution ends;
/// Ok only if it SUCCEEDED.
pub async fn follow(
    client: &mut ExecutorServiceClient<Channel>,
    id: &str,
    mut stream: Events,
    mut last_seq: u64,
    mut sink: Sink,
) -> Result<(), CliError> {
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut breaks = 0;
    let (status, error) = loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = ticker.tick(), if sink.is_live() => {
                if let Sink::Live(view, screen) = &mut sink {
                    screen.draw(view)?;
                }
                continue;
            }
        };
        let problem = match next {
            Some(Ok(event)) => {
                if event.seq != 0 && event.seq <= last_seq {
                    continue;
                }
                last_seq = last_seq.max(event.seq);
                if breaks > 0 {
                    breaks = 0;
                    sink.note(String::new())?;
                }
                sink.event(&event)?;
                match event.kind {
                    Some(Kind::ExecutionFinished(f)) => break (f.status, f.error),
                    _ => continue,
                }
            }
            Some(Err(status)) if !transient(&status) => return Err(status.into()),
            Some(Err(status)) => format!("the stream broke ({})", status.message()),
            None => {
                // Ended without the last event (nothing after `after_seq`, or cut short):
                // a finished execution whose events were all seen is over.
                match get(client, id).await {
                    Ok(e) if is_final(e.status) && e.last_seq <= last_seq => {
                        break (e.status, e.error);
                    }
                    Ok(_) => "the stream ended early".to_owned(),
                    Err(status) if !transient(&status) => return Err(status.into()),
                    Err(status) => format!("the executor is unreachable ({})", status.message()),
                }
            }
        };
        breaks += 1;
        if breaks > MAX_REATTACH {
            return Err(anyhow::anyhow!(
                "{problem}; gave up following execution {id} after seq {last_seq}"
            )
            .into());
        }
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << (breaks - 1).min(5))
            .min(MAX_BACKOFF);
        sink.note(format!("{problem}; attaching again after seq {last_seq}"))?;
        tokio::time::sleep(backoff).await;
        let request = WatchExecutionRequest {
            execution_id: id.to_owned(),
            after_seq: last_seq,
        };
        stream = match client.watch_execution(request).await {
            Ok(response) => events(response.into_inner(), |m| m.event),
            Err(status) if !transient(&status) => return Err(status.into()),
            // Counted as one more break when the empty stream ends.
            Err(_) => Box::pin(tokio_stream::empty()),
        };
    };
    if let Sink::Live(view, screen) = &mut sink {
        // The node table says what events do not (nodes CANCELLED when the run failed).
        if let Ok(execution) = get(client, id).await {
            view.refresh(&execution);
        }
        view.set_note(String::new());
        screen.draw(view)?;
    }
    if status == ExecutionStatus::Succeeded as i32 {
        return Ok(());
    }
    let mut message = format!("execution {id} did not succeed: {}", exec_status(status));
    if !error.is_empty() {
        message.push_str(&format!(": {error}"));
    }
    Err(CliError::Unsuccessful(message))
}

fn is_final(status: i32) -> bool {
    ExecutionStatus::try_from(status).is_ok_and(|s| {
        !matches!(
            s,
            ExecutionStatus::Unspecified | ExecutionStatus::Pending | ExecutionStatus::Running
        )
    })
}
