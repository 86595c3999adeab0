//! `SchedulerService` handlers: convert the request, call the engine, convert the answer.

use std::sync::Arc;

use almanac_proto::scheduler::v1::{self as pb, scheduler_service_server::SchedulerService};
use almanac_proto::status::invalid_argument;
use almanac_proto::time::ms_to_timestamp;
use tonic::{Request, Response, Status};

use super::convert::{
    Problems, overlap_from_proto, run_to_proto, schedule_input, schedule_to_proto, spec_from_proto,
    state_from_proto, status_from_proto,
};
use crate::engine::Engine;
use crate::model::CancelMode;

/// The handlers, over the engine.
#[derive(Clone)]
pub struct SchedulerApi {
    engine: Arc<Engine>,
}

impl SchedulerApi {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self { engine }
    }
}

fn required(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(invalid_argument(&[
            almanac_proto::action::FieldViolation::new(field, "required"),
        ]))
    } else {
        Ok(())
    }
}

fn some_string(s: String) -> Option<String> {
    Some(s).filter(|s| !s.is_empty())
}

#[tonic::async_trait]
impl SchedulerService for SchedulerApi {
    async fn create_schedule(
        &self,
        request: Request<pb::CreateScheduleRequest>,
    ) -> Result<Response<pb::CreateScheduleResponse>, Status> {
        let req = request.into_inner();
        let Some(msg) = req.schedule.as_ref() else {
            return Err(invalid_argument(&[
                almanac_proto::action::FieldViolation::new("schedule", "required"),
            ]));
        };
        let id = match (req.schedule_id.as_str(), msg.id.as_str()) {
            ("", other) | (other, "") => other.to_string(),
            (a, b) if a == b => a.to_string(),
            _ => {
                return Err(invalid_argument(&[
                    almanac_proto::action::FieldViolation::new(
                        "schedule.id",
                        "differs from schedule_id; set one of them",
                    ),
                ]));
            }
        };
        let input = schedule_input(msg, "schedule").map_err(|v| invalid_argument(&v))?;
        let schedule = self
            .engine
            .create_schedule(id, input, some_string(req.request_id))
            .await?;
        Ok(Response::new(pb::CreateScheduleResponse {
            schedule: Some(schedule_to_proto(&schedule)),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<pb::GetScheduleRequest>,
    ) -> Result<Response<pb::GetScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let schedule = self.engine.get_schedule(&req.schedule_id).await?;
        Ok(Response::new(pb::GetScheduleResponse {
            schedule: Some(schedule_to_proto(&schedule)),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let req = request.into_inner();
        let mut p = Problems::default();
        let state = p
            .enumeration::<pb::ScheduleState>("state", req.state)
            .and_then(state_from_proto);
        p.finish(()).map_err(|v| invalid_argument(&v))?;
        let (schedules, next) = self
            .engine
            .list_schedules(state, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListSchedulesResponse {
            schedules: schedules.iter().map(schedule_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<pb::UpdateScheduleRequest>,
    ) -> Result<Response<pb::UpdateScheduleResponse>, Status> {
        let req = request.into_inner();
        let Some(msg) = req.schedule.as_ref() else {
            return Err(invalid_argument(&[
                almanac_proto::action::FieldViolation::new("schedule", "required"),
            ]));
        };
        required("schedule.id", &msg.id)?;
        let input = schedule_input(msg, "schedule").map_err(|v| invalid_argument(&v))?;
        let mask = req.update_mask.map(|m| m.paths).unwrap_or_default();
        let schedule = self
            .engine
            .update_schedule(&msg.id, &msg.etag, input, &mask)
            .await?;
        Ok(Response::new(pb::UpdateScheduleResponse {
            schedule: Some(schedule_to_proto(&schedule)),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<pb::DeleteScheduleRequest>,
    ) -> Result<Response<pb::DeleteScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        self.engine
            .delete_schedule(&req.schedule_id, &req.etag)
            .await?;
        Ok(Response::new(pb::DeleteScheduleResponse {}))
    }

    async fn pause_schedule(
        &self,
        request: Request<pb::PauseScheduleRequest>,
    ) -> Result<Response<pb::PauseScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let schedule = self
            .engine
            .pause_schedule(&req.schedule_id, req.note, req.identity)
            .await?;
        Ok(Response::new(pb::PauseScheduleResponse {
            schedule: Some(schedule_to_proto(&schedule)),
        }))
    }

    async fn resume_schedule(
        &self,
        request: Request<pb::ResumeScheduleRequest>,
    ) -> Result<Response<pb::ResumeScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let schedule = self.engine.resume_schedule(&req.schedule_id).await?;
        Ok(Response::new(pb::ResumeScheduleResponse {
            schedule: Some(schedule_to_proto(&schedule)),
        }))
    }

    async fn trigger_schedule(
        &self,
        request: Request<pb::TriggerScheduleRequest>,
    ) -> Result<Response<pb::TriggerScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let mut p = Problems::default();
        let overlap = p
            .enumeration::<pb::OverlapPolicy>("overlap_policy", req.overlap_policy)
            .map(overlap_from_proto);
        p.finish(()).map_err(|v| invalid_argument(&v))?;
        let run = self
            .engine
            .trigger_schedule(&req.schedule_id, some_string(req.request_id), overlap)
            .await?;
        Ok(Response::new(pb::TriggerScheduleResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn preview_schedule(
        &self,
        request: Request<pb::PreviewScheduleRequest>,
    ) -> Result<Response<pb::PreviewScheduleResponse>, Status> {
        let req = request.into_inner();
        let mut p = Problems::default();
        let spec = req
            .spec
            .as_ref()
            .and_then(|s| spec_from_proto(&mut p, s, "spec"));
        let start = match req.start_time.as_ref() {
            Some(ts) if almanac_proto::time::timestamp_is_valid(ts) => {
                Some(almanac_proto::time::timestamp_to_ms(ts))
            }
            Some(_) => {
                p.0.push(almanac_proto::action::FieldViolation::new(
                    "start_time",
                    "not a valid timestamp",
                ));
                None
            }
            None => None,
        };
        let spec = p.finish(spec).map_err(|v| invalid_argument(&v))?;
        let fires = self
            .engine
            .preview(spec, &req.schedule_id, start, req.count)
            .await?;
        Ok(Response::new(pb::PreviewScheduleResponse {
            fire_times: fires.into_iter().map(ms_to_timestamp).collect(),
        }))
    }

    async fn list_runs(
        &self,
        request: Request<pb::ListRunsRequest>,
    ) -> Result<Response<pb::ListRunsResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let mut p = Problems::default();
        let status = p
            .enumeration::<pb::RunStatus>("status", req.status)
            .and_then(status_from_proto);
        p.finish(()).map_err(|v| invalid_argument(&v))?;
        let (runs, next) = self
            .engine
            .list_runs(&req.schedule_id, status, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListRunsResponse {
            runs: runs.iter().map(run_to_proto).collect(),
            next_page_token: next,
        }))
    }

    async fn get_run(
        &self,
        request: Request<pb::GetRunRequest>,
    ) -> Result<Response<pb::GetRunResponse>, Status> {
        let req = request.into_inner();
        required("run_id", &req.run_id)?;
        let run = self.engine.get_run(&req.run_id).await?;
        Ok(Response::new(pb::GetRunResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let req = request.into_inner();
        required("run_id", &req.run_id)?;
        let mode = match almanac_proto::executor::v1::CancelMode::try_from(req.mode) {
            Ok(almanac_proto::executor::v1::CancelMode::Terminate) => CancelMode::Terminate,
            Ok(_) => CancelMode::Graceful,
            Err(_) => {
                return Err(invalid_argument(&[
                    almanac_proto::action::FieldViolation::new(
                        "mode",
                        format!("unknown enum value {}", req.mode),
                    ),
                ]));
            }
        };
        let run = self
            .engine
            .cancel_run(&req.run_id, mode, &req.reason)
            .await?;
        Ok(Response::new(pb::CancelRunResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn rerun_run(
        &self,
        request: Request<pb::RerunRunRequest>,
    ) -> Result<Response<pb::RerunRunResponse>, Status> {
        let req = request.into_inner();
        required("run_id", &req.run_id)?;
        let run = self.engine.rerun_run(&req.run_id).await?;
        Ok(Response::new(pb::RerunRunResponse {
            run: Some(run_to_proto(&run)),
        }))
    }

    async fn backfill_schedule(
        &self,
        request: Request<pb::BackfillScheduleRequest>,
    ) -> Result<Response<pb::BackfillScheduleResponse>, Status> {
        let req = request.into_inner();
        required("schedule_id", &req.schedule_id)?;
        let mut p = Problems::default();
        let overlap = p
            .enumeration::<pb::OverlapPolicy>("overlap_policy", req.overlap_policy)
            .map(overlap_from_proto);
        let mut instant = |field: &str, ts: Option<&pbjson_types::Timestamp>| match ts {
            Some(ts) if almanac_proto::time::timestamp_is_valid(ts) => {
                Some(almanac_proto::time::timestamp_to_ms(ts))
            }
            Some(_) => {
                p.0.push(almanac_proto::action::FieldViolation::new(
                    field,
                    "not a valid timestamp",
                ));
                None
            }
            None => {
                p.0.push(almanac_proto::action::FieldViolation::new(
                    field, "required",
                ));
                None
            }
        };
        let start = instant("start_time", req.start_time.as_ref());
        let end = instant("end_time", req.end_time.as_ref());
        let (start, end) = p.finish((start, end)).map_err(|v| invalid_argument(&v))?;
        let (Some(start), Some(end)) = (start, end) else {
            unreachable!("problems were reported");
        };
        let (written, existing) = self
            .engine
            .backfill(&req.schedule_id, start, end, overlap, req.max_per_second)
            .await?;
        Ok(Response::new(pb::BackfillScheduleResponse {
            created: written.len() as i64,
            existing,
            run_ids: written.into_iter().take(1_000).collect(),
        }))
    }
}
