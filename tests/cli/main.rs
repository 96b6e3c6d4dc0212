//! Integration tests for `meshsim`, in one test binary: the CLI on invalid and valid input
//! (through the built binary), and every scenario under `scenarios/` through the library
//! (passes its expectations, loses no request, is deterministic for a seed), and the
//! sidecars' metrics and traces checked against what the runs recorded.

mod authz_validation;
mod commands;
mod invalid;
mod istio_validation;
mod latency_tax;
mod processes;
mod reports;
mod scenarios;
mod telemetry;
mod util;
