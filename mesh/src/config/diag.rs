//! Findings about configuration: where (file:line:column), which field, which rule.
//!
//! Every config error a user can make ends up as a [`Finding`]; the CLI prints them and
//! maps them to exit codes. Parse errors carry the YAML parser's position; semantic
//! errors carry the position of the offending value.

use std::borrow::Cow;
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
    /// The Istio resource the finding is about, e.g. `VirtualService default/reviews`.
    pub resource: Option<String>,
    /// The YAML could not be parsed into the schema at all (`validate` exits 2, not 79).
    pub unparsable: bool,
}

impl Finding {
    pub fn error(pos: Pos, code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            pos,
            level: Level::Error,
            code,
            field: field.into(),
            message: message.into(),
            resource: None,
            unparsable: false,
        }
    }
    pub fn warning(pos: Pos, code: &'static str, field: impl Into<String>, message: impl Into<String>) -> Self {
        Finding {
            pos,
            level: Level::Warning,
            code,
            field: field.into(),
            message: message.into(),
            resource: None,
            unparsable: false,
        }
    }
}

impl Finding {
    /// The finding as `istioctl analyze` prints one:
    /// `Error [IST0101] (VirtualService default/reviews x.yaml:12:7) <field>: <message>`.
    pub fn analyze_line(&self) -> String {
        let level = match self.level {
            Level::Error => "Error",
            Level::Warning => "Warning",
        };
        let what = self.resource.as_deref().unwrap_or("Scenario");
        let field = if self.field.is_empty() { String::new() } else { format!("{}: ", self.field) };
        format!("{level} [{}] ({what} {}) {field}{}", self.code, self.pos, self.message)
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

/// Turns a YAML parse or schema error into a finding: at the parser's position, naming the
/// field when the error is about a value, a key or a mapping.
///
/// `text` is the YAML the error came from. serde-saphyr reports where an error is but not
/// which field it is about (its key paths exist only for garde/validator validation errors),
/// so the field is found by replaying the text through its parser, granit, and finding the
/// node at the error's position (see [`locate`]). This uses the same positions the error
/// carries, so it works for block and flow style, quoted keys and multi-document files alike.
pub fn from_yaml_error(file: &str, text: &str, err: &serde_saphyr::Error) -> Finding {
    let at = err.location().map(|l| (l.line(), l.column())).filter(|&(line, _)| line > 0);
    let (line, column) = at.unwrap_or((0, 0));
    let mut finding = Finding::error(Pos { file: file.to_string(), line, column }, code::SCHEMA, "", message(err));
    finding.unparsable = true;
    let Some(at) = at else { return finding };
    let role = role(err);
    if role == Role::Syntax {
        return finding;
    }
    let found = locate(text, at);
    match role {
        // serde-saphyr places a missing field at the mapping's last key (or at `{` when it
        // is empty): report it where the mapping starts, which is what lacks the field.
        Role::Mapping => {
            if let Some(m) = found.key_of.or(found.mapping) {
                finding.field = m.path;
                (finding.pos.line, finding.pos.column) = m.start;
            }
        }
        // The message names the key; the field is the mapping holding it.
        Role::Key => {
            if let Some(m) = found.key_of {
                finding.field = m.path;
            }
        }
        Role::Value => {
            if let Some(path) = found.value.or(found.key_of.map(|m| m.path)) {
                finding.field = path;
            }
        }
        Role::Syntax => {}
    }
    finding
}

/// The error's text for users: no position (the finding carries it) and no advice meant for
/// programmers. Only the first line is kept.
fn message(err: &serde_saphyr::Error) -> String {
    let mut options = serde_saphyr::RenderOptions::new(&UserWording);
    options.snippets = serde_saphyr::SnippetMode::Off;
    let text = err.render_with_options(options);
    let first = text.lines().next().unwrap_or("").trim();
    if first.is_empty() { "invalid YAML".to_string() } else { first.to_string() }
}

/// serde-saphyr's user-facing wording, without position suffixes and with a plain message
/// for duplicate keys (its own mentions `DuplicateKeyPolicy`, a library option).
struct UserWording;

impl serde_saphyr::Localizer for UserWording {
    fn attach_location<'a>(&self, base: Cow<'a, str>, _: serde_saphyr::Location) -> Cow<'a, str> {
        base
    }
    fn alias_used_at(&self, _: serde_saphyr::Location) -> String {
        String::new()
    }
}

impl serde_saphyr::MessageFormatter for UserWording {
    fn localizer(&self) -> &dyn serde_saphyr::Localizer {
        self
    }
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> Cow<'a, str> {
        match err {
            serde_saphyr::Error::DuplicateMappingKey { key: Some(k), .. } => Cow::Owned(format!("duplicate key `{k}`")),
            serde_saphyr::Error::DuplicateMappingKey { key: None, .. } => Cow::Borrowed("duplicate key"),
            _ => serde_saphyr::UserMessageFormatter.format_message(err),
        }
    }
}

/// What an error's position refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Malformed YAML or a resource limit: no field to name.
    Syntax,
    /// A value of the wrong type or form.
    Value,
    /// A mapping key (unknown or repeated).
    Key,
    /// A mapping lacking a key.
    Mapping,
}

fn role(err: &serde_saphyr::Error) -> Role {
    use serde_saphyr::Error as E;
    let mut inner = err.without_snippet();
    while let E::AliasError { error, .. } | E::WithSnippet { error, .. } = inner {
        inner = error;
    }
    match inner {
        E::SerdeMissingField { .. } => Role::Mapping,
        E::SerdeUnknownField { .. } | E::DuplicateMappingKey { .. } => Role::Key,
        E::Message { .. }
        | E::Unexpected { .. }
        | E::InvalidScalar { .. }
        | E::NonFiniteFloat { .. }
        | E::SerdeInvalidType { .. }
        | E::SerdeInvalidValue { .. }
        | E::SerdeInvalidLength { .. }
        | E::SerdeUnknownVariant { .. }
        | E::SerdeVariantId { .. }
        | E::InvalidBooleanStrict { .. }
        | E::InvalidCharNull { .. }
        | E::InvalidCharNotSingleScalar { .. }
        | E::NullIntoString { .. }
        | E::QuotingRequired { .. }
        | E::UnexpectedValueForUnit { .. }
        | E::ExpectedEmptyMappingForUnitStruct { .. }
        | E::ExternallyTaggedEnumExpectedScalarOrMapping { .. }
        | E::UnexpectedValueForUnitEnumVariant { .. }
        | E::TaggedEnumMismatch { .. } => Role::Value,
        _ => Role::Syntax,
    }
}

/// A mapping found by [`locate`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    /// Field path of the mapping (`""` for a document's root).
    path: String,
    /// Where it starts: its first key, or `{`.
    start: (u64, u64),
}

/// The nodes starting at one position of a YAML text.
#[derive(Debug, Default, PartialEq, Eq)]
struct Located {
    /// A value (not a key) starts here: its field path, e.g. `workload[0].rate`.
    value: Option<String>,
    /// A mapping key starts here: the mapping it belongs to.
    key_of: Option<Mapping>,
    /// A mapping starts here.
    mapping: Option<Mapping>,
}

/// One step of a field path.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Index(usize),
}

/// An open mapping or sequence while replaying parser events.
struct Frame {
    /// How the container is reached from its parent; `None` for a document root.
    seg: Option<Seg>,
    start: (u64, u64),
    /// The container is itself a (complex) mapping key.
    is_key: bool,
    /// Mapping: the key whose value comes next (`None`: a key comes next). Sequence: unused.
    key: Option<String>,
    /// Sequence: index of the next item; `None` for a mapping.
    next: Option<usize>,
}

fn path(stack: &[Frame], last: Option<&Seg>) -> String {
    let mut out = String::new();
    for seg in stack.iter().filter_map(|f| f.seg.as_ref()).chain(last) {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A node finished inside the container on top of `stack`: as its key (`key` is the key's
/// text) or as a value.
fn finished(stack: &mut [Frame], key: Option<String>) {
    if let Some(top) = stack.last_mut() {
        match (&mut top.next, key) {
            (Some(i), _) => *i += 1,
            (None, Some(k)) => top.key = Some(k),
            (None, None) => top.key = None,
        }
    }
}

/// Replays `text` through the YAML parser and reports which nodes start at `at` (1-based
/// line and column, as serde-saphyr reports them), with their field paths. Paths restart
/// at each document. Parsing stops at the first syntax error.
fn locate(text: &str, at: (u64, u64)) -> Located {
    use serde_saphyr::granit_parser::{Event, Parser};
    let mut found = Located::default();
    let mut stack: Vec<Frame> = Vec::new();
    let mut parser = Parser::new_from_str(text);
    while let Some(Ok((event, span))) = parser.next_event() {
        let pos = (span.start.line() as u64, span.start.col() as u64 + 1);
        let is_node =
            matches!(event, Event::Scalar(..) | Event::Alias(_) | Event::MappingStart(..) | Event::SequenceStart(..));
        if is_node {
            let is_key = stack.last().is_some_and(|f| f.next.is_none() && f.key.is_none());
            let seg = match stack.last() {
                Some(_) if is_key => None,
                Some(Frame { next: Some(i), .. }) => Some(Seg::Index(*i)),
                Some(f) => f.key.clone().map(Seg::Key),
                None => None,
            };
            if pos == at {
                if is_key {
                    let start = stack.last().expect("a key has a mapping").start;
                    found.key_of.get_or_insert_with(|| Mapping { path: path(&stack, None), start });
                } else {
                    found.value.get_or_insert_with(|| path(&stack, seg.as_ref()));
                }
                if matches!(event, Event::MappingStart(..)) && !is_key {
                    found.mapping.get_or_insert(Mapping { path: path(&stack, seg.as_ref()), start: pos });
                }
            }
            match event {
                Event::MappingStart(..) | Event::SequenceStart(..) => stack.push(Frame {
                    seg: if is_key { Some(Seg::Key("?".into())) } else { seg },
                    start: pos,
                    is_key,
                    key: None,
                    next: matches!(event, Event::SequenceStart(..)).then_some(0),
                }),
                Event::Scalar(v, ..) => finished(&mut stack, is_key.then(|| v.into_owned())),
                _ => finished(&mut stack, is_key.then(|| "*".to_string())),
            }
        } else {
            match event {
                Event::DocumentStart(..) => stack.clear(),
                Event::MappingEnd | Event::SequenceEnd => {
                    if let Some(f) = stack.pop() {
                        finished(&mut stack, f.is_key.then(|| "?".to_string()));
                    }
                }
                _ => {}
            }
        }
    }
    found
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

#[cfg(test)]
mod tests {
    use super::*;

    fn err_of<T: for<'de> serde::Deserialize<'de> + fmt::Debug>(text: &str) -> Finding {
        let e = serde_saphyr::from_str::<T>(text).expect_err("invalid input");
        from_yaml_error("f.yaml", text, &e)
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Top {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        n: u32,
        rate: Option<f64>,
        tags: Option<Vec<u16>>,
    }

    fn at(f: &Finding) -> (u64, u64) {
        (f.pos.line, f.pos.column)
    }

    #[test]
    fn a_wrong_value_names_its_field_path_in_block_and_flow_style() {
        let f = err_of::<Top>("name: a\nitems:\n  - n: 1\n  - n: 2\n    rate: fast\n");
        assert_eq!((at(&f), f.field.as_str()), ((5, 11), "items[1].rate"), "{f}");
        assert_eq!(f.message, "invalid floating point", "{f}");
        let f = err_of::<Top>("name: a\nitems: [{n: 1, tags: [1, -2]}]\n");
        assert_eq!((at(&f), f.field.as_str()), ((2, 26), "items[0].tags[1]"), "{f}");
        let f = err_of::<Top>("name: a\nitems: {n: 1}\n");
        assert_eq!(f.field, "items", "{f}");
    }

    #[test]
    fn the_message_does_not_repeat_the_position() {
        let f = err_of::<Top>("name: a\nitems: []\nextra: 1\n");
        assert_eq!(at(&f), (3, 1), "{f}");
        assert!(!f.message.contains("line"), "{f}");
        assert!(f.message.starts_with("unknown field `extra`"), "{f}");
        assert_eq!(f.field, "", "{f}");
    }

    #[test]
    fn an_unknown_key_names_its_mapping() {
        let f = err_of::<Top>("name: a\nitems:\n  - {n: 1, m: 2}\n");
        assert_eq!((at(&f), f.field.as_str()), ((3, 12), "items[0]"), "{f}");
    }

    #[test]
    fn a_missing_field_is_reported_where_its_mapping_starts() {
        let f = err_of::<Top>("name: a\nitems:\n  - n: 1\n  - rate: 1.5\n    tags: [1]\n");
        assert_eq!((at(&f), f.field.as_str()), ((4, 5), "items[1]"), "{f}");
        assert_eq!(f.message, "missing field `n`", "{f}");
        let f = err_of::<Top>("items:\n  - {}\n");
        assert_eq!((at(&f), f.field.as_str()), ((2, 5), "items[0]"), "{f}");
        let f = err_of::<Top>("# header\nitems: []\n");
        assert_eq!((at(&f), f.field.as_str()), ((2, 1), ""), "{f}");
    }

    #[test]
    fn a_duplicate_key_is_named_without_library_advice() {
        let f = err_of::<Top>("name: a\nname: b\nitems: []\n");
        assert_eq!(at(&f), (2, 1), "{f}");
        assert_eq!(f.message, "duplicate key `name`", "{f}");
    }

    #[test]
    fn malformed_yaml_names_no_field() {
        let f = err_of::<Top>("name: \"a\nitems: []\n");
        assert_eq!(f.field, "", "{f}");
        assert!(f.pos.line > 0 && !f.message.contains(" at line "), "{f}");
    }

    #[test]
    fn paths_restart_at_each_document() {
        let text = "a: 1\n---\nb:\n  - x: 1\n    y: 2\n";
        assert_eq!(locate(text, (5, 8)).value.as_deref(), Some("b[0].y"));
        let key = locate(text, (5, 5)).key_of.expect("y is a key");
        assert_eq!((key.path.as_str(), key.start), ("b[0]", (4, 5)));
        assert_eq!(locate(text, (9, 9)), Located::default());
    }
}
