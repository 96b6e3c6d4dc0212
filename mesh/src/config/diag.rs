//! Findings about configuration: where (file:line:column), which field, which rule.
//!
//! Every config error a user can make ends up as a [`Finding`]; the CLI prints them and
//! maps them to exit codes. Parse errors carry the YAML parser's position; semantic
//! errors carry the position of the offending value.

use std::fmt;

use serde_saphyr::Spanned;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Error,
    Warning,
}

/// A source position; `line == 0` means unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub file: String,
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub fn of<T>(file: &str, spanned: &Spanned<T>) -> Pos {
        Pos { file: file.to_string(), line: spanned.referenced.line(), column: spanned.referenced.column() }
    }
    pub fn file(file: &str) -> Pos {
        Pos { file: file.to_string(), line: 0, column: 0 }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)
        }
    }
}

/// Rule codes. `IST*` codes are `istioctl analyze`'s; `MSIM*` are meshsim's own.
pub mod code {
    /// The YAML is malformed or does not fit the schema (unknown field, wrong type).
    pub const SCHEMA: &str = "IST0106";
    /// A reference to something that does not exist.
    pub const NOT_FOUND: &str = "IST0101";
    /// A field Istio has that meshsim does not simulate yet: parsed, then ignored.
    pub const NOT_SIMULATED: &str = "MSIM0001";
    /// A scenario value outside its allowed range.
    pub const SCENARIO: &str = "MSIM0002";
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    pub pos: Pos,
    pub level: Level,
    pub code: &'static str,
    /// The field path, e.g. `spec.http[0].route[1].weight`.
    pub field: String,
    pub message: String,
}

impl Finding {
    pub fn error(pos: Pos, code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Finding { pos, level: Level::Error, code, field: field.into(), message: message.into() }
    }
    pub fn warning(pos: Pos, code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Finding { pos, level: Level::Warning, code, field: field.into(), message: message.into() }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.level {
            Level::Error => "error",
            Level::Warning => "warning",
        };
        write!(f, "{}: {level} [{}]", self.pos, self.code)?;
        if !self.field.is_empty() {
            write!(f, " {}:", self.field)?;
        }
        write!(f, " {}", self.message)
    }
}

/// Turns a YAML parse error into a finding at the parser's position.
pub fn from_yaml_error(file: &str, err: &serde_saphyr::Error) -> Finding {
    let (line, column) = err.location().map(|l| (l.line(), l.column())).unwrap_or((0, 0));
    let text = err.without_snippet().to_string();
    // The parser's own text may repeat the position; keep the first line of the message.
    let message = text.lines().next().unwrap_or("invalid YAML").trim().to_string();
    Finding::error(Pos { file: file.to_string(), line, column }, code::SCHEMA, "", message)
}

/// Findings collected while checking one input.
#[derive(Debug, Default)]
pub struct Findings(pub Vec<Finding>);

impl Findings {
    pub fn push(&mut self, f: Finding) {
        self.0.push(f);
    }
    pub fn has_errors(&self) -> bool {
        self.0.iter().any(|f| f.level == Level::Error)
    }
    pub fn sorted(mut self) -> Vec<Finding> {
        self.0.sort();
        self.0.dedup();
        self.0
    }
}
