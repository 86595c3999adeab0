//! The command line as clap types: global flags, the command tree, and the few value enums
//! that map one-to-one onto proto enums. Parsing only; the commands live in `schedule.rs`,
//! `run.rs`, `pipeline.rs`, `execution.rs` and `dev.rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use almanac_proto::executor::v1::ExecutionStatus;
use almanac_proto::scheduler::v1::{Misfire, OverlapPolicy, RunStatus, ScheduleState};
use almanac_scheduler::telemetry::LogFormat;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::spec_args::{ActionArgs, SpecArgs, parse_rfc3339, parse_tz};

/// Almanac: a durable scheduler and executor, and their command-line client.
#[derive(Debug, Parser)]
#[command(name = "almanac", version, propagate_version = true)]
pub struct Cli {
    /// The scheduler's gRPC endpoint.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL",
        env = "ALMANAC_SCHEDULER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub scheduler: String,
    /// The executor's gRPC endpoint.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "URL",
        env = "ALMANAC_EXECUTOR",
        default_value = "http://127.0.0.1:50052"
    )]
    pub executor: String,
    /// How to print results: aligned text for people, canonical proto3 JSON for scripts.
    #[arg(long, global = true, help_heading = "Global options", value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the scheduler and the executor in this process, on loopback, with SQLite files.
    Dev(DevArgs),
    /// Run the scheduler service alone (as `scheduler-svc`), sending to `--executor`.
    Scheduler(almanac_scheduler::standalone::ServeArgs),
    /// Run the executor service alone (as `executor-svc`).
    Executor(almanac_executor::standalone::ServeArgs),
    /// Create, inspect and drive schedules.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// Cancel and rerun the runs of schedules (`schedule runs` lists them).
    #[command(subcommand)]
    Run(RunCmd),
    /// Store, inspect, validate and run pipelines (DAGs of nodes) on the executor.
    #[command(subcommand)]
    Pipeline(PipelineCmd),
    /// Inspect, follow and cancel executions.
    #[command(subcommand)]
    Execution(ExecutionCmd),
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder of the two SQLite files (created if missing).
    #[arg(long, default_value = "./.almanac")]
    pub data_dir: PathBuf,
    /// Address the scheduler serves gRPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub scheduler_listen: SocketAddr,
    /// Address the executor serves gRPC on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub executor_listen: SocketAddr,
    /// Log format (logs go to stderr): text or json.
    #[arg(long, env = "ALMANAC_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// The executor's TOML configuration (secrets, SMTP profiles, allow-lists);
    /// `ALMANAC_SECRET_<NAME>` variables add secrets. Loopback is always allowed in dev.
    #[arg(long, env = "ALMANAC_EXECUTOR_CONFIG")]
    pub executor_config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCmd {
    /// Create a schedule from flags, or from a JSON CreateScheduleRequest with -f.
    Create(Box<CreateArgs>),
    /// List schedules by id.
    List(ListArgs),
    /// Show one schedule.
    Get { id: String },
    /// Stop new fires.
    Pause {
        id: String,
        /// Why.
        #[arg(long)]
        note: Option<String>,
        /// Who (default: $USER).
        #[arg(long, env = "USER", hide_env_values = true)]
        identity: Option<String>,
    },
    /// Restart fires from the next future fire time.
    Resume { id: String },
    /// Run the schedule's action now.
    Trigger {
        id: String,
        /// A retried trigger with the same request id returns the same run.
        #[arg(long)]
        request_id: Option<String>,
        /// Override the schedule's overlap policy for this run.
        #[arg(long, value_enum)]
        overlap: Option<OverlapArg>,
    },
    /// Delete a schedule and its ledger.
    Delete {
        id: String,
        /// Only if the schedule still has this etag.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Compute the next fire times of a stored schedule or of a spec given by flags.
    Preview(PreviewArgs),
    /// List a schedule's runs, newest first.
    Runs(RunsArgs),
    /// Write runs for the fires of a past range that have none, and run them at a bounded rate.
    Backfill(BackfillArgs),
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("when").required(true).multiple(false)))]
pub struct CreateArgs {
    /// The schedule's id (default: generated by the server).
    pub id: Option<String>,
    /// Read a JSON CreateScheduleRequest from this file ("-" for stdin) instead of flags.
    #[arg(short = 'f', long = "file", value_name = "FILE", group = "when",
          conflicts_with_all = ["tz", "offset", "url", "method", "headers", "json_body",
                                "http_timeout", "accepted_statuses", "name", "description",
                                "start", "end", "max_runs", "jitter", "timeout", "overlap",
                                "catchup_window", "misfire"])]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub action: ActionArgs,
    /// A human name.
    #[arg(long)]
    pub name: Option<String>,
    /// Free text.
    #[arg(long)]
    pub description: Option<String>,
    /// No fire before this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub start: Option<pbjson_types::Timestamp>,
    /// No fire after this instant (RFC 3339).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub end: Option<pbjson_types::Timestamp>,
    /// At most this many dispatched runs.
    #[arg(long, allow_negative_numbers = true)]
    pub max_runs: Option<i64>,
    /// Delay each fire by a deterministic amount in [0, jitter), e.g. 5s.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub jitter: Option<std::time::Duration>,
    /// Time allowed to one attempt, e.g. 2m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// What a fire does while a run is in flight.
    #[arg(long, value_enum)]
    pub overlap: Option<OverlapArg>,
    /// Missed fires younger than this are caught up, e.g. 1m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub catchup_window: Option<std::time::Duration>,
    /// What happens to missed fires inside the catch-up window.
    #[arg(long, value_enum)]
    pub misfire: Option<MisfireArg>,
    /// A retried create with the same request id returns the same schedule.
    #[arg(long)]
    pub request_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only schedules in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// At most this many per page.
    #[arg(long, allow_negative_numbers = true)]
    pub page_size: Option<i32>,
    /// Continue from a previous page.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow page tokens to the end.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("when").required(true).multiple(false)))]
pub struct PreviewArgs {
    /// A stored schedule to preview (its spec and bounds).
    #[arg(group = "when", conflicts_with_all = ["tz", "offset"])]
    pub id: Option<String>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Fires at or after this instant (RFC 3339; default: now).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub from: Option<pbjson_types::Timestamp>,
    /// How many fire times.
    #[arg(long, allow_negative_numbers = true)]
    pub count: Option<i32>,
    /// Also show each time in this IANA zone.
    #[arg(long, value_name = "ZONE", value_parser = parse_tz)]
    pub tz_display: Option<chrono_tz::Tz>,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    pub id: String,
    /// Only runs in this status.
    #[arg(long, value_enum)]
    pub status: Option<RunStatusArg>,
    /// At most this many.
    #[arg(long, allow_negative_numbers = true)]
    pub page_size: Option<i32>,
    /// Continue from a previous page.
    #[arg(long)]
    pub page_token: Option<String>,
}

#[derive(Debug, Args)]
pub struct BackfillArgs {
    pub id: String,
    /// The first nominal time considered (inclusive).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub from: pbjson_types::Timestamp,
    /// The last nominal time considered (inclusive; not in the future).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub to: pbjson_types::Timestamp,
    /// allow-all (default): every run dispatched at the rate; buffer-all: one at a time,
    /// oldest first.
    #[arg(long, value_enum)]
    pub overlap: Option<BackfillOverlapArg>,
    /// Backfill runs started per second at most (default 10, at most 1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_second: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum RunCmd {
    /// Cancel a run: a waiting one ends cancelled at once, a running one is asked to stop.
    Cancel {
        id: String,
        /// Cut the work in flight instead of letting it end.
        #[arg(long)]
        terminate: bool,
        /// Recorded on the run.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a finished run again, as a new attempt dispatched now.
    Rerun { id: String },
}

#[derive(Debug, Subcommand)]
pub enum PipelineCmd {
    /// Store a new pipeline (version 1) from a YAML or JSON file ("-" for stdin).
    Create {
        /// A `Pipeline` message as YAML or JSON (proto field names, camelCase or snake_case).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Store a new version of a pipeline from a file; running executions keep theirs.
    Update {
        /// A `Pipeline` message as YAML or JSON; its `id` names the pipeline.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
        /// Only if the latest stored version is this one.
        #[arg(long, value_name = "N")]
        expected_version: Option<i64>,
    },
    /// Show a pipeline: its nodes (kind, join, retry, timeout) and edges.
    #[command(disable_version_flag = true)]
    Get {
        /// The pipeline's id.
        id: String,
        /// This version (default: the latest).
        #[arg(long, value_name = "N")]
        version: Option<i64>,
    },
    /// List pipelines (their latest versions) by id.
    List {
        /// At most this many per page.
        #[arg(long, allow_negative_numbers = true)]
        page_size: Option<i32>,
        /// Continue from a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Delete a pipeline and all its versions.
    Delete {
        /// The pipeline's id.
        id: String,
    },
    /// Ask the executor whether a file is a valid pipeline; exit 2 if it is not.
    Validate {
        /// A `Pipeline` message as YAML or JSON ("-" for stdin).
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file: PathBuf,
    },
    /// Run a stored pipeline and follow its nodes; exit 0 only if it succeeds.
    Run(PipelineRunArgs),
}

#[derive(Debug, Args)]
#[command(disable_version_flag = true)]
pub struct PipelineRunArgs {
    /// The pipeline's id.
    pub id: String,
    /// Run this version (default: the latest when the execution starts).
    #[arg(long, value_name = "N")]
    pub version: Option<i64>,
    /// The execution's input, a JSON object (seen by nodes as `input`).
    #[arg(long, value_name = "JSON", conflicts_with = "input_file")]
    pub input: Option<String>,
    /// Read the input object from a JSON or YAML file ("-" for stdin).
    #[arg(long, value_name = "FILE")]
    pub input_file: Option<PathBuf>,
    /// The idempotency key: the same key with the same request attaches to the execution
    /// already started (default: a new key).
    #[arg(long)]
    pub key: Option<String>,
    /// Print the execution id and return without following it.
    #[arg(long = "no-watch", action = clap::ArgAction::SetFalse)]
    pub watch: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExecutionCmd {
    /// Show an execution: status, result, error and its node table.
    Get { id: String },
    /// Follow an execution until it ends; exit 0 only if it succeeds. On a terminal, a
    /// table of its nodes redrawn in place; otherwise one line per event.
    Watch {
        id: String,
        /// Only events after this seq (the line-per-event output).
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
    },
    /// Ask an execution to stop.
    Cancel {
        id: String,
        /// Abort work in flight now instead of letting it end.
        #[arg(long)]
        terminate: bool,
        /// Recorded on the execution.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List executions, newest first.
    List {
        /// Only executions in this status.
        #[arg(long, value_enum)]
        status: Option<ExecStatusArg>,
        /// Only executions started for this schedule.
        #[arg(long)]
        schedule: Option<String>,
        /// At most this many.
        #[arg(long, allow_negative_numbers = true)]
        page_size: Option<i32>,
        /// Continue from a previous page.
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OverlapArg {
    Skip,
    AllowAll,
    BufferOne,
    BufferAll,
    CancelOther,
    TerminateOther,
}

impl From<OverlapArg> for OverlapPolicy {
    fn from(arg: OverlapArg) -> Self {
        match arg {
            OverlapArg::Skip => Self::Skip,
            OverlapArg::AllowAll => Self::AllowAll,
            OverlapArg::BufferOne => Self::BufferOne,
            OverlapArg::BufferAll => Self::BufferAll,
            OverlapArg::CancelOther => Self::CancelOther,
            OverlapArg::TerminateOther => Self::TerminateOther,
        }
    }
}

/// The two overlap policies a backfill accepts.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackfillOverlapArg {
    AllowAll,
    BufferAll,
}

impl From<BackfillOverlapArg> for OverlapPolicy {
    fn from(arg: BackfillOverlapArg) -> Self {
        match arg {
            BackfillOverlapArg::AllowAll => Self::AllowAll,
            BackfillOverlapArg::BufferAll => Self::BufferAll,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MisfireArg {
    RunOnce,
    RunAll,
    Skip,
}

impl From<MisfireArg> for Misfire {
    fn from(arg: MisfireArg) -> Self {
        match arg {
            MisfireArg::RunOnce => Self::RunOnce,
            MisfireArg::RunAll => Self::RunAll,
            MisfireArg::Skip => Self::Skip,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StateArg {
    Active,
    Paused,
    Completed,
}

impl From<StateArg> for ScheduleState {
    fn from(arg: StateArg) -> Self {
        match arg {
            StateArg::Active => Self::Active,
            StateArg::Paused => Self::Paused,
            StateArg::Completed => Self::Completed,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RunStatusArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    Buffered,
    Skipped,
    Missed,
}

impl From<RunStatusArg> for RunStatus {
    fn from(arg: RunStatusArg) -> Self {
        match arg {
            RunStatusArg::Pending => Self::Pending,
            RunStatusArg::Running => Self::Running,
            RunStatusArg::Succeeded => Self::Succeeded,
            RunStatusArg::Failed => Self::Failed,
            RunStatusArg::TimedOut => Self::TimedOut,
            RunStatusArg::Cancelled => Self::Cancelled,
            RunStatusArg::Buffered => Self::Buffered,
            RunStatusArg::Skipped => Self::Skipped,
            RunStatusArg::Missed => Self::Missed,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExecStatusArg {
    Pending,
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
}

impl From<ExecStatusArg> for ExecutionStatus {
    fn from(arg: ExecStatusArg) -> Self {
        match arg {
            ExecStatusArg::Pending => Self::Pending,
            ExecStatusArg::Running => Self::Running,
            ExecStatusArg::Succeeded => Self::Succeeded,
            ExecStatusArg::Failed => Self::Failed,
            ExecStatusArg::TimedOut => Self::TimedOut,
            ExecStatusArg::Cancelled => Self::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_tree_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("almanac").chain(args.iter().copied()))
    }

    #[test]
    fn create_needs_exactly_one_spec_or_a_file() {
        let url = ["--url", "http://x/"];
        assert!(parse(&[&["schedule", "create", "a"], &url[..]].concat()).is_err());
        let both = [
            &["schedule", "create", "--cron", "* * * * *", "--every", "1s"],
            &url[..],
        ];
        assert!(parse(&both.concat()).is_err());
        assert!(parse(&[&["schedule", "create", "--every", "1s"], &url[..]].concat()).is_ok());
        assert!(parse(&["schedule", "create", "-f", "x.json"]).is_ok());
        assert!(parse(&["schedule", "create", "-f", "x.json", "--cron", "* * * * *"]).is_err());
        assert!(parse(&["schedule", "create", "-f", "x.json", "--method", "POST"]).is_err());
        assert!(parse(&["schedule", "create", "-f", "x.json", "--tz", "UTC"]).is_err());
    }

    #[test]
    fn create_from_flags_needs_a_url() {
        assert!(parse(&["schedule", "create", "--every", "1s"]).is_err());
    }

    #[test]
    fn zone_and_offset_need_their_spec() {
        let base = ["schedule", "preview", "--every", "1m"];
        assert!(parse(&[&base[..], &["--tz", "UTC"]].concat()).is_err());
        assert!(parse(&[&base[..], &["--offset", "5s"]].concat()).is_ok());
        let cron = ["schedule", "preview", "--cron", "* * * * *"];
        assert!(parse(&[&cron[..], &["--tz", "UTC"]].concat()).is_ok());
        assert!(parse(&[&cron[..], &["--offset", "5s"]].concat()).is_err());
        assert!(parse(&["schedule", "preview", "walk", "--tz", "UTC"]).is_err());
    }

    #[test]
    fn pipeline_run_watches_unless_told_not_to_and_takes_one_input() {
        let run = |args: &[&str]| match parse(&[&["pipeline", "run", "p"], args].concat()) {
            Ok(Cli {
                command: Command::Pipeline(PipelineCmd::Run(args)),
                ..
            }) => Ok(args),
            Ok(other) => panic!("not a pipeline run: {other:?}"),
            Err(e) => Err(e),
        };
        assert!(run(&[]).unwrap().watch);
        assert!(!run(&["--no-watch"]).unwrap().watch);
        assert!(run(&["--input", "{}", "--input-file", "x.json"]).is_err());
        assert!(parse(&["pipeline", "create"]).is_err(), "-f is required");
    }

    #[test]
    fn preview_takes_an_id_or_a_spec_not_both() {
        assert!(parse(&["schedule", "preview", "walk"]).is_ok());
        assert!(parse(&["schedule", "preview", "walk", "--cron", "* * * * *"]).is_err());
        assert!(parse(&["schedule", "preview"]).is_err());
    }
}
