//! `almanac pipeline ...`: create, update, get, list, delete and validate, each one call to
//! the executor's PipelineService; and run, which starts an `execute_pipeline` action with
//! ExecutorService.Execute and follows it (`live.rs`) until it ends.

use std::path::Path;

use almanac_proto::executor::v1::executor_service_client::ExecutorServiceClient;
use almanac_proto::executor::v1::{
    Action, CreatePipelineRequest, DeletePipelineRequest, ExecutePipelineAction, ExecuteRequest,
    GetPipelineRequest, ListPipelinesRequest, Pipeline, UpdatePipelineRequest,
    ValidatePipelineRequest, action,
};
use tokio_stream::StreamExt as _;

use crate::cli::{Output, PipelineCmd, PipelineRunArgs};
use crate::error::CliError;
use crate::live::{self, Sink};
use crate::output::{outln, print_json, print_json_line};
use crate::pipeline_file::{Format, load_input, load_pipeline, parse_input};
use crate::pipeline_view::{pipeline_table, render_pipeline};
use crate::watch_view::View;

/// Runs one `pipeline` subcommand against the executor at `endpoint`.
pub async fn run(cmd: PipelineCmd, endpoint: &str, out: Output) -> Result<(), CliError> {
    // Files are read before connecting: a bad file is a usage error either way.
    match cmd {
        PipelineCmd::Create { file } => {
            let pipeline = load_pipeline(&file)?;
            let request = CreatePipelineRequest {
                pipeline_id: pipeline.id.clone(),
                pipeline: Some(pipeline),
            };
            let mut client = crate::client::pipelines(endpoint).await?;
            let response = client.create_pipeline(request).await?.into_inner();
            stored(&response, response.pipeline.as_ref(), out)
        }
        PipelineCmd::Update {
            file,
            expected_version,
        } => {
            let request = UpdatePipelineRequest {
                pipeline: Some(load_pipeline(&file)?),
                update_mask: None,
                expected_version: expected_version.unwrap_or(0),
            };
            let mut client = crate::client::pipelines(endpoint).await?;
            let response = client.update_pipeline(request).await?.into_inner();
            stored(&response, response.pipeline.as_ref(), out)
        }
        PipelineCmd::Get { id, version } => {
            let request = GetPipelineRequest {
                pipeline_id: id,
                version: version.unwrap_or(0),
            };
            let mut client = crate::client::pipelines(endpoint).await?;
            let response = client.get_pipeline(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            for line in render_pipeline(&response.pipeline.unwrap_or_default()) {
                outln!("{line}");
            }
            Ok(())
        }
        PipelineCmd::List {
            page_size,
            page_token,
        } => {
            let request = ListPipelinesRequest {
                page_size: page_size.unwrap_or(0),
                page_token: page_token.unwrap_or_default(),
            };
            let mut client = crate::client::pipelines(endpoint).await?;
            let response = client.list_pipelines(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            pipeline_table(&response.pipelines).print();
            if !response.next_page_token.is_empty() {
                outln!("more: --page-token {}", response.next_page_token);
            }
            Ok(())
        }
        PipelineCmd::Delete { id } => {
            let request = DeletePipelineRequest {
                pipeline_id: id.clone(),
            };
            let mut client = crate::client::pipelines(endpoint).await?;
            let response = client.delete_pipeline(request).await?.into_inner();
            if out == Output::Json {
                return Ok(print_json(&response)?);
            }
            outln!("pipeline {id}: deleted");
            Ok(())
        }
        PipelineCmd::Validate { file } => validate(&file, endpoint, out).await,
        PipelineCmd::Run(args) => run_pipeline(args, endpoint, out).await,
    }
}

/// The answer of create and update: the response as JSON, one line as text.
fn stored(
    response: &impl serde::Serialize,
    pipeline: Option<&Pipeline>,
    out: Output,
) -> Result<(), CliError> {
    if out == Output::Json {
        return Ok(print_json(response)?);
    }
    let p = pipeline.cloned().unwrap_or_default();
    outln!(
        "pipeline {} version {}: {} nodes, {} edges",
        p.id,
        p.version,
        p.nodes.len(),
        p.edges.len()
    );
    Ok(())
}

/// Asks the executor (it alone knows its limits, secrets and CEL) and prints every
/// problem as `field: description`; invalid is exit 2.
async fn validate(file: &Path, endpoint: &str, out: Output) -> Result<(), CliError> {
    let request = ValidatePipelineRequest {
        pipeline: Some(load_pipeline(file)?),
    };
    let mut client = crate::client::pipelines(endpoint).await?;
    let response = client.validate_pipeline(request).await?.into_inner();
    match out {
        Output::Json => print_json(&response)?,
        Output::Text if response.problems.is_empty() => outln!("valid"),
        Output::Text => {
            for p in &response.problems {
                // A long description (CEL points at the column) continues indented.
                let mut lines = p.description.lines();
                outln!("{}: {}", p.field, lines.next().unwrap_or_default());
                for more in lines {
                    outln!("  {more}");
                }
            }
        }
    }
    match response.problems.len() {
        0 => Ok(()),
        n => Err(CliError::Invalid(format!(
            "{} is not a valid pipeline: {n} problem{}",
            file.display(),
            if n == 1 { "" } else { "s" }
        ))),
    }
}

/// The action `pipeline run` starts.
fn run_action(args: &PipelineRunArgs) -> Result<Action, CliError> {
    let input = match (&args.input, &args.input_file) {
        (Some(text), _) => Some(
            parse_input(text, Format::detect(Path::new(""), text))
                .map_err(|e| CliError::Usage(format!("--input: {e}")))?,
        ),
        (None, Some(path)) => Some(load_input(path)?),
        (None, None) => None,
    };
    Ok(Action {
        kind: Some(action::Kind::ExecutePipeline(ExecutePipelineAction {
            pipeline_id: args.id.clone(),
            version: args.version.unwrap_or(0),
            input,
        })),
    })
}

/// Starts (or, with a known key, attaches to) an execution of the pipeline, prints its
/// id and follows it unless `--no-watch`.
async fn run_pipeline(args: PipelineRunArgs, endpoint: &str, out: Output) -> Result<(), CliError> {
    let action = run_action(&args)?;
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
    let request = ExecuteRequest {
        idempotency_key: key.clone(),
        action: Some(action.clone()),
        deadline: None,
        origin: None,
        after_seq: 0,
    };
    let channel = crate::client::executor_channel(endpoint).await?;
    let mut client = ExecutorServiceClient::new(channel.clone());
    let mut stream = live::events(client.execute(request).await?.into_inner(), |m| m.event);
    let first = match stream.next().await {
        Some(Ok(event)) => event,
        Some(Err(status)) => return Err(status.into()),
        None => {
            let message = "the executor ended the stream before the execution started";
            return Err(anyhow::anyhow!(message).into());
        }
    };
    let id = first.execution_id.clone();
    match out {
        Output::Text => outln!("execution {id}  key {key}"),
        Output::Json if !args.watch => print_json_line(&first)?,
        Output::Json => {}
    }
    if !args.watch {
        return Ok(());
    }
    let mut sink = Sink::choose(out, View::default);
    if let Sink::Live(view, _) = &mut sink {
        let definition = live::definition(&channel, Some(&action)).await;
        **view = View::new(live::title(&id, Some(&action), definition.as_ref()));
        if let Some(p) = &definition {
            view.add_pipeline(p);
        }
    }
    let stream = Box::pin(tokio_stream::once(Ok(first)).chain(stream));
    live::follow(&mut client, &id, stream, 0, sink).await
}
