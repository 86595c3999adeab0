//! Generates the Rust code of Almanac's contracts: protox parses the protos (no system
//! `protoc`), tonic-prost-build writes messages and services, pbjson-build writes their
//! canonical proto3 JSON (serde) impls, and the descriptor set is kept for reflection.

use std::{env, error::Error, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "almanac/executor/v1/action.proto",
    "almanac/executor/v1/executor.proto",
    "almanac/executor/v1/pipeline.proto",
    "almanac/executor/v1/worker.proto",
    "almanac/scheduler/v1/scheduler.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=almanac");

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(PROTOS)?;
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("almanac_descriptor.bin"), &descriptor_bytes)?;

    // Maps are BTreeMaps so that encoding a message is deterministic: the executor
    // fingerprints requests by their encoding.
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .btree_map(".")
        .compile_fds(compiler.file_descriptor_set())?;

    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .btree_map(["."])
        .ignore_unknown_fields()
        .build(&[".almanac"])?;
    Ok(())
}
