//! Command-line interface: arguments are parsed, validated into a plan, then executed.
//!
//! Exit codes: 0 every expectation held (or the input is valid), 1 an expectation
//! failed or the run broke an invariant, 2 invalid input.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mesh::config::Level;
use mesh::net::{Clock, SystemClock};
use sim::real::process::Component;
use sim::scenario::{self, Plan};
use sim::target::Target;

/// A real-time run's progress on a terminal (stderr); nothing when stderr is not one.
struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal as _;
        Progress(std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template("{bar:30} {msg}").expect("the template is valid"));
            bar
        }))
    }

    fn tell(&self, p: sim::real::Progress) {
        if let Some(bar) = &self.0 {
            bar.set_length(p.duration.as_millis() as u64);
            bar.set_position(p.at.as_millis().min(p.duration.as_millis()) as u64);
            bar.set_message(format!(
                "{:.1}s of {:.1}s real time, {} of {} requests sent",
                p.at.as_secs_f64(),
                p.duration.as_secs_f64(),
                p.sent,
                p.issued
            ));
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

/// Prints a line to stdout; a closed pipe (`meshsim run x | head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Prints to stdout without a newline; a closed pipe is not an error.
macro_rules! say_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_INVALID: i32 = 2;
/// `meshsim validate` with error-level findings, as `istioctl analyze` exits.
pub const EXIT_ANALYZE_ERRORS: i32 = 79;

#[derive(Parser, Debug)]
#[command(
    name = "meshsim",
    version,
    about = "A service mesh in a deterministic simulator: try Istio config before you apply it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario, print a summary, write results JSON.
    Run {
        file: PathBuf,
        /// Seed for every random choice (default: the scenario's `seed`).
        #[arg(long)]
        seed: Option<u64>,
        /// Directory for results (default: `out/`).
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Do not write the HTML report and Markdown summary beside the results.
        #[arg(long)]
        no_report: bool,
        /// Where to run: `sim` (the deterministic simulator), `real` (meshsim's mesh on
        /// loopback sockets in real time; expectations get a stated slack, see
        /// scenarios/README.md) or `envoy` (real Envoy sidecars configured over xDS by
        /// meshsim's control plane, on loopback in real time).
        #[arg(long, default_value = "sim")]
        target: sim::target::Target,
        /// The Envoy binary for `--target envoy` (default: `$ENVOY`, else `envoy` on PATH).
        #[arg(long)]
        envoy: Option<PathBuf>,
        /// Worker threads of each Envoy sidecar (`--concurrency`; Istio's default is 2).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
        envoy_concurrency: u32,
    },
    /// Render a results file as an HTML report and a Markdown summary (beside it), or
    /// compare several runs on one page.
    Report {
        /// Results JSON written by `meshsim run`.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// One page comparing every file (overlays, differences, latency tax, capacity).
        #[arg(long)]
        compare: bool,
        /// Where the comparison page goes (default: `compare.html` beside the first file).
        #[arg(long, requires = "compare")]
        out: Option<PathBuf>,
    },
    /// Check scenarios and their Istio resources without running them.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a scenario's istiod (control plane and CA) as a process of its own, on
    /// 127.SLICE.0.1; prints every pod's addresses, then `ready: istiod`.
    Control {
        file: PathBuf,
        #[command(flatten)]
        at: ComponentArgs,
    },
    /// Run one pod's app as a process of its own, on its address in the slice.
    App {
        file: PathBuf,
        /// The pod (e.g. `backend-v1-0`).
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        at: ComponentArgs,
    },
    /// Run one pod's sidecar (listeners, control-plane client, certificate agent) as a
    /// process of its own; prints `ready: sidecar of POD` once configured and certified.
    Sidecar {
        file: PathBuf,
        #[arg(long)]
        pod: String,
        #[command(flatten)]
        at: ComponentArgs,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

/// Where and how long a component process runs.
#[derive(clap::Args, Debug)]
struct ComponentArgs {
    /// The run's loopback slice: every address is 127.SLICE.x.y (100–249).
    #[arg(long, value_parser = clap::value_parser!(u8).range(100..=249))]
    slice: u8,
    /// Stop after this long (e.g. `30s`); default: run until killed.
    #[arg(long = "for", value_parser = mesh::config::duration::parse_duration)]
    length: Option<std::time::Duration>,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Simulated mesh throughput on the standard benchmark scenario.
    Sim {
        /// The scenario to run (default: the standard one, built in).
        #[arg(long)]
        scenario: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Runs to take the median of.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
    },
    /// Rendering a run's report (HTML and Markdown) from its results JSON: by default of
    /// the built-in 60 s, 1,000 rps scenario (bench/report.yaml), simulated once first.
    Report {
        /// Results JSON to render instead.
        #[arg(long)]
        results: Option<PathBuf>,
        /// Renders to take the median of.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
        runs: u32,
    },
    /// Control-plane convergence on a large mesh: services × pods on 10 nodes, one
    /// change to every service's routing at 10s; prints the simulated time until every
    /// proxy ACKed it, the wall time and the peak memory.
    Control {
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        services: u32,
        /// Pods per service (half v1, half v2).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=50))]
        pods: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    match cli.command {
        Command::Run { file, seed, out, no_report, target, envoy, envoy_concurrency } => {
            let envoy = Envoy { binary: envoy, concurrency: envoy_concurrency };
            cmd_run(&file, seed, &out, !no_report, target, &envoy)
        }
        Command::Report { files, compare, out } => cmd_report(&files, compare, out),
        Command::Validate { files } => cmd_validate(&files),
        Command::Control { file, at } => cmd_component(&file, Component::Control, &at),
        Command::App { file, pod, at } => cmd_component(&file, Component::App(pod), &at),
        Command::Sidecar { file, pod, at } => cmd_component(&file, Component::Sidecar(pod), &at),
        Command::Bench { what: Bench::Sim { scenario, seed, runs } } => cmd_bench(scenario.as_deref(), seed, runs),
        Command::Bench { what: Bench::Report { results, runs } } => cmd_bench_report(results.as_deref(), runs),
        Command::Bench { what: Bench::Control { services, pods, seed } } => cmd_bench_control(services, pods, seed),
    }
}

/// How findings are printed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `file:line:column: error [CODE] field: message`, for `run` (editors jump to it).
    Compiler,
    /// `istioctl analyze`'s `Error [CODE] (Kind ns/name file:line:column) field: message`.
    Analyze,
}

fn print_finding(f: &mesh::config::Finding, style: Style) {
    match style {
        Style::Compiler => eprintln!("{f}"),
        Style::Analyze => eprintln!("{}", f.analyze_line()),
    }
}

/// Loads a scenario, printing its findings. `Err` carries the exit code: 2 for a file that
/// cannot be read or parsed; for other errors 2 from `run`, 79 from `validate` (as
/// `istioctl analyze` exits when an error-level finding exists).
fn load(file: &Path, style: Style) -> Result<Plan, i32> {
    match scenario::load(file) {
        Ok(plan) => {
            for w in &plan.warnings {
                print_finding(w, style);
            }
            Ok(plan)
        }
        Err(e) => {
            for f in &e.findings {
                print_finding(f, style);
            }
            let errors = e.findings.iter().filter(|f| f.level == Level::Error).count();
            eprintln!("{}: invalid scenario ({errors} error(s))", file.display());
            let unparsable = e.findings.iter().any(|f| f.unparsable);
            Err(if unparsable || style == Style::Compiler { EXIT_INVALID } else { EXIT_ANALYZE_ERRORS })
        }
    }
}

fn cmd_validate(files: &[PathBuf]) -> i32 {
    let mut code = EXIT_OK;
    for f in files {
        match load(f, Style::Analyze) {
            Ok(plan) => say!(
                "{}: ok ({} pods, {} workloads, {} expectations, {} warnings)",
                f.display(),
                plan.pods.len(),
                plan.workloads.len(),
                plan.expectations.len(),
                plan.warnings.len()
            ),
            // A file that cannot be parsed outranks error findings in other files.
            Err(c) => code = if code == EXIT_INVALID { code } else { c },
        }
    }
    code
}

/// How `--target envoy` runs Envoy.
struct Envoy {
    binary: Option<PathBuf>,
    concurrency: u32,
}

fn cmd_run(file: &Path, seed: Option<u64>, out_dir: &Path, report: bool, target: Target, envoy: &Envoy) -> i32 {
    let mut plan = match load(file, Style::Compiler) {
        Ok(p) => p,
        Err(c) => return c,
    };
    let envoy_options = if target == Target::Envoy {
        match xds::find_envoy(envoy.binary.as_deref()) {
            Ok(binary) => Some(sim::envoy::Options { binary, concurrency: envoy.concurrency }),
            Err(e) => {
                eprintln!("error: --target envoy: {e}");
                return EXIT_INVALID;
            }
        }
    } else {
        None
    };
    if target != Target::Sim && plan.latency_max > plan.latency_min {
        eprintln!(
            "warning: {}: network.jitter is not applied on --target {}: its links have the fixed network.latency ({:?})",
            file.display(),
            target.name(),
            plan.latency_min
        );
    }
    plan.expectations = sim::target::slacken(&plan.expectations, target);
    let plan = Arc::new(plan);
    let seed = seed.unwrap_or(plan.seed);
    let flag = if target == Target::Sim { String::new() } else { format!(" --target {}", target.name()) };
    say!("meshsim run {} --seed {seed}{flag}", file.display());
    let output = match target {
        Target::Sim => sim::world::run(plan.clone(), seed),
        _ => {
            let progress = Progress::new();
            let out = match &envoy_options {
                Some(o) => sim::envoy::run(plan.clone(), seed, o, &|p| progress.tell(p)),
                None => sim::real::run(plan.clone(), seed, &|p| progress.tell(p)),
            };
            progress.finish();
            out
        }
    };
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("repro: meshsim run {} --seed {seed}{flag}", file.display());
            return EXIT_FAILED;
        }
    };
    let results = sim::results::build(&plan, seed, &output);
    say_raw!("{}", sim::results::summary(&results));
    let wall = output.wall.as_secs_f64();
    if target == Target::Sim {
        say!(
            "\nwall {:.2}s: {:.0} simulated requests per wall second, {:.1}x real time",
            wall,
            output.issued as f64 / wall.max(1e-9),
            output.sim_elapsed.as_secs_f64() / wall.max(1e-9)
        );
    } else {
        say!("\nwall {:.2}s on {} (boot included)", wall, target.name());
    }
    let path = out_dir.join(format!("{}-seed{seed}.json", plan.name));
    let json = serde_json::to_vec_pretty(&results).expect("results serialize");
    if let Err(e) = std::fs::create_dir_all(out_dir).and_then(|_| std::fs::write(&path, &json)) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return EXIT_FAILED;
    }
    say!("results: {}", path.display());
    if report {
        let run = match reports::Run::parse(&String::from_utf8_lossy(&json)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                return EXIT_FAILED;
            }
        };
        match reports::write(&run, &path) {
            Ok((html, md)) => say!("report: {}\nsummary: {}", html.display(), md.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    }
    if results.passed {
        EXIT_OK
    } else {
        let failed = results.expectations.iter().filter(|c| !c.pass).count();
        say!("{failed} expectation(s) failed; repro: meshsim run {} --seed {seed}{flag}", file.display());
        EXIT_FAILED
    }
}

/// `meshsim control|app|sidecar`: one component of a scenario's mesh as this process.
fn cmd_component(file: &Path, component: Component, at: &ComponentArgs) -> i32 {
    let plan = match load(file, Style::Compiler) {
        Ok(p) => Arc::new(p),
        Err(c) => return c,
    };
    if let Err(e) = sim::real::process::check(&plan, &component) {
        eprintln!("error: {}: {e}", file.display());
        return EXIT_INVALID;
    }
    if matches!(component, Component::Control) {
        for line in sim::real::process::addresses(&plan, at.slice) {
            say!("{line}");
        }
    }
    match sim::real::process::run(plan, component, at.slice, at.length, &|line| say!("{line}")) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

/// `meshsim report`: each file's page and summary beside it, or one comparison page.
/// A file that cannot be read or is not results JSON is invalid input (exit 2).
fn cmd_report(files: &[PathBuf], compare: bool, out: Option<PathBuf>) -> i32 {
    let mut runs = Vec::new();
    for f in files {
        match reports::Run::load(f) {
            Ok(r) => runs.push(r),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_INVALID;
            }
        }
    }
    if compare {
        let out = out.unwrap_or_else(|| files[0].with_file_name("compare.html"));
        let labelled: Vec<(String, reports::Run)> = reports::labels(files).into_iter().zip(runs).collect();
        if let Err(e) = std::fs::write(&out, reports::html::compare_page(&labelled)) {
            eprintln!("error: cannot write {}: {e}", out.display());
            return EXIT_FAILED;
        }
        say!("comparison: {}", out.display());
        return EXIT_OK;
    }
    for (f, run) in files.iter().zip(&runs) {
        match reports::write(run, f) {
            Ok((html, md)) => say!("report: {}\nsummary: {}", html.display(), md.display()),
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        }
    }
    EXIT_OK
}

/// The report benchmark's scenario: 60 s at 1,000 rps.
const REPORT_BENCH: &str = include_str!("../bench/report.yaml");
/// Goal on a 2-core machine, release build: reading the results and rendering both outputs.
const GOAL_REPORT_WALL_SECONDS: f64 = 1.0;

fn cmd_bench_report(results: Option<&Path>, runs: u32) -> i32 {
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build: use cargo run --release for the figure");
    }
    let json = match results {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {}: {e}", f.display());
                return EXIT_INVALID;
            }
        },
        None => {
            let plan = match scenario::load_str("bench/report.yaml (built in)", REPORT_BENCH, Path::new("bench")) {
                Ok(p) => Arc::new(p),
                Err(e) => {
                    eprint!("{e}");
                    return EXIT_INVALID;
                }
            };
            say!("bench report: simulating {} ({} s) once for its results", plan.name, plan.duration.as_secs_f64());
            match sim::world::run(plan.clone(), plan.seed) {
                Ok(out) => serde_json::to_string_pretty(&sim::results::build(&plan, plan.seed, &out))
                    .expect("results serialize"),
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_FAILED;
                }
            }
        }
    };
    let mut walls = Vec::new();
    for i in 0..runs {
        let clock = SystemClock::new();
        let run = match reports::Run::parse(&json) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_INVALID;
            }
        };
        let page = reports::html::run_page(&run);
        let md = reports::markdown::summary(&run);
        let wall = clock.now().as_secs_f64();
        walls.push(wall);
        say!(
            "  render {}: {} requests, {} KB of JSON -> {} KB of HTML + {} KB of Markdown in {wall:.3} s wall",
            i + 1,
            run.requests.len(),
            json.len() / 1024,
            page.len() / 1024,
            md.len() / 1024
        );
    }
    walls.sort_by(f64::total_cmp);
    let median = walls[walls.len() / 2];
    let ok = median < GOAL_REPORT_WALL_SECONDS;
    say!(
        "median: {median:.3} s wall to read the results and render the report (goal < {GOAL_REPORT_WALL_SECONDS:.0} s): {}",
        if ok { "goal met" } else { "goal NOT met" }
    );
    if ok { EXIT_OK } else { EXIT_FAILED }
}

/// The standard benchmark scenario, built in so `bench sim` runs from anywhere.
const STANDARD_BENCH: &str = include_str!("../bench/standard.yaml");
/// Goals on a 2-core machine, release build.
const GOAL_REQUESTS_PER_WALL_SECOND: f64 = 25_000.0;
const GOAL_SPEEDUP: f64 = 10.0;

fn cmd_bench(scenario: Option<&Path>, seed: u64, runs: u32) -> i32 {
    let plan = match scenario {
        Some(f) => load(f, Style::Compiler),
        None => scenario::load_str("bench/standard.yaml (built in)", STANDARD_BENCH, Path::new("bench")).map_err(|e| {
            eprint!("{e}");
            EXIT_INVALID
        }),
    };
    let plan = match plan {
        Ok(p) => Arc::new(p),
        Err(c) => return c,
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build: figures are ~16x lower than release (use cargo run --release)");
    }
    say!(
        "bench sim: {} ({} pods on {} nodes, {} s simulated), {runs} run(s), seed {seed}",
        plan.name,
        plan.pods.len(),
        plan.nodes.len(),
        plan.duration.as_secs_f64()
    );
    let mut rps = Vec::new();
    let mut speedup = Vec::new();
    for i in 0..runs {
        let out = match sim::world::run(plan.clone(), seed) {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_FAILED;
            }
        };
        let wall = out.wall.as_secs_f64().max(1e-9);
        let results = sim::results::build(&plan, seed, &out);
        rps.push(out.issued as f64 / wall);
        speedup.push(out.sim_elapsed.as_secs_f64() / wall);
        say!(
            "  run {}: {} requests in {wall:.2} s wall: {:.0} simulated requests per wall second, {:.1} simulated seconds per wall second{}",
            i + 1,
            out.issued,
            rps[i as usize],
            speedup[i as usize],
            if results.passed { "" } else { " (expectations FAILED)" }
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, s) = (median(&mut rps), median(&mut speedup));
    let ok = r >= GOAL_REQUESTS_PER_WALL_SECOND && s >= GOAL_SPEEDUP;
    say!(
        "median: {r:.0} simulated requests per wall second (goal >= {GOAL_REQUESTS_PER_WALL_SECOND:.0}), {s:.1}x real time (goal >= {GOAL_SPEEDUP:.0}x): {}",
        if ok { "goals met" } else { "goals NOT met" }
    );
    if ok { EXIT_OK } else { EXIT_FAILED }
}

/// The control-plane benchmark's scenario: `services` services of `pods` pods (v1 and v2
/// halves) on 10 nodes; service k calls services k+1..k+3 at 0.5 requests per second
/// each; every service's VirtualService goes from 90/10 to 50/50 at 10s.
fn control_bench_scenario(services: u32, pods: u32) -> String {
    use std::fmt::Write as _;
    let mut y = String::from("name: bench-control\nduration: 20s\nnodes: 10\nservices:\n");
    let (v1, v2) = (pods - pods / 2, pods / 2);
    for k in 0..services {
        let _ = writeln!(
            y,
            "  - name: svc-{k}\n    pods:\n      - {{name: v1, replicas: {v1}, labels: {{version: v1}}}}\n      - {{name: v2, replicas: {v2}, labels: {{version: v2}}}}"
        );
    }
    let vs = |k: u32, w1: u32| {
        format!(
            "  - apiVersion: networking.istio.io/v1\n    kind: VirtualService\n    metadata: {{name: svc-{k}}}\n    spec:\n      hosts: [svc-{k}]\n      http:\n        - route:\n            - {{destination: {{host: svc-{k}, subset: v1}}, weight: {w1}}}\n            - {{destination: {{host: svc-{k}, subset: v2}}, weight: {}}}\n",
            100 - w1
        )
    };
    y += "istio:\n";
    for k in 0..services {
        let _ = write!(
            y,
            "  - apiVersion: networking.istio.io/v1\n    kind: DestinationRule\n    metadata: {{name: svc-{k}}}\n    spec:\n      host: svc-{k}\n      subsets:\n        - {{name: v1, labels: {{version: v1}}}}\n        - {{name: v2, labels: {{version: v2}}}}\n"
        );
        y += &vs(k, 90);
    }
    y += "workload:\n";
    for k in 0..services {
        for d in 1..=3.min(services - 1) {
            let _ = writeln!(y, "  - {{from: svc-{k}, to: svc-{}, rate: 0.5}}", (k + d) % services);
        }
    }
    y += "config:\n  - at: 10s\n    apply:\n";
    for k in 0..services {
        y += &vs(k, 50).replace("\n  ", "\n      ").replacen("  - ", "      - ", 1);
    }
    y += "expect:\n  - converged: {after: 10s, within: 10s}\n";
    y
}

/// Peak resident memory of this process (Linux `VmHWM`), in KiB.
fn peak_memory_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cmd_bench_control(services: u32, pods: u32, seed: u64) -> i32 {
    let text = control_bench_scenario(services, pods);
    let plan = match scenario::load_str("bench control (generated)", &text, Path::new(".")) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            eprint!("{e}");
            return EXIT_FAILED;
        }
    };
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build: wall time is ~16x higher than release (use cargo run --release)");
    }
    say!(
        "bench control: {} services × {pods} pods = {} pods on {} nodes + istiod, {} s simulated, seed {seed}",
        services,
        plan.pods.len(),
        plan.nodes.len(),
        plan.duration.as_secs_f64()
    );
    let out = match sim::world::run(plan.clone(), seed) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    let results = sim::results::build(&plan, seed, &out);
    for c in &results.expectations {
        say!("  {}: {} (expected {})", c.expectation, c.observed, c.expected);
    }
    say!(
        "wall {:.2} s for {:.0} s simulated ({} requests); peak memory (VmHWM) {}",
        out.wall.as_secs_f64(),
        out.sim_elapsed.as_secs_f64(),
        out.issued,
        peak_memory_kib().map_or("unknown".to_string(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
    );
    if results.passed { EXIT_OK } else { EXIT_FAILED }
}
