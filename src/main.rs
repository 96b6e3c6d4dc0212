//! `meshsim`: run, validate and benchmark mesh scenarios. `main` only maps [`cli::run`]
//! to an exit code.

mod cli;

fn main() {
    std::process::exit(cli::run(std::env::args_os()));
}
