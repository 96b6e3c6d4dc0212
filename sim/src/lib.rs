//! The simulated world: scenarios, the turmoil side of the `Net`/`Clock` seam, app
//! models, workload, faults, the recorder, expectations (with metric queries and trace
//! checks) and results.

pub mod app;
pub mod bad_identity;
pub mod cost;
pub mod crypto;
pub mod driver;
pub mod envoy;
pub mod expect;
pub mod metric_query;
pub mod net;
pub mod pod;
pub mod real;
pub mod recorder;
pub mod results;
pub mod scenario;
pub mod seed;
pub mod target;
pub mod traces;
pub mod workload;
pub mod world;
