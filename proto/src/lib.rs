//! Almanac's gRPC contracts: the generated code of `almanac.scheduler.v1` and
//! `almanac.executor.v1`, their descriptor set (for server reflection), and the few
//! helpers both services and the CLI need to read the contract the same way.

pub mod action;
pub mod status;
pub mod time;

/// `almanac.executor.v1`: the executor's service, executions, events, and `Action`.
pub mod executor {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("almanac.executor.v1");
        include!(concat!(env!("OUT_DIR"), "/almanac.executor.v1.serde.rs"));
    }
}

/// `almanac.scheduler.v1`: schedules, runs and the scheduler's service.
pub mod scheduler {
    /// Version 1.
    pub mod v1 {
        #![allow(clippy::all, missing_docs, rust_2018_idioms)]
        tonic::include_proto!("almanac.scheduler.v1");
        include!(concat!(env!("OUT_DIR"), "/almanac.scheduler.v1.serde.rs"));
    }
}

/// The encoded `FileDescriptorSet` of every Almanac proto and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("almanac_descriptor");
