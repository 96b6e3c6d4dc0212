//! The simulated world: scenarios, the turmoil side of the `Net`/`Clock` seam, app
//! models, workload, faults, the recorder and expectations.

pub mod app;
pub mod bad_identity;
pub mod crypto;
pub mod expect;
pub mod net;
pub mod recorder;
pub mod results;
pub mod scenario;
pub mod seed;
pub mod workload;
pub mod world;
