//! Pipelines (DESIGN §5.3): versioned DAG definitions, their validation, and the pure
//! semantics of edges, joins and skips that the runner follows.

pub mod cel;
pub mod graph;
pub mod validate;
