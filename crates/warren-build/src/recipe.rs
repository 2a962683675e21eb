//! The recipe: a Dockerfile subset, parsed from untrusted bytes into typed
//! steps that remember their line.
//!
//! Accepted: `FROM image` (once, first), `RUN` (shell form, or the JSON
//! exec form `["argv0", ...]`), `COPY src... dest` (or `COPY ["src", ...,
//! "dest"]`), `ENV k=v ...` and `ENV k v`, `WORKDIR`, `USER`, `CMD`,
//! `ENTRYPOINT`; `#` comment lines (parser directives are comments too),
//! blank lines, and `\` line continuations. Anything else is refused with
//! [`BuildError::Recipe`] naming the line.
//!
//! Words of `ENV`, `COPY`, `WORKDIR` and `USER` are split and unquoted
//! like Docker does (double quotes, single quotes, backslash escapes) and
//! keep `$NAME`, `${NAME}`, `${NAME:-word}` and `${NAME:+word}` references
//! as [`Part::Var`]: they are expanded at build time against the
//! environment accumulated so far (the base image's and earlier `ENV`s).
//! `RUN`, `CMD` and `ENTRYPOINT` are not expanded: the shell does that.
//!
//! Bounds (hostile input): [`MAX_RECIPE_BYTES`], [`MAX_STEPS`],
//! [`MAX_LINE_BYTES`] per logical line, [`MAX_WORDS`] per instruction.

use crate::BuildError;

/// Largest recipe accepted.
pub const MAX_RECIPE_BYTES: usize = 256 * 1024;
/// Most instructions after `FROM`.
pub const MAX_STEPS: usize = 256;
/// Longest logical line (continuations joined).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// Most words (or JSON array items) in one instruction.
pub const MAX_WORDS: usize = 4096;

/// A parsed recipe.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    /// The base image reference (`FROM`).
    pub from: String,
    /// Line of the `FROM` instruction.
    pub from_line: u32,
    /// The `FROM` instruction as written.
    pub from_text: String,
    /// Everything after `FROM`, in order.
    pub steps: Vec<Step>,
}

/// One instruction after `FROM`.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// 1-based line where the instruction starts.
    pub line: u32,
    /// The instruction as written (continuations joined, trimmed).
    pub text: String,
    pub kind: StepKind,
}

/// What a step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind {
    Run(Command),
    Copy { sources: Vec<Word>, dest: Word },
    Env(Vec<(String, Word)>),
    Workdir(Word),
    User(Word),
    Cmd(Command),
    Entrypoint(Command),
}

impl StepKind {
    /// Whether the step only changes the image config (no sandbox).
    pub fn is_config_only(&self) -> bool {
        !matches!(self, StepKind::Run(_) | StepKind::Copy { .. })
    }
}

/// A command of `RUN`, `CMD` or `ENTRYPOINT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run through `/bin/sh -c`.
    Shell(String),
    /// An argv, run as is.
    Exec(Vec<String>),
}

impl Command {
    /// The argv to run.
    pub fn argv(&self) -> Vec<String> {
        match self {
            Command::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            Command::Exec(v) => v.clone(),
        }
    }
}

/// A word with variable references still to expand.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Word(pub Vec<Part>);

/// A piece of a [`Word`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Var(Var),
}

/// `$NAME`, `${NAME}`, `${NAME:-default}` or `${NAME:+alternative}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Var {
    pub name: String,
    pub modifier: Option<(VarModifier, String)>,
}

/// The operator of a `${NAME:?word}` reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarModifier {
    /// `:-`: the word when the variable is unset or empty.
    Default,
    /// `:+`: the word when the variable is set and not empty.
    Alternative,
}

impl Word {
    /// A word with no variables.
    pub fn lit(s: &str) -> Word {
        Word(vec![Part::Lit(s.to_string())])
    }

    /// Expands the variables; `lookup` gives a variable's value.
    pub fn expand(&self, lookup: impl Fn(&str) -> Option<String>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    let val = lookup(&v.name).filter(|s| !s.is_empty());
                    match (&v.modifier, val) {
                        (None, Some(val)) => out.push_str(&val),
                        (None, None) => {}
                        (Some((VarModifier::Default, w)), None) => out.push_str(w),
                        (Some((VarModifier::Default, _)), Some(val)) => out.push_str(&val),
                        (Some((VarModifier::Alternative, w)), Some(_)) => out.push_str(w),
                        (Some((VarModifier::Alternative, _)), None) => {}
                    }
                }
            }
        }
        out
    }

    /// Expands against `KEY=VALUE` entries (the last one of a key wins).
    pub fn expand_env(&self, env: &[String]) -> String {
        self.expand(|name| {
            env.iter().rev().find_map(|kv| {
                kv.split_once('=')
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            })
        })
    }
}

/// Parses a recipe.
pub fn parse(bytes: &[u8]) -> Result<Recipe, BuildError> {
    if bytes.len() > MAX_RECIPE_BYTES {
        return Err(recipe_err(
            0,
            format!("the recipe is larger than {MAX_RECIPE_BYTES} bytes"),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        recipe_err(line as u32, "the recipe is not valid UTF-8")
    })?;
    let mut from: Option<(String, u32, String)> = None;
    let mut steps = Vec::new();
    for (line, logical) in logical_lines(text)? {
        let (keyword, rest) = split_keyword(&logical);
        let keyword = keyword.to_ascii_uppercase();
        let display: String = logical.trim().chars().take(512).collect();
        if from.is_none() {
            if keyword != "FROM" {
                return Err(recipe_err(
                    line,
                    format!("the first instruction must be FROM, not {keyword}"),
                ));
            }
            from = Some((parse_from(line, rest)?, line, display));
            continue;
        }
        let kind = match keyword.as_str() {
            "FROM" => {
                return Err(recipe_err(
                    line,
                    "only one FROM is supported (no multi-stage builds)",
                ))
            }
            "RUN" => StepKind::Run(parse_command(line, "RUN", rest)?),
            "CMD" => StepKind::Cmd(parse_command(line, "CMD", rest)?),
            "ENTRYPOINT" => StepKind::Entrypoint(parse_command(line, "ENTRYPOINT", rest)?),
            "COPY" => parse_copy(line, rest)?,
            "ENV" => StepKind::Env(parse_env(line, rest)?),
            "WORKDIR" => StepKind::Workdir(single_word(line, "WORKDIR", rest)?),
            "USER" => StepKind::User(single_word(line, "USER", rest)?),
            other => {
                return Err(recipe_err(
                    line,
                    format!(
                        "unsupported instruction {other} (supported: FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT)"
                    ),
                ))
            }
        };
        if steps.len() == MAX_STEPS {
            return Err(recipe_err(
                line,
                format!("more than {MAX_STEPS} instructions"),
            ));
        }
        steps.push(Step {
            line,
            text: display,
            kind,
        });
    }
    let Some((from, from_line, from_text)) = from else {
        return Err(recipe_err(1, "the recipe has no FROM instruction"));
    };
    Ok(Recipe {
        from,
        from_line,
        from_text,
        steps,
    })
}

fn recipe_err(line: u32, reason: impl Into<String>) -> BuildError {
    BuildError::Recipe {
        line,
        reason: reason.into(),
    }
}

/// Joins continuation lines and drops comments and blank lines: (first
/// line number, logical line).
fn logical_lines(text: &str) -> Result<Vec<(u32, String)>, BuildError> {
    let mut out = Vec::new();
    let mut current: Option<(u32, String)> = None;
    for (i, raw) in text.split('\n').enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = raw.trim_start();
        // Comment lines, also inside a continued instruction (as Docker).
        if trimmed.starts_with('#') {
            continue;
        }
        if trimmed.trim_end().is_empty() && current.is_none() {
            continue;
        }
        let (body, continues) = match raw.trim_end().strip_suffix('\\') {
            Some(b) => (b, true),
            None => (raw, false),
        };
        let (start, mut acc) = current.take().unwrap_or((n, String::new()));
        if acc.len() + body.len() > MAX_LINE_BYTES {
            return Err(recipe_err(
                start,
                format!("an instruction is longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        acc.push_str(body);
        if continues {
            current = Some((start, acc));
        } else if !acc.trim().is_empty() {
            out.push((start, acc));
        }
    }
    if let Some((start, acc)) = current {
        if !acc.trim().is_empty() {
            out.push((start, acc));
        }
    }
    Ok(out)
}

/// The keyword and the rest of the line (leading whitespace removed).
fn split_keyword(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim_start()),
        None => (line, ""),
    }
}

fn parse_from(line: u32, rest: &str) -> Result<String, BuildError> {
    let words: Vec<&str> = rest.split_whitespace().collect();
    match words.as_slice() {
        [] => Err(recipe_err(line, "FROM needs an image")),
        [w, ..] if w.starts_with("--") => Err(recipe_err(
            line,
            format!("FROM option {w} is not supported"),
        )),
        [image] => {
            if image.contains('$') {
                return Err(recipe_err(
                    line,
                    "variables in FROM are not supported (there is no ARG)",
                ));
            }
            if image.len() > 1024 || image.chars().any(char::is_control) {
                return Err(recipe_err(line, "FROM names an invalid image reference"));
            }
            Ok((*image).to_string())
        }
        [_, kw, ..] if kw.eq_ignore_ascii_case("as") => Err(recipe_err(
            line,
            "FROM ... AS is not supported (no multi-stage builds)",
        )),
        _ => Err(recipe_err(line, "FROM takes exactly one image")),
    }
}

/// The JSON exec form, when `rest` is a JSON array of strings.
fn json_array(line: u32, rest: &str) -> Result<Option<Vec<String>>, BuildError> {
    if !rest.starts_with('[') {
        return Ok(None);
    }
    match serde_json::from_str::<Vec<String>>(rest.trim_end()) {
        Ok(v) => {
            if v.len() > MAX_WORDS {
                return Err(recipe_err(line, format!("more than {MAX_WORDS} items")));
            }
            Ok(Some(v))
        }
        // Not JSON: Docker treats it as the shell form.
        Err(_) => Ok(None),
    }
}

fn parse_command(line: u32, keyword: &str, rest: &str) -> Result<Command, BuildError> {
    if rest.starts_with("--") {
        let opt = rest.split_whitespace().next().unwrap_or(rest);
        return Err(recipe_err(
            line,
            format!("{keyword} option {opt} is not supported"),
        ));
    }
    if let Some(argv) = json_array(line, rest)? {
        if argv.is_empty() {
            return Err(recipe_err(line, format!("{keyword} has an empty command")));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(recipe_err(line, "a command may not contain NUL bytes"));
        }
        return Ok(Command::Exec(argv));
    }
    let text = rest.trim();
    if text.is_empty() {
        return Err(recipe_err(line, format!("{keyword} needs a command")));
    }
    Ok(Command::Shell(text.to_string()))
}

fn parse_copy(line: u32, rest: &str) -> Result<StepKind, BuildError> {
    if rest.starts_with("--") {
        let opt = rest.split_whitespace().next().unwrap_or(rest);
        return Err(recipe_err(
            line,
            format!("COPY option {opt} is not supported (files are copied as root)"),
        ));
    }
    let mut words = match json_array(line, rest)? {
        Some(items) => items
            .iter()
            .map(|s| split_words(line, s, false).map(|mut w| w.pop().unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()?,
        None => split_words(line, rest, true)?,
    };
    if words.len() < 2 {
        return Err(recipe_err(
            line,
            "COPY needs at least one source and a destination",
        ));
    }
    let dest = words.pop().expect("at least two words");
    Ok(StepKind::Copy {
        sources: words,
        dest,
    })
}

fn parse_env(line: u32, rest: &str) -> Result<Vec<(String, Word)>, BuildError> {
    let first = rest.split_whitespace().next().unwrap_or("");
    if first.is_empty() {
        return Err(recipe_err(line, "ENV needs a variable"));
    }
    let mut out = Vec::new();
    if !first.contains('=') {
        // Legacy form: `ENV NAME the rest of the line`.
        let name = first;
        check_env_name(line, name)?;
        let value = rest[first.len()..].trim();
        if value.is_empty() {
            return Err(recipe_err(line, format!("ENV {name} needs a value")));
        }
        let word = split_words(line, value, false)?.pop().unwrap_or_default();
        out.push((name.to_string(), word));
        return Ok(out);
    }
    // `k=v` pairs: each whitespace-separated word (quotes respected) is
    // `NAME=value`.
    for word in split_raw(line, rest)? {
        let Some((name, value)) = word.split_once('=') else {
            return Err(recipe_err(
                line,
                format!("ENV expects NAME=value pairs, got {word:?}"),
            ));
        };
        check_env_name(line, name)?;
        let word = split_words(line, value, false)?.pop().unwrap_or_default();
        out.push((name.to_string(), word));
    }
    Ok(out)
}

fn check_env_name(line: u32, name: &str) -> Result<(), BuildError> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok && name.len() <= 256 {
        Ok(())
    } else {
        Err(recipe_err(
            line,
            format!("invalid environment variable name {name:?}"),
        ))
    }
}

fn single_word(line: u32, keyword: &str, rest: &str) -> Result<Word, BuildError> {
    let words = split_words(line, rest, true)?;
    match words.len() {
        0 => Err(recipe_err(line, format!("{keyword} needs a value"))),
        1 => Ok(words.into_iter().next().expect("one word")),
        _ => Err(recipe_err(
            line,
            format!("{keyword} takes one value (quote it if it has spaces)"),
        )),
    }
}

/// Splits on unquoted whitespace without interpreting anything (for `ENV
/// k=v` pairs, whose values are then parsed as words).
fn split_raw(line: u32, s: &str) -> Result<Vec<String>, BuildError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (Some('\''), c) => cur.push(c),
            (_, '\\') => {
                cur.push('\\');
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (_, c) => cur.push(c),
        }
        if out.len() > MAX_WORDS {
            return Err(recipe_err(line, format!("more than {MAX_WORDS} words")));
        }
    }
    if quote.is_some() {
        return Err(recipe_err(line, "unterminated quote"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Splits into words (when `split`; else the whole string is one word),
/// removing quotes and escapes and keeping variable references.
fn split_words(line: u32, s: &str, split: bool) -> Result<Vec<Word>, BuildError> {
    let mut words = Vec::new();
    let mut parts: Vec<Part> = Vec::new();
    let mut lit = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let flush_lit = |lit: &mut String, parts: &mut Vec<Part>| {
        if !lit.is_empty() {
            parts.push(Part::Lit(std::mem::take(lit)));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match (quote, c) {
            (None, c) if split && c.is_whitespace() => {
                if in_word {
                    flush_lit(&mut lit, &mut parts);
                    words.push(Word(std::mem::take(&mut parts)));
                    in_word = false;
                    if words.len() > MAX_WORDS {
                        return Err(recipe_err(line, format!("more than {MAX_WORDS} words")));
                    }
                }
            }
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => lit.push(c),
            (_, '\\') => {
                in_word = true;
                match chars.get(i + 1) {
                    // Inside double quotes only these are escapes.
                    Some(&n) if quote.is_none() || matches!(n, '"' | '\\' | '$') => {
                        lit.push(n);
                        i += 1;
                    }
                    _ => lit.push('\\'),
                }
            }
            (_, '$') => {
                in_word = true;
                let (var, used) = parse_var(line, &chars[i + 1..])?;
                match var {
                    Some(v) => {
                        flush_lit(&mut lit, &mut parts);
                        parts.push(Part::Var(v));
                    }
                    None => lit.push('$'),
                }
                i += used;
            }
            (_, c) => {
                in_word = true;
                lit.push(c);
            }
        }
        i += 1;
    }
    if quote.is_some() {
        return Err(recipe_err(line, "unterminated quote"));
    }
    if in_word || !split {
        flush_lit(&mut lit, &mut parts);
        words.push(Word(parts));
    }
    Ok(words)
}

/// A variable reference after a `$`: the variable (or `None` for a lone
/// `$`) and how many characters it used.
fn parse_var(line: u32, rest: &[char]) -> Result<(Option<Var>, usize), BuildError> {
    let is_name = |c: char, first: bool| {
        c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit())
    };
    match rest.first() {
        Some('{') => {
            let close = rest
                .iter()
                .position(|&c| c == '}')
                .ok_or_else(|| recipe_err(line, "unterminated ${...}"))?;
            let inner: String = rest[1..close].iter().collect();
            let (name, modifier) = match inner.find(':') {
                Some(i) => {
                    let (name, op) = inner.split_at(i);
                    let modifier = if let Some(w) = op.strip_prefix(":-") {
                        (VarModifier::Default, w.to_string())
                    } else if let Some(w) = op.strip_prefix(":+") {
                        (VarModifier::Alternative, w.to_string())
                    } else {
                        return Err(recipe_err(
                            line,
                            format!("unsupported variable modifier in ${{{inner}}}"),
                        ));
                    };
                    (name.to_string(), Some(modifier))
                }
                None => (inner, None),
            };
            let mut cs = name.chars();
            let valid =
                cs.next().is_some_and(|c| is_name(c, true)) && cs.all(|c| is_name(c, false));
            if !valid {
                return Err(recipe_err(
                    line,
                    format!("invalid variable name in ${{{name}}}"),
                ));
            }
            Ok((Some(Var { name, modifier }), close + 1))
        }
        Some(&c) if is_name(c, true) => {
            let len = rest.iter().take_while(|&&c| is_name(c, false)).count();
            Ok((
                Some(Var {
                    name: rest[..len].iter().collect(),
                    modifier: None,
                }),
                len,
            ))
        }
        _ => Ok((None, 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_of(e: BuildError) -> (u32, String) {
        match e {
            BuildError::Recipe { line, reason } => (line, reason),
            other => panic!("not a recipe error: {other:?}"),
        }
    }

    fn bad(text: &str) -> (u32, String) {
        line_of(parse(text.as_bytes()).expect_err(text))
    }

    fn lit(s: &str) -> Word {
        Word::lit(s)
    }

    #[test]
    fn a_full_recipe() {
        let r = parse(
            b"# syntax=docker/dockerfile:1\n\
              FROM busybox:1.36\n\
              \n\
              # install\n\
              RUN echo hi && \\\n    echo there\n\
              RUN [\"/bin/echo\", \"exec form\"]\n\
              COPY a.txt b/ /app/\n\
              ENV A=1 B=\"two words\"\n\
              env C 3 4\n\
              WORKDIR /app\n\
              USER nobody\n\
              CMD [\"sh\"]\n\
              ENTRYPOINT exec top\n",
        )
        .unwrap();
        assert_eq!(r.from, "busybox:1.36");
        assert_eq!(r.from_line, 2);
        assert_eq!(r.steps.len(), 9);
        assert_eq!(r.steps[0].line, 5);
        assert_eq!(
            r.steps[0].kind,
            StepKind::Run(Command::Shell("echo hi &&     echo there".into()))
        );
        assert_eq!(
            r.steps[1].kind,
            StepKind::Run(Command::Exec(vec!["/bin/echo".into(), "exec form".into()]))
        );
        assert_eq!(r.steps[1].line, 7);
        assert_eq!(
            r.steps[2].kind,
            StepKind::Copy {
                sources: vec![lit("a.txt"), lit("b/")],
                dest: lit("/app/")
            }
        );
        assert_eq!(
            r.steps[3].kind,
            StepKind::Env(vec![("A".into(), lit("1")), ("B".into(), lit("two words"))])
        );
        assert_eq!(
            r.steps[4].kind,
            StepKind::Env(vec![("C".into(), lit("3 4"))])
        );
        assert_eq!(r.steps[5].kind, StepKind::Workdir(lit("/app")));
        assert_eq!(r.steps[6].kind, StepKind::User(lit("nobody")));
        assert_eq!(
            r.steps[7].kind,
            StepKind::Cmd(Command::Exec(vec!["sh".into()]))
        );
        assert_eq!(
            r.steps[8].kind,
            StepKind::Entrypoint(Command::Shell("exec top".into()))
        );
        assert_eq!(
            Command::Shell("exec top".into()).argv(),
            vec!["/bin/sh", "-c", "exec top"]
        );
        assert!(r.steps[3].kind.is_config_only());
        assert!(!r.steps[2].kind.is_config_only());
    }

    #[test]
    fn comments_inside_continuations_and_crlf() {
        let r = parse(b"FROM host\r\nRUN a \\\r\n# a comment\r\n  b\r\n").unwrap();
        assert_eq!(
            r.steps[0].kind,
            StepKind::Run(Command::Shell("a   b".into()))
        );
        assert_eq!(r.steps[0].line, 2);
        // A continuation at the very end.
        let r = parse(b"FROM host\nRUN a \\").unwrap();
        assert_eq!(r.steps[0].kind, StepKind::Run(Command::Shell("a".into())));
    }

    #[test]
    fn invalid_json_is_the_shell_form() {
        let r = parse(b"FROM host\nRUN [ -f /x ] || echo no\n").unwrap();
        assert_eq!(
            r.steps[0].kind,
            StepKind::Run(Command::Shell("[ -f /x ] || echo no".into()))
        );
        let r = parse(b"FROM host\nCOPY [\"a b\", \"/c d/\"]\n").unwrap();
        assert_eq!(
            r.steps[0].kind,
            StepKind::Copy {
                sources: vec![lit("a b")],
                dest: lit("/c d/")
            }
        );
    }

    #[test]
    fn variables_expand_later() {
        let r = parse(b"FROM host\nENV P=/opt/bin:$PATH Q=${HOME}/x R=${NOPE:-dflt} S=${A:+alt} T='$lit' U=\\$esc\n").unwrap();
        let StepKind::Env(vars) = &r.steps[0].kind else {
            panic!()
        };
        let env = vec!["PATH=/bin".to_string(), "HOME=/root".into(), "A=1".into()];
        let got: Vec<String> = vars.iter().map(|(_, w)| w.expand_env(&env)).collect();
        assert_eq!(
            got,
            vec!["/opt/bin:/bin", "/root/x", "dflt", "alt", "$lit", "$esc"]
        );
        let w = &split_words(1, "a$ b", true).unwrap();
        assert_eq!(w[0].expand_env(&[]), "a$");
        assert_eq!(w[1].expand_env(&[]), "b");
    }

    #[test]
    fn refusals_name_the_line() {
        assert_eq!(bad("").0, 1);
        assert!(bad("# only a comment\n").1.contains("no FROM"));
        let (l, r) = bad("RUN x\n");
        assert_eq!(l, 1);
        assert!(r.contains("must be FROM"), "{r}");
        let (l, r) = bad("FROM host\n\nRUN ok\nADD x /y\n");
        assert_eq!(l, 4);
        assert!(r.contains("unsupported instruction ADD"), "{r}");
        assert_eq!(bad("FROM a\nFROM b\n").0, 2);
        assert!(bad("FROM a AS b\n").1.contains("multi-stage"));
        assert!(bad("FROM\n").1.contains("needs an image"));
        assert!(bad("FROM $X\n").1.contains("ARG"));
        assert_eq!(bad("FROM a\nCOPY --chown=1 a b\n").0, 2);
        assert!(bad("FROM a\nCOPY only\n").1.contains("destination"));
        assert!(bad("FROM a\nRUN\n").1.contains("needs a command"));
        assert!(bad("FROM a\nRUN []\n").1.contains("empty"));
        assert!(bad("FROM a\nRUN --mount=type=cache x\n")
            .1
            .contains("--mount"));
        assert!(bad("FROM a\nENV\n").1.contains("needs a variable"));
        assert!(bad("FROM a\nENV 1A=b\n").1.contains("invalid environment"));
        assert!(bad("FROM a\nENV A\n").1.contains("needs a value"));
        assert!(bad("FROM a\nENV A=\"open\n").1.contains("unterminated"));
        assert!(bad("FROM a\nENV A=b c\n").1.contains("NAME=value"));
        assert!(bad("FROM a\nWORKDIR a b\n").1.contains("one value"));
        assert!(bad("FROM a\nUSER\n").1.contains("needs a value"));
        assert!(bad("FROM a\nENV A=${B\n").1.contains("unterminated"));
        assert!(bad("FROM a\nENV A=${B:?x}\n").1.contains("modifier"));
        assert!(bad("FROM a\nENV A=${1x}\n").1.contains("invalid variable"));
        let (l, r) = line_of(parse(b"FROM a\nRUN \xff\n").unwrap_err());
        assert_eq!(l, 2);
        assert!(r.contains("UTF-8"));
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let big = vec![b'#'; MAX_RECIPE_BYTES + 1];
        assert!(bad(std::str::from_utf8(&big).unwrap()).1.contains("larger"));
        let mut many = String::from("FROM host\n");
        for _ in 0..=MAX_STEPS {
            many.push_str("ENV A=1\n");
        }
        let (l, r) = bad(&many);
        assert_eq!(l as usize, MAX_STEPS + 2);
        assert!(r.contains("more than"), "{r}");
        let long = format!(
            "FROM host\nRUN {}\\\n{}\n",
            "x".repeat(40_000),
            "y".repeat(40_000)
        );
        let (l, r) = bad(&long);
        assert_eq!(l, 2);
        assert!(r.contains("longer"), "{r}");
        // Exactly at the limit is fine.
        let mut ok = String::from("FROM host\n");
        for _ in 0..MAX_STEPS {
            ok.push_str("ENV A=1\n");
        }
        assert_eq!(parse(ok.as_bytes()).unwrap().steps.len(), MAX_STEPS);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: random mixes of the tokens that
        // matter to the parser.
        let tokens: [&[u8]; 16] = [
            b"FROM h\n",
            b"RUN ",
            b"COPY ",
            b"ENV ",
            b"\\\n",
            b"\"",
            b"'",
            b"$",
            b"${",
            b"}",
            b"[",
            b"]",
            b" ",
            b"=",
            b"\xc3",
            b"#",
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut input = Vec::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                input.extend_from_slice(tokens[(seed % 16) as usize]);
            }
            let _ = parse(&input);
        }
    }
}
