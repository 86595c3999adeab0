//! `almanac run ...`: cancel and rerun one run of a schedule (a ledger row), each a single
//! SchedulerService call, printed as text (the run's `schedule runs` row) or JSON.

use almanac_proto::executor::v1::CancelMode;
use almanac_proto::scheduler::v1::{CancelRunRequest, RerunRunRequest, RunStatus};

use crate::cli::{Output, RunCmd};
use crate::error::CliError;
use crate::output::print_json;
use crate::schedule_view::print_run;

/// Runs one `run` subcommand against the scheduler at `endpoint`.
pub async fn run(cmd: RunCmd, endpoint: &str, out: Output) -> Result<(), CliError> {
    let mut client = crate::client::scheduler(endpoint).await?;
    match cmd {
        RunCmd::Cancel {
            id,
            terminate,
            reason,
        } => {
            let mode = if terminate {
                CancelMode::Terminate
            } else {
                CancelMode::Graceful
            };
            let request = CancelRunRequest {
                run_id: id,
                mode: mode as i32,
                reason: reason.unwrap_or_default(),
            };
            let response = client.cancel_run(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let run = response.run.unwrap_or_default();
            // A running run ends when its execution does: say the request was taken.
            let note = match RunStatus::try_from(run.status) {
                Ok(RunStatus::Pending | RunStatus::Running | RunStatus::Buffered) => {
                    let mode = if terminate { "terminate" } else { "graceful" };
                    format!("cancel requested ({mode})")
                }
                _ => String::new(),
            };
            print_run(&run, &note);
            Ok(())
        }
        RunCmd::Rerun { id } => {
            let request = RerunRunRequest { run_id: id };
            let response = client.rerun_run(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            let run = response.run.unwrap_or_default();
            print_run(&run, &format!("attempt {}", run.attempt));
            Ok(())
        }
    }
}
