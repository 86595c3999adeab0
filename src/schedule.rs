//! `almanac schedule ...`: one function per subcommand, each a single SchedulerService
//! call (two for `list --all` and a zoned `preview ID`), printed as text or JSON.

use almanac_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use almanac_proto::scheduler::v1::{
    BackfillScheduleRequest, CatchupPolicy, CreateScheduleRequest, DeleteScheduleRequest,
    GetScheduleRequest, ListRunsRequest, ListSchedulesRequest, ListSchedulesResponse, Misfire,
    OverlapPolicy, PauseScheduleRequest, PreviewScheduleRequest, ResumeScheduleRequest, RunStatus,
    Schedule, ScheduleState, TriggerScheduleRequest,
};
use tonic::transport::Channel;

use crate::cli::{BackfillArgs, CreateArgs, ListArgs, Output, PreviewArgs, RunsArgs, ScheduleCmd};
use crate::error::CliError;
use crate::output::{Table, outln, print_json, time, time_in_zone};
use crate::schedule_view::{self as view, print_schedule};

/// Pages `list --all` follows at most, so a server that never ends a listing cannot
/// keep the command running forever.
const MAX_PAGES: usize = 10_000;

/// Runs one `schedule` subcommand against the scheduler at `endpoint`.
pub async fn run(cmd: ScheduleCmd, endpoint: &str, out: Output) -> Result<(), CliError> {
    if let ScheduleCmd::Create(args) = &cmd {
        // Read the request before connecting: a bad file is a usage error either way.
        let request = create_request(args)?;
        let mut client = crate::client::scheduler(endpoint).await?;
        let response = client.create_schedule(request).await?.into_inner();
        return show_schedule(&response, response.schedule.as_ref(), out);
    }
    let mut client = crate::client::scheduler(endpoint).await?;
    match cmd {
        ScheduleCmd::Create(_) => unreachable!("handled above"),
        ScheduleCmd::List(args) => list(&mut client, args, out).await,
        ScheduleCmd::Get { id } => {
            let response = client
                .get_schedule(GetScheduleRequest { schedule_id: id })
                .await?
                .into_inner();
            show_schedule(&response, response.schedule.as_ref(), out)
        }
        ScheduleCmd::Pause { id, note, identity } => {
            let request = PauseScheduleRequest {
                schedule_id: id,
                note: note.unwrap_or_default(),
                identity: identity.unwrap_or_default(),
            };
            let response = client.pause_schedule(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let s = response.schedule.unwrap_or_default();
            outln!("schedule {}: {}", s.id, view::state(&s));
            Ok(())
        }
        ScheduleCmd::Resume { id } => {
            let request = ResumeScheduleRequest { schedule_id: id };
            let response = client.resume_schedule(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let s = response.schedule.unwrap_or_default();
            outln!(
                "schedule {}: {}, next fire {}",
                s.id,
                view::state(&s),
                time(s.next_fire_time.as_ref())
            );
            Ok(())
        }
        ScheduleCmd::Trigger {
            id,
            request_id,
            overlap,
        } => {
            let request = TriggerScheduleRequest {
                schedule_id: id,
                request_id: request_id.unwrap_or_default(),
                overlap_policy: overlap.map_or(0, |o| OverlapPolicy::from(o) as i32),
            };
            let response = client.trigger_schedule(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let run = response.run.unwrap_or_default();
            let mut line = format!("run {}: {}", run.id, view::run_status(run.status));
            if !run.reason.is_empty() {
                line.push_str(&format!(" ({})", run.reason));
            }
            outln!("{line}");
            Ok(())
        }
        ScheduleCmd::Delete { id, etag } => {
            let request = DeleteScheduleRequest {
                schedule_id: id.clone(),
                etag: etag.unwrap_or_default(),
            };
            let response = client.delete_schedule(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            outln!("schedule {id}: deleted");
            Ok(())
        }
        ScheduleCmd::Preview(args) => preview(&mut client, args, out).await,
        ScheduleCmd::Runs(args) => runs(&mut client, args, out).await,
        ScheduleCmd::Backfill(args) => backfill(&mut client, args, out).await,
    }
}

/// A response holding one schedule: the whole response as JSON, the schedule as text.
fn show_schedule(
    response: &impl serde::Serialize,
    schedule: Option<&Schedule>,
    out: Output,
) -> Result<(), CliError> {
    match out {
        Output::Json => print_json(response)?,
        Output::Text => print_schedule(schedule.unwrap_or(&Schedule::default())),
    }
    Ok(())
}

/// The request `schedule create` sends: from `-f FILE`, or built from the flags.
fn create_request(args: &CreateArgs) -> Result<CreateScheduleRequest, CliError> {
    let mut request = match &args.file {
        Some(path) => read_request(path)?,
        None => CreateScheduleRequest {
            schedule: Some(schedule_from_flags(args)),
            ..CreateScheduleRequest::default()
        },
    };
    if let Some(id) = &args.id {
        request.schedule_id = id.clone();
    }
    if let Some(request_id) = &args.request_id {
        request.request_id = request_id.clone();
    }
    Ok(request)
}

fn read_request(path: &std::path::Path) -> Result<CreateScheduleRequest, CliError> {
    let text = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| CliError::Usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Usage(format!(
            "{} is not a JSON CreateScheduleRequest: {e}",
            path.display()
        ))
    })
}

fn schedule_from_flags(args: &CreateArgs) -> Schedule {
    let catchup =
        (args.catchup_window.is_some() || args.misfire.is_some()).then(|| CatchupPolicy {
            window: args.catchup_window.map(Into::into),
            misfire: args.misfire.map_or(0, |m| Misfire::from(m) as i32),
            max_catchup: 0,
        });
    Schedule {
        display_name: args.name.clone().unwrap_or_default(),
        description: args.description.clone().unwrap_or_default(),
        spec: args.spec.to_spec(),
        action: args.action.to_action(),
        start_time: args.start,
        end_time: args.end,
        max_runs: args.max_runs,
        jitter: args.jitter.map(Into::into),
        overlap_policy: args.overlap.map_or(0, |o| OverlapPolicy::from(o) as i32),
        catchup,
        timeout: args.timeout.map(Into::into),
        ..Schedule::default()
    }
}

async fn list(
    client: &mut SchedulerServiceClient<Channel>,
    args: ListArgs,
    out: Output,
) -> Result<(), CliError> {
    let mut request = ListSchedulesRequest {
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
        state: args.state.map_or(0, |s| ScheduleState::from(s) as i32),
    };
    let mut all = ListSchedulesResponse::default();
    for _ in 0..MAX_PAGES {
        let page = client.list_schedules(request.clone()).await?.into_inner();
        all.schedules.extend(page.schedules);
        all.next_page_token = page.next_page_token;
        if !args.all || all.next_page_token.is_empty() {
            break;
        }
        request.page_token = all.next_page_token.clone();
    }
    if out == Output::Json {
        return Ok(print_json(&all)?);
    }
    view::schedule_table(&all.schedules).print();
    if !all.next_page_token.is_empty() {
        outln!("more: --page-token {} (or --all)", all.next_page_token);
    }
    Ok(())
}

async fn preview(
    client: &mut SchedulerServiceClient<Channel>,
    args: PreviewArgs,
    out: Output,
) -> Result<(), CliError> {
    let request = PreviewScheduleRequest {
        spec: args.spec.to_spec(),
        schedule_id: args.id.clone().unwrap_or_default(),
        start_time: args.from,
        count: args.count.unwrap_or(0),
    };
    let response = client.preview_schedule(request).await?.into_inner();
    if out == Output::Json {
        return Ok(print_json(&response)?);
    }
    // The zone the spec fires in: from the flags, or from the stored schedule.
    let spec_zone = match &args.id {
        Some(id) => {
            let request = GetScheduleRequest {
                schedule_id: id.clone(),
            };
            let stored = client.get_schedule(request).await?.into_inner().schedule;
            view::spec_zone(stored.and_then(|s| s.spec).as_ref())
        }
        None => view::spec_zone(args.spec.to_spec().as_ref()),
    };
    let mut zones: Vec<chrono_tz::Tz> = spec_zone.into_iter().collect();
    if let Some(tz) = args.tz_display.filter(|tz| !zones.contains(tz)) {
        zones.push(tz);
    }
    let header: Vec<&str> = std::iter::once("UTC")
        .chain(zones.iter().map(|z| z.name()))
        .collect();
    let mut table = Table::new(&header);
    for t in &response.fire_times {
        let mut row = vec![time(Some(t))];
        row.extend(zones.iter().map(|z| time_in_zone(t, *z)));
        table.row(row);
    }
    table.print();
    Ok(())
}

async fn runs(
    client: &mut SchedulerServiceClient<Channel>,
    args: RunsArgs,
    out: Output,
) -> Result<(), CliError> {
    let request = ListRunsRequest {
        schedule_id: args.id,
        page_size: args.page_size.unwrap_or(0),
        page_token: args.page_token.unwrap_or_default(),
        status: args.status.map_or(0, |s| RunStatus::from(s) as i32),
    };
    let response = client.list_runs(request).await?.into_inner();
    if out == Output::Json {
        return Ok(print_json(&response)?);
    }
    view::run_table(&response.runs).print();
    if !response.next_page_token.is_empty() {
        outln!("more: --page-token {}", response.next_page_token);
    }
    Ok(())
}

async fn backfill(
    client: &mut SchedulerServiceClient<Channel>,
    args: BackfillArgs,
    out: Output,
) -> Result<(), CliError> {
    let request = BackfillScheduleRequest {
        schedule_id: args.id,
        start_time: Some(args.from),
        end_time: Some(args.to),
        overlap_policy: args.overlap.map_or(0, |o| OverlapPolicy::from(o) as i32),
        max_per_second: args.max_per_second.unwrap_or(0),
    };
    let response = client.backfill_schedule(request).await?.into_inner();
    if out == Output::Json {
        return Ok(print_json(&response)?);
    }
    let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    outln!(
        "{} written, {} already had a run",
        plural(response.created, "run", "runs"),
        plural(response.existing, "fire", "fires")
    );
    for id in &response.run_ids {
        outln!("{id}");
    }
    let unlisted = response.created - response.run_ids.len() as i64;
    if unlisted > 0 {
        outln!("(and {unlisted} more, not listed)");
    }
    Ok(())
}
