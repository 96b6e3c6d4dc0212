//! Shared helpers: a scratch directory per test, running the built binary, and finding
//! where a piece of YAML text sits (so expected positions are computed, not hard-coded).

use std::ffi::OsStr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A directory under the system temp dir, unique to this process and test, removed on drop.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("meshsim-cli-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        Scratch { dir }
    }

    /// Writes `text` to `name` in the scratch directory and returns its path.
    pub fn write(&self, name: &str, text: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    /// Everything the binary printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!("exit code: {:?}\n--- stdout\n{}--- stderr\n{}---", self.code, self.stdout, self.stderr)
    }

    pub fn assert_no_panic(&self) {
        assert!(!self.stderr.contains("panicked"), "the binary panicked\n{}", self.dump());
    }
}

/// Runs the built `meshsim` binary with `args`.
pub fn meshsim<I, S>(args: I) -> Ran
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_meshsim"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the meshsim binary runs");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `base` with the one occurrence of `from` replaced by `to`. Panics if `from` is not in
/// `base` exactly once, so a changed base cannot silently turn a test into a no-op.
pub fn edit(base: &str, from: &str, to: &str) -> String {
    let n = base.matches(from).count();
    assert_eq!(n, 1, "{from:?} must occur exactly once in the base text, found {n} times");
    base.replacen(from, to, 1)
}

/// 1-based (line, column) of `token` within the first line of `yaml` containing `line_has`.
pub fn pos(yaml: &str, line_has: &str, token: &str) -> (u64, u64) {
    let (i, line) = yaml
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(line_has))
        .unwrap_or_else(|| panic!("no line contains {line_has:?}"));
    let byte = line.find(token).unwrap_or_else(|| panic!("{token:?} is not in line {line:?}"));
    (i as u64 + 1, line[..byte].chars().count() as u64 + 1)
}

/// 1-based line range from the first line containing `first` to the first line after it containing `last`.
pub fn lines(yaml: &str, first: &str, last: &str) -> RangeInclusive<u64> {
    let a = pos(yaml, first, first).0;
    let b = yaml
        .lines()
        .enumerate()
        .skip(a as usize)
        .find(|(_, l)| l.contains(last))
        .map(|(i, _)| i as u64 + 1)
        .unwrap_or_else(|| panic!("no line after line {a} contains {last:?}"));
    a..=b
}

/// Where the reported error must point.
#[derive(Clone, Debug)]
pub enum At {
    /// This line and column.
    Exact(u64, u64),
    /// This line, any column.
    Line(u64),
    /// A line in this range, any column.
    Lines(RangeInclusive<u64>),
    /// Any position, or none.
    Anywhere,
}

/// The finding an invalid input must produce.
#[derive(Clone, Debug)]
pub struct Expect<'a> {
    pub at: At,
    /// Rule code, e.g. `IST0106`.
    pub code: &'a str,
    /// Text naming the field that must appear in the finding after the code (`None`: the
    /// input has no field to name, e.g. malformed YAML).
    pub field: Option<&'a str>,
    /// Text naming the rule broken.
    pub rule: &'a str,
}

/// One error finding as printed: `file[:line:col]: error [CODE] rest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Printed {
    pub line: Option<u64>,
    pub column: Option<u64>,
    pub code: String,
    /// Everything after `[CODE]`: field and message.
    pub rest: String,
}

/// A finding from its `:LINE:COL` suffix (possibly empty), code and the text after it.
fn printed(loc: &str, code: &str, rest: &str) -> Printed {
    let mut nums = loc.strip_prefix(':').map(|s| s.split(':').map(|n| n.parse::<u64>().ok()));
    let (line, column) = match nums.as_mut() {
        Some(it) => (it.next().flatten(), it.next().flatten()),
        None => (None, None),
    };
    Printed { line, column, code: code.to_string(), rest: rest.trim().to_string() }
}

/// The error findings about `file` in `stderr`.
pub fn errors_about(stderr: &str, file: &Path) -> Vec<Printed> {
    let name = file.display().to_string();
    stderr
        .lines()
        .filter_map(|l| {
            let after = l.strip_prefix(&name)?;
            let (loc, rest) = after.split_once(": error [")?;
            let (code, rest) = rest.split_once(']')?;
            Some(printed(loc, code, rest))
        })
        .collect()
}

/// What an invalid scenario made the binary print.
pub struct Rejected {
    pub ran: Ran,
    pub errors: Vec<Printed>,
}

impl Rejected {
    /// One mistake in the input is one error in the output (no cascades).
    pub fn single(&self) -> &Self {
        assert_eq!(self.errors.len(), 1, "expected exactly one error\n{}", self.ran.dump());
        self
    }
}

/// The error findings about `file` that `validate` printed in `istioctl analyze` style:
/// `Error [CODE] (Kind ns/name FILE:LINE:COL) rest`.
pub fn analyze_errors_about(stderr: &str, file: &Path) -> Vec<Printed> {
    let name = file.display().to_string();
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Error [")?;
            let (code, rest) = rest.split_once("] (")?;
            let (what, rest) = rest.split_once(") ")?;
            let loc = &what[what.find(&name)? + name.len()..];
            Some(printed(loc, code, rest))
        })
        .collect()
}

/// Writes `yaml` as a scenario, checks that `run` rejects it with exit code 2 and
/// `validate` with 2 (unparsable) or 79 (error findings, as `istioctl analyze`), both
/// without panicking and with the same findings, and that stderr holds a finding as
/// `expect` describes.
pub fn rejects(test: &str, yaml: &str, expect: &Expect<'_>) -> Rejected {
    let scratch = Scratch::new(test);
    let file = scratch.write("scenario.yaml", yaml);
    let validated = meshsim([OsStr::new("validate"), file.as_os_str()]);
    validated.assert_no_panic();
    assert!(
        matches!(validated.code, Some(2) | Some(79)),
        "validate must exit 2 (unparsable) or 79 (error findings) on invalid input\n{}",
        validated.dump()
    );

    // `run` loads the same way and must refuse before simulating or writing anything.
    let out = scratch.dir.join("out");
    let ran = meshsim([OsStr::new("run"), file.as_os_str(), OsStr::new("--out"), out.as_os_str()]);
    ran.assert_no_panic();
    assert_eq!(ran.code, Some(2), "run must exit 2 on invalid input\n{}", ran.dump());
    assert!(!out.exists(), "run wrote results for an invalid scenario");
    let analyzed = analyze_errors_about(&validated.stderr, &file);
    let compiled = errors_about(&ran.stderr, &file);
    assert_eq!(analyzed, compiled, "run and validate report the same findings\n{}\n{}", validated.dump(), ran.dump());

    let summary = format!("{}: invalid scenario (", file.display());
    assert!(ran.stderr.contains(&summary), "stderr must end with {summary:?}…\n{}", ran.dump());
    let errors = errors_about(&ran.stderr, &file);
    assert!(!errors.is_empty(), "no `{}:…: error [CODE] …` line in stderr\n{}", file.display(), ran.dump());

    let matches = |p: &Printed| {
        let at = match &expect.at {
            At::Exact(l, c) => p.line == Some(*l) && p.column == Some(*c),
            At::Line(l) => p.line == Some(*l) && p.column.is_some(),
            At::Lines(r) => p.line.is_some_and(|l| r.contains(&l)) && p.column.is_some(),
            At::Anywhere => true,
        };
        at && p.code == expect.code
    };
    let found: Vec<&Printed> = errors.iter().filter(|p| matches(p)).collect();
    assert!(
        !found.is_empty(),
        "expected an error [{}] at {:?} in {}\n{}",
        expect.code,
        expect.at,
        file.display(),
        ran.dump()
    );
    assert!(
        found.iter().any(|p| p.rest.contains(expect.rule)),
        "the error at {:?} does not state the rule {:?}\n{}",
        expect.at,
        expect.rule,
        ran.dump()
    );
    if let Some(field) = expect.field {
        assert!(
            found.iter().any(|p| p.rest.contains(expect.rule) && p.rest.contains(field)),
            "the error at {:?} does not name the field {field:?}\n{}",
            expect.at,
            ran.dump()
        );
    }
    Rejected { ran, errors }
}
