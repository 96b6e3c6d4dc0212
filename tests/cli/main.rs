//! Integration tests for `meshsim`, in one test binary: the CLI on invalid and valid input
//! (through the built binary), and every scenario under `scenarios/` through the library
//! (passes its expectations, loses no request, is deterministic for a seed).

mod authz_validation;
mod commands;
mod invalid;
mod istio_validation;
mod reports;
mod scenarios;
mod util;
