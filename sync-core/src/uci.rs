//! Our own UCI parser and writer (OpenWrt `/etc/config/*` syntax), and UCI state files.
//!
//! The syntax follows libuci's `file.c`:
//! - commands `package <name>`, `config <type> [<name>]`, `option <name> [<value>]`,
//!   `list <name> [<value>]` (also abbreviated `p`, `c`, `o`, `l`), one a line or separated by
//!   an unquoted `;`;
//! - an argument is made of adjacent pieces, concatenated: unquoted text, `'single quoted'`
//!   (no escapes inside) and `"double quoted"`; a backslash outside single quotes takes the next
//!   character literally (`\'` is a quote, `\\` a backslash, `\n` is the letter `n`, as libuci),
//!   and a backslash at the end of a line joins the next line;
//! - quoted pieces may span lines (the newline is part of the value);
//! - an unquoted `#` starts a comment that runs to the end of the line.
//!
//! Names follow libuci too: section and option names are `[A-Za-z0-9_]+`; a section type is any
//! printable ASCII without spaces (libuci's rule, looser than names: `-`, `.` and the like).
//! A named section that appears twice is one section (the later type wins); `option` on an
//! existing option replaces it; `list` on an existing single value turns it into a list.
//!
//! [`Package::render`] writes what `uci commit` writes (a blank line before each section, tab
//! indented options, values in single quotes with `'\''` for a quote), so parse -> render is the
//! identity on files uci wrote, and render -> parse gives back the same [`Package`] for any
//! valid package, values with quotes, backslashes and newlines included. The only value that
//! cannot be stored is one with a NUL byte: [`Section::set`] and friends refuse it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsx;

use serde::{Deserialize, Serialize};

/// What went wrong reading, changing or writing UCI data.
#[derive(Debug, thiserror::Error)]
pub enum UciError {
    /// A malformed file: `<path>:<line>: <msg>`.
    #[error("{}:{line}: {msg}", path.display())]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    /// The named section does not exist.
    #[error("no section {0:?}")]
    NoSection(String),
    /// A name or value that UCI cannot store.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        what: &'static str,
        value: String,
        why: &'static str,
    },
}

impl UciError {
    fn io(path: &Path, source: io::Error) -> UciError {
        UciError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// An option's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// `option name 'value'`
    Single(String),
    /// `list name 'a'` / `list name 'b'`, in order.
    List(Vec<String>),
}

/// One `config` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    /// The section type (`interface`, `rule`, `peer`, ...).
    pub kind: String,
    /// `None` for an anonymous section.
    pub name: Option<String>,
    /// Options in file order.
    pub options: Vec<(String, Value)>,
}

/// One UCI file (a "package").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub sections: Vec<Section>,
}

/// Whether `s` is a valid section or option name: `[A-Za-z0-9_]+`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `s` is a valid section type: printable ASCII, no spaces (libuci's rule).
pub fn valid_type(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b))
}

/// Whether `s` is a valid package (file) name: `[A-Za-z0-9_-]+`.
pub fn valid_package_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_name(what: &'static str, s: &str) -> Result<(), UciError> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(UciError::Invalid {
            what,
            value: s.to_string(),
            why: "names are made of A-Z a-z 0-9 _",
        })
    }
}

fn check_type(s: &str) -> Result<(), UciError> {
    if valid_type(s) {
        Ok(())
    } else {
        Err(UciError::Invalid {
            what: "section type",
            value: s.to_string(),
            why: "types are printable ASCII without spaces",
        })
    }
}

fn check_value(s: &str) -> Result<(), UciError> {
    if s.contains('\0') {
        Err(UciError::Invalid {
            what: "value",
            value: s.to_string(),
            why: "a value cannot contain a NUL byte",
        })
    } else {
        Ok(())
    }
}

/// `'value'` with uci's `'\''` escaping.
pub fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    out.push_str(&value.replace('\'', "'\\''"));
    out.push('\'');
    out
}

fn render_type(kind: &str) -> String {
    if kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !kind.is_empty()
    {
        kind.to_string()
    } else {
        quote(kind)
    }
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug)]
struct Token {
    text: String,
    line: usize,
}

#[derive(Debug)]
struct Command {
    tokens: Vec<Token>,
    /// Byte span of the command in the text, without its terminator.
    start: usize,
    end: usize,
}

struct Lexer<'a> {
    b: &'a [u8],
    pos: usize,
    line: usize,
    path: &'a Path,
}

fn inline_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

impl<'a> Lexer<'a> {
    fn new(text: &'a str, path: &'a Path) -> Result<Lexer<'a>, UciError> {
        if let Some(at) = text.find('\0') {
            let line = 1 + text[..at].bytes().filter(|&b| b == b'\n').count();
            return Err(syntax(path, line, "NUL byte"));
        }
        Ok(Lexer {
            b: text.as_bytes(),
            pos: 0,
            line: 1,
            path,
        })
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.b.get(self.pos + ahead).copied()
    }

    /// The next non-empty command, or `None` at the end of the text.
    fn next_command(&mut self) -> Result<Option<Command>, UciError> {
        while self.pos < self.b.len() {
            while self.peek().is_some_and(inline_space) {
                self.pos += 1;
            }
            let start = self.pos;
            let mut tokens = Vec::new();
            let end = loop {
                while self.peek().is_some_and(inline_space) {
                    self.pos += 1;
                }
                match self.peek() {
                    None => break self.pos,
                    Some(b'\n') => {
                        let end = self.pos;
                        self.pos += 1;
                        self.line += 1;
                        break end;
                    }
                    Some(b';') => {
                        let end = self.pos;
                        self.pos += 1;
                        break end;
                    }
                    Some(b'#') => {
                        while self.peek().is_some_and(|c| c != b'\n') {
                            self.pos += 1;
                        }
                    }
                    Some(_) => tokens.push(self.token()?),
                }
            };
            if !tokens.is_empty() {
                return Ok(Some(Command { tokens, start, end }));
            }
        }
        Ok(None)
    }

    /// A backslash was consumed: take the next character literally, or join the next line.
    fn backslash(&mut self, buf: &mut Vec<u8>) {
        match self.peek() {
            None => {}
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
            }
            Some(b'\r') if self.peek_at(1) == Some(b'\n') => {
                self.pos += 2;
                self.line += 1;
            }
            Some(c) => {
                buf.push(c);
                self.pos += 1;
            }
        }
    }

    fn token(&mut self) -> Result<Token, UciError> {
        let line = self.line;
        let mut buf = Vec::new();
        while let Some(c) = self.peek() {
            match c {
                b'\n' | b';' | b'#' => break,
                c if inline_space(c) => break,
                b'\'' => {
                    let opened = self.line;
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(syntax(self.path, opened, "unterminated quote (')"))
                            }
                            Some(b'\'') => {
                                self.pos += 1;
                                break;
                            }
                            Some(c) => {
                                if c == b'\n' {
                                    self.line += 1;
                                }
                                buf.push(c);
                                self.pos += 1;
                            }
                        }
                    }
                }
                b'"' => {
                    let opened = self.line;
                    self.pos += 1;
                    loop {
                        match self.peek() {
                            None => {
                                return Err(syntax(self.path, opened, "unterminated quote (\")"))
                            }
                            Some(b'"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(b'\\') => {
                                self.pos += 1;
                                self.backslash(&mut buf);
                            }
                            Some(c) => {
                                if c == b'\n' {
                                    self.line += 1;
                                }
                                buf.push(c);
                                self.pos += 1;
                            }
                        }
                    }
                }
                b'\\' => {
                    self.pos += 1;
                    self.backslash(&mut buf);
                }
                c => {
                    buf.push(c);
                    self.pos += 1;
                }
            }
        }
        // Only ASCII bytes were dropped from valid UTF-8, so this is never lossy.
        Ok(Token {
            text: String::from_utf8_lossy(&buf).into_owned(),
            line,
        })
    }
}

fn syntax(path: &Path, line: usize, msg: impl Into<String>) -> UciError {
    UciError::Syntax {
        path: path.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// Section

impl Section {
    /// A new empty section; `name` `None` is anonymous.
    pub fn new(kind: &str, name: Option<&str>) -> Result<Section, UciError> {
        check_type(kind)?;
        if let Some(n) = name {
            check_name("section name", n)?;
        }
        Ok(Section {
            kind: kind.to_string(),
            name: name.map(str::to_string),
            options: Vec::new(),
        })
    }

    /// The value of `option`, single or list.
    pub fn value(&self, option: &str) -> Option<&Value> {
        self.options
            .iter()
            .find(|(n, _)| n == option)
            .map(|(_, v)| v)
    }

    fn value_mut(&mut self, option: &str) -> Option<&mut Value> {
        self.options
            .iter_mut()
            .find(|(n, _)| n == option)
            .map(|(_, v)| v)
    }

    /// A single value (`None` when missing or a list).
    pub fn get(&self, option: &str) -> Option<&str> {
        match self.value(option) {
            Some(Value::Single(s)) => Some(s),
            _ => None,
        }
    }

    /// A list, or a single value as a one-element list (never split on spaces); empty when
    /// missing.
    pub fn get_list(&self, option: &str) -> Vec<String> {
        match self.value(option) {
            Some(Value::List(l)) => l.clone(),
            Some(Value::Single(s)) => vec![s.clone()],
            None => Vec::new(),
        }
    }

    /// Sets a single value, replacing whatever `option` held (in place).
    pub fn set(&mut self, option: &str, value: &str) -> Result<(), UciError> {
        check_name("option name", option)?;
        check_value(value)?;
        self.put(option, Value::Single(value.to_string()));
        Ok(())
    }

    /// Sets a list, replacing whatever `option` held; an empty list deletes the option (UCI
    /// has no empty lists).
    pub fn set_list(&mut self, option: &str, values: Vec<String>) -> Result<(), UciError> {
        check_name("option name", option)?;
        for v in &values {
            check_value(v)?;
        }
        if values.is_empty() {
            self.delete(option);
        } else {
            self.put(option, Value::List(values));
        }
        Ok(())
    }

    /// Appends to a list (a single value becomes the first element, as uci does).
    pub fn add_list(&mut self, option: &str, value: &str) -> Result<(), UciError> {
        check_name("option name", option)?;
        check_value(value)?;
        self.push_list(option, value.to_string());
        Ok(())
    }

    /// Removes `option`; whether it was there.
    pub fn delete(&mut self, option: &str) -> bool {
        let before = self.options.len();
        self.options.retain(|(n, _)| n != option);
        self.options.len() != before
    }

    fn put(&mut self, option: &str, value: Value) {
        match self.value_mut(option) {
            Some(v) => *v = value,
            None => self.options.push((option.to_string(), value)),
        }
    }

    fn push_list(&mut self, option: &str, value: String) {
        match self.value_mut(option) {
            Some(Value::List(l)) => l.push(value),
            Some(v) => {
                let old = match std::mem::replace(v, Value::List(Vec::new())) {
                    Value::Single(s) => s,
                    Value::List(_) => String::new(),
                };
                *v = Value::List(vec![old, value]);
            }
            None => self
                .options
                .push((option.to_string(), Value::List(vec![value]))),
        }
    }

    fn validate(&self) -> Result<(), UciError> {
        check_type(&self.kind)?;
        if let Some(n) = &self.name {
            check_name("section name", n)?;
        }
        for (name, value) in &self.options {
            check_name("option name", name)?;
            match value {
                Value::Single(s) => check_value(s)?,
                Value::List(l) => {
                    for s in l {
                        check_value(s)?;
                    }
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Package

impl Package {
    /// Parses UCI text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Package, UciError> {
        let mut pkg = Package::default();
        let mut current: Option<usize> = None;
        let mut lx = Lexer::new(text, path)?;
        while let Some(cmd) = lx.next_command()? {
            let kw = &cmd.tokens[0];
            let args = &cmd.tokens[1..];
            let too_many = |n: usize| -> Result<(), UciError> {
                match args.get(n) {
                    Some(t) => Err(syntax(path, t.line, "too many arguments")),
                    None => Ok(()),
                }
            };
            match kw.text.as_str() {
                "package" | "p" => {
                    let name = args
                        .first()
                        .ok_or_else(|| syntax(path, kw.line, "package without name"))?;
                    if !valid_package_name(&name.text) {
                        return Err(syntax(
                            path,
                            name.line,
                            format!("invalid package name {:?}", name.text),
                        ));
                    }
                    too_many(1)?;
                }
                "config" | "c" => {
                    let kind = args
                        .first()
                        .ok_or_else(|| syntax(path, kw.line, "config without section type"))?;
                    if !valid_type(&kind.text) {
                        return Err(syntax(
                            path,
                            kind.line,
                            format!("invalid section type {:?}", kind.text),
                        ));
                    }
                    let name = args.get(1).filter(|t| !t.text.is_empty());
                    if let Some(n) = name {
                        if !valid_name(&n.text) {
                            return Err(syntax(
                                path,
                                n.line,
                                format!("invalid section name {:?}", n.text),
                            ));
                        }
                    }
                    too_many(2)?;
                    let existing = name.and_then(|n| {
                        pkg.sections
                            .iter()
                            .position(|s| s.name.as_deref() == Some(n.text.as_str()))
                    });
                    current = Some(match existing {
                        Some(i) => {
                            pkg.sections[i].kind = kind.text.clone();
                            i
                        }
                        None => {
                            pkg.sections.push(Section {
                                kind: kind.text.clone(),
                                name: name.map(|n| n.text.clone()),
                                options: Vec::new(),
                            });
                            pkg.sections.len() - 1
                        }
                    });
                }
                "option" | "o" | "list" | "l" => {
                    let is_list = kw.text.starts_with('l');
                    let what = if is_list { "list" } else { "option" };
                    let Some(i) = current else {
                        return Err(syntax(
                            path,
                            kw.line,
                            format!("{what} before any config section"),
                        ));
                    };
                    let name = args
                        .first()
                        .ok_or_else(|| syntax(path, kw.line, format!("{what} without name")))?;
                    if !valid_name(&name.text) {
                        return Err(syntax(
                            path,
                            name.line,
                            format!("invalid {what} name {:?}", name.text),
                        ));
                    }
                    too_many(2)?;
                    let value = args.get(1).map(|t| t.text.clone()).unwrap_or_default();
                    let section = &mut pkg.sections[i];
                    if is_list {
                        section.push_list(&name.text, value);
                    } else {
                        section.put(&name.text, Value::Single(value));
                    }
                }
                other => return Err(syntax(path, kw.line, format!("invalid command {other:?}"))),
            }
        }
        Ok(pkg)
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Package, UciError> {
        let text = crate::fsx::read_text(path).map_err(|e| UciError::io(path, e))?;
        Package::parse(&text, path)
    }

    /// Like [`Package::load`], but a missing file is an empty package.
    pub fn load_or_empty(path: &Path) -> Result<Package, UciError> {
        match crate::fsx::read_text(path) {
            Ok(text) => Package::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Package::default()),
            Err(e) => Err(UciError::io(path, e)),
        }
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
    }

    pub fn section_mut(&mut self, name: &str) -> Option<&mut Section> {
        self.sections
            .iter_mut()
            .find(|s| s.name.as_deref() == Some(name))
    }

    /// Sections of type `kind`, named and anonymous, in file order.
    pub fn sections_of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Section> + 'a {
        self.sections.iter().filter(move |s| s.kind == kind)
    }

    /// A single value of a named section.
    pub fn get(&self, section: &str, option: &str) -> Option<&str> {
        self.section(section).and_then(|s| s.get(option))
    }

    /// A list (or a single value as one element, never split on spaces) of a named section.
    pub fn get_list(&self, section: &str, option: &str) -> Vec<String> {
        self.section(section)
            .map(|s| s.get_list(option))
            .unwrap_or_default()
    }

    /// The section called `name`, created (at the end) when missing; its type is set to `kind`
    /// as `uci set package.name=kind` does.
    pub fn ensure_section(&mut self, kind: &str, name: &str) -> Result<&mut Section, UciError> {
        check_type(kind)?;
        check_name("section name", name)?;
        let i = match self
            .sections
            .iter()
            .position(|s| s.name.as_deref() == Some(name))
        {
            Some(i) => {
                self.sections[i].kind = kind.to_string();
                i
            }
            None => {
                self.sections.push(Section::new(kind, Some(name))?);
                self.sections.len() - 1
            }
        };
        Ok(&mut self.sections[i])
    }

    /// Appends a new anonymous section.
    pub fn add_section(&mut self, kind: &str) -> Result<&mut Section, UciError> {
        self.sections.push(Section::new(kind, None)?);
        let i = self.sections.len() - 1;
        Ok(&mut self.sections[i])
    }

    /// Removes the section called `name`; whether it was there.
    pub fn remove_section(&mut self, name: &str) -> bool {
        let before = self.sections.len();
        self.sections.retain(|s| s.name.as_deref() != Some(name));
        self.sections.len() != before
    }

    fn existing_mut(&mut self, section: &str) -> Result<&mut Section, UciError> {
        self.section_mut(section)
            .ok_or_else(|| UciError::NoSection(section.to_string()))
    }

    /// Sets a single value in an existing named section.
    pub fn set(&mut self, section: &str, option: &str, value: &str) -> Result<(), UciError> {
        self.existing_mut(section)?.set(option, value)
    }

    /// Sets a list in an existing named section (empty = delete the option).
    pub fn set_list(
        &mut self,
        section: &str,
        option: &str,
        values: Vec<String>,
    ) -> Result<(), UciError> {
        self.existing_mut(section)?.set_list(option, values)
    }

    /// Appends to a list in an existing named section.
    pub fn add_list(&mut self, section: &str, option: &str, value: &str) -> Result<(), UciError> {
        self.existing_mut(section)?.add_list(option, value)
    }

    /// Removes an option; whether it was there.
    pub fn delete_option(&mut self, section: &str, option: &str) -> bool {
        self.section_mut(section).is_some_and(|s| s.delete(option))
    }

    /// Checks every name and value, as [`Package::write_atomic`] does before writing.
    pub fn validate(&self) -> Result<(), UciError> {
        self.sections.iter().try_for_each(Section::validate)
    }

    /// The file as `uci commit` writes it.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.sections {
            out.push_str("\nconfig ");
            out.push_str(&render_type(&s.kind));
            if let Some(n) = &s.name {
                out.push(' ');
                out.push_str(&quote(n));
            }
            out.push('\n');
            for (name, value) in &s.options {
                match value {
                    Value::Single(v) => {
                        out.push_str(&format!("\toption {name} {}\n", quote(v)));
                    }
                    Value::List(l) => {
                        for v in l {
                            out.push_str(&format!("\tlist {name} {}\n", quote(v)));
                        }
                    }
                }
            }
        }
        out.push('\n');
        out
    }

    /// Writes the rendered package atomically: a temporary file in the same directory, fsync,
    /// rename, fsync of the directory. Keeps the mode of an existing file, else 0644. Refuses
    /// (before touching anything) a package with invalid names or values.
    pub fn write_atomic(&self, path: &Path) -> Result<(), UciError> {
        self.validate()?;
        write_file_atomic(path, self.render().as_bytes(), 0o644).map_err(|e| UciError::io(path, e))
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic file writes

/// Replaces `path` with `data` durably and atomically ([`fsx::write_atomic`]), keeping the
/// mode of an existing file (an admin's `chmod` survives a rewrite), else `default_mode`.
pub(crate) fn write_file_atomic(path: &Path, data: &[u8], default_mode: u32) -> io::Result<()> {
    // Like uci, never create a config directory: a missing one is a wrong root or path.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::metadata(dir)?;
    }
    let mode = fsx::mode_or(path, default_mode)?;
    fsx::write_atomic(path, data, mode, fsx::Durability::Durable)
}

// ---------------------------------------------------------------------------------------------
// UCI state files (`/var/state/<package>`, uci's delta format)

/// One line of a state file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StateLine {
    /// The command as written (re-emitted verbatim when the file is rewritten).
    raw: String,
    /// Delta prefix: `-` delete, `+` add, `|` list add, `~` list delete, `@` rename,
    /// `^` reorder; `None` for a plain set.
    op: Option<char>,
    /// `package.section` or `package.section.option`.
    key: String,
    /// After `=`, unquoted.
    value: Option<String>,
}

fn parse_state(text: &str, path: &Path) -> Result<Vec<StateLine>, UciError> {
    let mut lx = Lexer::new(text, path)?;
    let mut lines = Vec::new();
    while let Some(cmd) = lx.next_command()? {
        let raw = text[cmd.start..cmd.end].trim().to_string();
        if cmd.tokens.len() > 1 {
            tracing::warn!(
                "{}:{}: ignoring malformed state line {raw:?}",
                path.display(),
                cmd.tokens[0].line
            );
            lines.push(StateLine {
                raw,
                op: None,
                key: String::new(),
                value: None,
            });
            continue;
        }
        let mut text = cmd.tokens[0].text.as_str();
        let op = text
            .chars()
            .next()
            .filter(|c| matches!(c, '-' | '+' | '|' | '~' | '@' | '^'));
        if let Some(c) = op {
            text = &text[c.len_utf8()..];
        }
        let (key, value) = match text.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (text.to_string(), None),
        };
        lines.push(StateLine {
            raw,
            op,
            key,
            value,
        });
    }
    Ok(lines)
}

/// Where the state of `package` lives below `root`: `<root>/var/state/<package>`.
pub fn state_path(root: &Path, package: &str) -> PathBuf {
    root.join("var/state").join(package)
}

fn read_state(path: &Path) -> Result<Vec<StateLine>, UciError> {
    match crate::fsx::read_text(path) {
        Ok(text) => parse_state(&text, path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(UciError::io(path, e)),
    }
}

/// Reads `package.section.option` from `<root>/var/state/<package>`; later lines override
/// earlier ones, a `-` line deletes. A missing file is no value.
pub fn state_get(
    root: &Path,
    package: &str,
    section: &str,
    option: &str,
) -> Result<Option<String>, UciError> {
    check_package(package)?;
    check_name("section name", section)?;
    check_name("option name", option)?;
    let key = format!("{package}.{section}.{option}");
    let section_key = format!("{package}.{section}");
    let mut value = None;
    for line in read_state(&state_path(root, package))? {
        if line.key == key {
            value = match line.op {
                None | Some('+') | Some('|') => line.value,
                Some('-') => None,
                Some(_) => value,
            };
        } else if line.key == section_key && line.op == Some('-') {
            value = None;
        }
    }
    Ok(value)
}

/// Sets `package.section.option=value` in `<root>/var/state/<package>`: the new line replaces
/// any earlier line for the same key, and the file is rewritten atomically (directories are
/// created as needed). Writers in other processes using these functions are serialised with a
/// lock file; uci's own writers (which lock the state file itself) are not.
pub fn state_set(
    root: &Path,
    package: &str,
    section: &str,
    option: &str,
    value: &str,
) -> Result<(), UciError> {
    check_package(package)?;
    check_name("section name", section)?;
    check_name("option name", option)?;
    check_value(value)?;
    let key = format!("{package}.{section}.{option}");
    let line = format!("{key}={}", quote(value));
    update_state(root, package, &key, Some(line), None)
}

/// Declares a section in the state file (`package.section=kind`), as uci needs before it
/// accepts options of a section that is not in `/etc/config` (e.g. `keepalived.ha_alert`).
/// The line goes before any option line of that section.
pub fn state_set_section(
    root: &Path,
    package: &str,
    section: &str,
    kind: &str,
) -> Result<(), UciError> {
    check_package(package)?;
    check_name("section name", section)?;
    check_type(kind)?;
    let key = format!("{package}.{section}");
    let line = format!("{key}={kind}");
    let prefix = format!("{key}.");
    update_state(root, package, &key, Some(line), Some(&prefix))
}

/// Removes every line for `package.section.option`; whether there was one.
pub fn state_delete(
    root: &Path,
    package: &str,
    section: &str,
    option: &str,
) -> Result<(), UciError> {
    check_package(package)?;
    check_name("section name", section)?;
    check_name("option name", option)?;
    let key = format!("{package}.{section}.{option}");
    update_state(root, package, &key, None, None)
}

fn check_package(package: &str) -> Result<(), UciError> {
    if valid_package_name(package) {
        Ok(())
    } else {
        Err(UciError::Invalid {
            what: "package name",
            value: package.to_string(),
            why: "package names are made of A-Z a-z 0-9 _ -",
        })
    }
}

/// Rewrites the state file with every line for `key` removed and `new` (when given) in place
/// of the first of them; without one, `new` goes before the first line whose key starts with
/// `before_prefix` (when given), else at the end.
fn update_state(
    root: &Path,
    package: &str,
    key: &str,
    new: Option<String>,
    before_prefix: Option<&str>,
) -> Result<(), UciError> {
    let path = state_path(root, package);
    let dir = root.join("var/state");
    fs::create_dir_all(&dir).map_err(|e| UciError::io(&dir, e))?;
    let _lock = state_lock(&dir, package)?;
    let lines = read_state(&path)?;
    let mut out: Vec<String> = Vec::with_capacity(lines.len() + 1);
    let mut new = new;
    for line in &lines {
        if line.key == key {
            if let Some(n) = new.take() {
                out.push(n);
            }
            continue;
        }
        if let (Some(prefix), true) = (before_prefix, new.is_some()) {
            if line.key.starts_with(prefix) {
                if let Some(n) = new.take() {
                    out.push(n);
                }
            }
        }
        out.push(line.raw.clone());
    }
    if let Some(n) = new {
        out.push(n);
    }
    let mut text = out.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_file_atomic(&path, text.as_bytes(), 0o644).map_err(|e| UciError::io(&path, e))
}

/// The lock held while a state file is rewritten: `<dir>/.<package>.ha-sync.lock` (the state
/// file itself is replaced by rename, so it cannot carry the lock).
fn state_lock(dir: &Path, package: &str) -> Result<fsx::Lock, UciError> {
    let path = dir.join(format!(".{package}.ha-sync.lock"));
    fsx::Lock::acquire(&path).map_err(|e| UciError::io(&path, e))
}

// ---------------------------------------------------------------------------------------------
// Fuzzing

/// Fuzz entry point: parses arbitrary bytes (UTF-8, lossily) as a UCI file and as a state
/// file. Never panics unless an invariant breaks: whatever parses must render to text that
/// parses back to the same package.
pub fn fuzz_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(pkg) = Package::parse(&text, Path::new("fuzz")) {
        let rendered = pkg.render();
        match Package::parse(&rendered, Path::new("fuzz-rendered")) {
            Ok(again) => assert_eq!(again, pkg, "render/parse round trip"),
            Err(e) => panic!("rendered package does not parse: {e}\n{rendered}"),
        }
    }
    let _ = parse_state(&text, Path::new("fuzz-state"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs::Permissions;
    use std::os::unix::fs::PermissionsExt;

    fn p(text: &str) -> Package {
        Package::parse(text, Path::new("/etc/config/test")).expect("parses")
    }

    fn err(text: &str) -> (usize, String) {
        match Package::parse(text, Path::new("/etc/config/test")) {
            Err(UciError::Syntax { line, msg, .. }) => (line, msg),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    const NETWORK: &str = "
config interface 'loopback'
	option device 'lo'
	option proto 'static'
	option ipaddr '127.0.0.1'
	option netmask '255.0.0.0'

config globals 'globals'
	option ula_prefix 'fd12:3456:789a::/48'

config device
	option name 'br-lan'
	option type 'bridge'
	list ports 'lan1'
	list ports 'lan2'
	list ports 'lan3'

config interface 'lan'
	option device 'br-lan'
	option proto 'static'
	option ipaddr '192.168.1.1'
	option netmask '255.255.255.0'
	option ip6assign '60'

config interface 'wan'
	option device 'eth1'
	option proto 'dhcp'

config route 'ns_route1'
	option target '10.0.0.0/8'
	option gateway '192.168.1.254'
	option ns_tag 'ha'

";

    #[test]
    fn parses_network() {
        let pkg = p(NETWORK);
        assert_eq!(pkg.sections.len(), 6);
        assert_eq!(pkg.get("lan", "ipaddr"), Some("192.168.1.1"));
        assert_eq!(pkg.get("loopback", "device"), Some("lo"));
        let dev = pkg.sections_of_kind("device").next().expect("device");
        assert_eq!(dev.name, None);
        assert_eq!(dev.get("name"), Some("br-lan"));
        assert_eq!(dev.get_list("ports"), vec!["lan1", "lan2", "lan3"]);
        assert_eq!(dev.get("ports"), None);
        assert_eq!(pkg.sections_of_kind("interface").count(), 3);
        assert_eq!(
            pkg.section("ns_route1").map(|s| s.kind.as_str()),
            Some("route")
        );
        // uci's own output is a fixed point of parse -> render
        assert_eq!(pkg.render(), NETWORK);
    }

    #[test]
    fn parses_firewall_dhcp_system_handwritten() {
        let fw = p("# firewall, edited by hand\n\
            config defaults\n\
            \toption syn_flood\t1\n\
            \toption input ACCEPT # inline comment\n\
            config zone\n\
            \toption name lan\n\
            \tlist network 'lan'\n\
            \tlist network \"guest\"\n\
            config rule\n\
            \toption name 'Allow-DHCP-Renew'\n\
            \toption src wan\n\
            \toption proto udp\n\
            \toption dest_port 68\n\
            \toption target ACCEPT\n\
            \toption family ipv4\n\
            config rule 'ns_allow_ha'\n\
            \toption name 'Allow HA sync (port 65022)'\n\
            \tlist proto tcp\n\
            \tlist icmp_type 'echo-request'\n\
            \tlist icmp_type 'echo-reply'\n");
        let defaults = fw.sections_of_kind("defaults").next().expect("defaults");
        assert_eq!(defaults.get("syn_flood"), Some("1"));
        assert_eq!(defaults.get("input"), Some("ACCEPT"));
        let zone = fw.sections_of_kind("zone").next().expect("zone");
        assert_eq!(zone.get_list("network"), vec!["lan", "guest"]);
        assert_eq!(fw.sections_of_kind("rule").count(), 2);
        assert_eq!(
            fw.get("ns_allow_ha", "name"),
            Some("Allow HA sync (port 65022)")
        );
        assert_eq!(fw.get_list("ns_allow_ha", "proto"), vec!["tcp"]);

        let dhcp = p("\nconfig dnsmasq\n\toption domainneeded '1'\n\toption local '/lan/'\n\
            \tlist server '/example.org/10.0.0.1'\n\nconfig dhcp 'lan'\n\toption interface 'lan'\n\
            \toption start '100'\n\toption leasetime '12h'\n\tlist dhcp_option '6,192.168.1.1,8.8.8.8'\n\n\
            config host\n\toption name 'printer'\n\toption mac '00:11:22:33:44:55'\n\toption ip '192.168.1.9'\n");
        assert_eq!(dhcp.get("lan", "leasetime"), Some("12h"));
        assert_eq!(
            dhcp.get_list("lan", "dhcp_option"),
            vec!["6,192.168.1.1,8.8.8.8"]
        );
        assert_eq!(dhcp.sections.len(), 3);

        let system = p("config system\n\toption hostname 'fw-primary'\n\toption zonename 'Europe/Rome'\n\
            \toption timezone 'CET-1CEST,M3.5.0,M10.5.0/3'\n\nconfig timeserver 'ntp'\n\
            \tlist server '0.openwrt.pool.ntp.org'\n\tlist server '1.openwrt.pool.ntp.org'\n\toption enabled '1'\n");
        let sys = system.sections_of_kind("system").next().expect("system");
        assert_eq!(sys.get("hostname"), Some("fw-primary"));
        assert_eq!(sys.get("timezone"), Some("CET-1CEST,M3.5.0,M10.5.0/3"));
        assert_eq!(system.get_list("ntp", "server").len(), 2);
    }

    #[test]
    fn parses_keepalived_lists_with_spaces() {
        let pkg = p("config peer 'ha_peer'\n\
            \toption address '192.168.100.2'\n\
            \toption ssh_port '65022'\n\
            \toption ssh_key '/etc/keepalived/keys/id_rsa'\n\
            \toption sync_mode 'send'\n\
            \tlist sync_list '/etc/ha'\n\
            \tlist sync_list '/etc/my dir/with space.conf'\n\
            \tlist exclude_list '/etc/config/network'\n\
            \tlist exclude_list '/etc/ha/*.tmp'\n\
            \toption single 'a b c'\n\
            \nconfig primary 'primary'\n");
        assert_eq!(
            pkg.get_list("ha_peer", "sync_list"),
            vec!["/etc/ha", "/etc/my dir/with space.conf"]
        );
        // a single value is one element, never split on spaces (fault 8)
        assert_eq!(pkg.get_list("ha_peer", "single"), vec!["a b c"]);
        assert_eq!(pkg.get_list("ha_peer", "missing"), Vec::<String>::new());
        assert_eq!(pkg.get_list("nosuch", "sync_list"), Vec::<String>::new());
        assert!(pkg.section("primary").is_some());
        assert_eq!(pkg.get("ha_peer", "ssh_port"), Some("65022"));
    }

    #[test]
    fn escapes_and_concatenation() {
        let pkg = p(r#"config test 'x'
	option a 'it'\''s'
	option b "say \"hi\" \\ there"
	option c un\ quoted\'s
	option d 'mixed'"pieces"bare
	option e ''
	option f "a#b" # not part of it
	option g abc#comment
	option h 'single \ backslash'
	option i "dq \n is n"
	option j 'semi;colon'
"#);
        let s = pkg.section("x").expect("x");
        assert_eq!(s.get("a"), Some("it's"));
        assert_eq!(s.get("b"), Some("say \"hi\" \\ there"));
        assert_eq!(s.get("c"), Some("un quoted's"));
        assert_eq!(s.get("d"), Some("mixedpiecesbare"));
        assert_eq!(s.get("e"), Some(""));
        assert_eq!(s.get("f"), Some("a#b"));
        assert_eq!(s.get("g"), Some("abc"));
        assert_eq!(s.get("h"), Some("single \\ backslash"));
        assert_eq!(s.get("i"), Some("dq n is n"));
        assert_eq!(s.get("j"), Some("semi;colon"));
        let again = p(&pkg.render());
        assert_eq!(again, pkg);
    }

    #[test]
    fn multiline_values_continuations_and_semicolons() {
        let pkg = p(
            "config a 'x'\n\toption text 'line1\nline2'\n\toption joined abc\\\ndef\n\
             \toption after 'y'; option more 'z'\nconfig b; option q 1\r\n\toption crlf 'v'\r\n",
        );
        assert_eq!(pkg.get("x", "text"), Some("line1\nline2"));
        assert_eq!(pkg.get("x", "joined"), Some("abcdef"));
        assert_eq!(pkg.get("x", "after"), Some("y"));
        assert_eq!(pkg.get("x", "more"), Some("z"));
        let b = pkg.sections_of_kind("b").next().expect("b");
        assert_eq!(b.get("q"), Some("1"));
        assert_eq!(b.get("crlf"), Some("v"));
        assert_eq!(p(&pkg.render()), pkg);
        // line numbers after a multi-line value stay right
        let (line, _) = err("config a 'x'\n\toption t 'one\ntwo'\n\toption bad-name 1\n");
        assert_eq!(line, 4);
    }

    #[test]
    fn comments_blank_lines_and_package() {
        let pkg = p("# header\n\npackage network\n\n  # indented comment\n\
            config interface 'lan' # trailing\n\n\n\toption proto static\n#option proto dhcp\n");
        assert_eq!(pkg.sections.len(), 1);
        assert_eq!(pkg.get("lan", "proto"), Some("static"));
        assert_eq!(p(""), Package::default());
        assert_eq!(p("\n\n# only comments\n"), Package::default());
        assert_eq!(Package::default().render(), "\n");
    }

    #[test]
    fn anonymous_sections_and_merging() {
        let pkg = p(
            "config rule\n\toption name 'a'\nconfig rule\n\toption name 'b'\n\
            config zone 'lan'\n\toption x 1\nconfig zone2 'lan'\n\toption y 2\nconfig rule ''\n",
        );
        assert_eq!(pkg.sections.len(), 4);
        assert_eq!(pkg.sections_of_kind("rule").count(), 3);
        let lan = pkg.section("lan").expect("lan");
        assert_eq!(lan.kind, "zone2");
        assert_eq!(lan.get("x"), Some("1"));
        assert_eq!(lan.get("y"), Some("2"));
        // option replaces, list after option extends, option after list replaces
        let pkg = p(
            "config a 'x'\n\toption v 1\n\toption v 2\n\toption l a\n\tlist l b\n\
            \tlist m c\n\toption m d\n",
        );
        let x = pkg.section("x").expect("x");
        assert_eq!(x.get("v"), Some("2"));
        assert_eq!(x.get_list("l"), vec!["a", "b"]);
        assert_eq!(x.get("m"), Some("d"));
        assert_eq!(x.options.len(), 3);
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "config a 'x'\n\toption b 'open\n\n",
                2,
                "unterminated quote",
            ),
            (
                "config a 'x'\n\n\toption b \"open\n",
                3,
                "unterminated quote",
            ),
            ("# c\noption a 'b'\n", 2, "option before any config section"),
            ("\n\nlist a 'b'\n", 3, "list before any config section"),
            (
                "config a 'x'\n\toption bad.name 1\n",
                2,
                "invalid option name",
            ),
            ("config a 'x'\n\tlist 'a b' 1\n", 2, "invalid list name"),
            ("config a 'x-y'\n", 1, "invalid section name"),
            ("config 'a b' 'x'\n", 1, "invalid section type"),
            ("config \"t\u{e9}\" 'x'\n", 1, "invalid section type"),
            ("config a 'x'\n\n\n\tfoo bar\n", 4, "invalid command"),
            ("config\n", 1, "config without section type"),
            ("config a 'x'\n\toption\n", 2, "option without name"),
            ("config a 'x' extra\n", 1, "too many arguments"),
            ("config a 'x'\n\toption b c d\n", 2, "too many arguments"),
            ("config a 'x'\n\toption b 'c\0'\n", 2, "NUL byte"),
            ("package\n", 1, "package without name"),
            ("config a 'x'\n\toption b \"c\\\n", 2, "unterminated quote"),
        ];
        for (text, line, msg) in cases {
            let (l, m) = err(text);
            assert_eq!((l, m.contains(msg)), (*line, true), "{text:?}: {l} {m}");
        }
        let e = Package::parse(
            "config a 'x'\n\toption b 'open\n",
            Path::new("/etc/config/network"),
        )
        .expect_err("error");
        assert_eq!(
            e.to_string(),
            "/etc/config/network:2: unterminated quote (')"
        );
        // a section type may hold what libuci allows: '-', '.', ...
        assert_eq!(p("config my-type.v2 'x'\n").sections[0].kind, "my-type.v2");
    }

    #[test]
    fn editing_api() {
        let mut pkg = p(NETWORK);
        pkg.set("lan", "ipaddr", "10.0.0.1").expect("set");
        pkg.add_list("lan", "dns", "1.1.1.1").expect("add_list");
        pkg.add_list("lan", "dns", "9.9.9.9").expect("add_list");
        pkg.set_list("wan", "ports", vec!["a b".into(), "c".into()])
            .expect("set_list");
        assert!(pkg.delete_option("lan", "ip6assign"));
        assert!(!pkg.delete_option("lan", "ip6assign"));
        assert!(!pkg.delete_option("nosuch", "x"));
        let s = pkg.ensure_section("peer", "ha_peer").expect("ensure");
        s.set("address", "10.0.0.2").expect("set");
        s.add_list("sync_list", "/etc/it's here").expect("add");
        pkg.ensure_section("peer", "ha_peer").expect("again");
        assert_eq!(pkg.sections_of_kind("peer").count(), 1);
        pkg.add_section("rule")
            .expect("anon")
            .set("name", "x")
            .expect("set");
        assert!(pkg.remove_section("ns_route1"));
        assert!(!pkg.remove_section("ns_route1"));

        assert!(matches!(
            pkg.set("nosuch", "a", "b"),
            Err(UciError::NoSection(_))
        ));
        assert!(pkg.set("lan", "bad name", "b").is_err());
        assert!(pkg.set("lan", "ok", "nul\0").is_err());
        assert!(pkg.ensure_section("peer", "bad-name").is_err());
        assert!(pkg.ensure_section("bad type", "ok").is_err());
        pkg.set_list("lan", "dns", Vec::new())
            .expect("empty = delete");
        assert_eq!(pkg.get_list("lan", "dns"), Vec::<String>::new());

        let again = p(&pkg.render());
        assert_eq!(again, pkg);
        assert_eq!(again.get("lan", "ipaddr"), Some("10.0.0.1"));
        assert_eq!(again.get_list("wan", "ports"), vec!["a b", "c"]);
        assert_eq!(
            again.get_list("ha_peer", "sync_list"),
            vec!["/etc/it's here"]
        );
        assert!(pkg
            .render()
            .contains("\tlist sync_list '/etc/it'\\''s here'\n"));
    }

    #[test]
    fn write_atomic_load_and_modes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("network");
        assert_eq!(
            Package::load_or_empty(&path).expect("missing = empty"),
            Package::default()
        );
        let e = Package::load(&path).expect_err("missing");
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );

        let pkg = p(NETWORK);
        pkg.write_atomic(&path).expect("write");
        assert_eq!(fs::read_to_string(&path).expect("read"), NETWORK);
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o644);
        fs::set_permissions(&path, Permissions::from_mode(0o600)).expect("chmod");
        let mut changed = pkg.clone();
        changed.set("lan", "proto", "dhcp").expect("set");
        changed.write_atomic(&path).expect("rewrite");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(Package::load(&path).expect("load"), changed);
        // no temporary files left behind
        let names: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("network")]);

        // an invalid package is refused and nothing is written
        let mut bad = changed.clone();
        bad.sections[0].name = Some("no good".into());
        assert!(matches!(
            bad.write_atomic(&path),
            Err(UciError::Invalid { .. })
        ));
        assert_eq!(Package::load(&path).expect("load"), changed);

        let e = pkg
            .write_atomic(&dir.path().join("nosuchdir/network"))
            .expect_err("no dir");
        assert!(e.to_string().contains("nosuchdir/network"), "{e}");
    }

    #[test]
    fn state_files() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path();
        assert_eq!(
            state_get(r, "keepalived", "ha_peer", "last_sync_status").expect("get"),
            None
        );
        fs::create_dir_all(r.join("var/state")).expect("mkdir");
        fs::write(
            state_path(r, "keepalived"),
            "keepalived.ha_peer.last_sync_status='SSH Connection Failed'\n\
             keepalived.ha_alert=alert\n\
             keepalived.ha_alert.sync_failed_at='1700000000'\n\
             keepalived.ha_peer.last_sync_status='Successful'\n\
             keepalived.ha_peer.last_sync_time=1700000100\n\
             -keepalived.ha_alert.sync_failed_at\n",
        )
        .expect("write");
        assert_eq!(
            state_get(r, "keepalived", "ha_peer", "last_sync_status").expect("get"),
            Some("Successful".into())
        );
        assert_eq!(
            state_get(r, "keepalived", "ha_peer", "last_sync_time").expect("get"),
            Some("1700000100".into())
        );
        assert_eq!(
            state_get(r, "keepalived", "ha_alert", "sync_failed_at").expect("get"),
            None
        );

        state_set(
            r,
            "keepalived",
            "ha_peer",
            "last_sync_status",
            "Rsync Transfer Failed",
        )
        .expect("set");
        state_set(r, "keepalived", "ha_peer", "note", "it's 'quoted'").expect("set");
        assert_eq!(
            state_get(r, "keepalived", "ha_peer", "last_sync_status").expect("get"),
            Some("Rsync Transfer Failed".into())
        );
        assert_eq!(
            state_get(r, "keepalived", "ha_peer", "note").expect("get"),
            Some("it's 'quoted'".into())
        );
        let text = fs::read_to_string(state_path(r, "keepalived")).expect("read");
        assert_eq!(
            text,
            "keepalived.ha_peer.last_sync_status='Rsync Transfer Failed'\n\
             keepalived.ha_alert=alert\n\
             keepalived.ha_alert.sync_failed_at='1700000000'\n\
             keepalived.ha_peer.last_sync_time=1700000100\n\
             -keepalived.ha_alert.sync_failed_at\n\
             keepalived.ha_peer.note='it'\\''s '\\''quoted'\\'''\n"
        );

        // a fresh root: directories created, section line goes before its options
        let fresh = tempfile::tempdir().expect("tempdir");
        let f = fresh.path();
        state_set(f, "keepalived", "ha_alert", "primary_failed_at", "5").expect("set");
        state_set_section(f, "keepalived", "ha_alert", "alert").expect("section");
        state_set_section(f, "keepalived", "ha_alert", "alert").expect("section again");
        assert_eq!(
            fs::read_to_string(state_path(f, "keepalived")).expect("read"),
            "keepalived.ha_alert=alert\nkeepalived.ha_alert.primary_failed_at='5'\n"
        );
        state_delete(f, "keepalived", "ha_alert", "primary_failed_at").expect("delete");
        assert_eq!(
            state_get(f, "keepalived", "ha_alert", "primary_failed_at").expect("get"),
            None
        );
        assert!(state_set(f, "keepalived", "a.b", "c", "d").is_err());
        assert!(state_set(f, "../etc", "a", "c", "d").is_err());
        assert!(state_get(f, "keepalived", "a", "c=d").is_err());

        // a broken state file is an error naming it
        fs::write(state_path(f, "broken"), "a.b.c='open\n").expect("write");
        let e = state_get(f, "broken", "b", "c").expect_err("broken");
        assert!(e.to_string().contains("var/state/broken:1:"), "{e}");
    }

    #[test]
    fn state_set_concurrently_loses_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let r = root.path().to_path_buf();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..20 {
                        state_set(&r, "keepalived", "ha_peer", &format!("o{t}_{i}"), "v")
                            .expect("set");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
        for t in 0..4 {
            for i in 0..20 {
                assert_eq!(
                    state_get(&r, "keepalived", "ha_peer", &format!("o{t}_{i}")).expect("get"),
                    Some("v".into())
                );
            }
        }
    }

    #[test]
    fn fuzz_parse_survives_odd_inputs() {
        for input in [
            &b""[..],
            b"config",
            b"config a 'x'\n\toption b '",
            b"\\",
            b"config a\\",
            b"config a\n\toption b \"\\",
            b"\xff\xfe config \xc3",
            b"config 'a\nb' x",
            b"config a 'x';;;;option b c;list b d",
            b"config a\n\toption b '\r\n'\r\n",
            b"config \"'\" x\n\toption y z\n",
            b"config a 'x'\n\toption y '\0'\n",
            b"a.b.c='d'\n-a.b\n+a.b.c\n=\n",
        ] {
            fuzz_parse(input);
        }
    }

    #[test]
    fn replays_fuzz_regressions() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions/uci");
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                if let Ok(data) = fs::read(e.path()) {
                    fuzz_parse(&data);
                }
            }
        }
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_]{1,8}"
    }

    fn value() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('\''),
                Just('"'),
                Just('\\'),
                Just(' '),
                Just('\n'),
                Just('\t'),
                Just('\r'),
                Just('#'),
                Just(';'),
                Just('\u{e9}'),
                proptest::char::range('a', 'z'),
            ],
            0..12,
        )
        .prop_map(|v| v.into_iter().collect())
    }

    /// (type, name, [(option, values, as a list)])
    type SectionSpec = (String, Option<String>, Vec<(String, Vec<String>, bool)>);

    fn section() -> impl Strategy<Value = SectionSpec> {
        (
            "[A-Za-z0-9_.-]{1,8}",
            proptest::option::of(name()),
            proptest::collection::vec(
                (
                    name(),
                    proptest::collection::vec(value(), 1..3),
                    any::<bool>(),
                ),
                0..5,
            ),
        )
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(sections in proptest::collection::vec(section(), 0..5)) {
            let mut pkg = Package::default();
            for (kind, name, options) in sections {
                let s = match name {
                    Some(n) => pkg.ensure_section(&kind, &n).expect("named"),
                    None => pkg.add_section(&kind).expect("anonymous"),
                };
                for (opt, values, is_list) in options {
                    if is_list {
                        s.set_list(&opt, values).expect("set_list");
                    } else {
                        s.set(&opt, &values[0]).expect("set");
                    }
                }
            }
            let text = pkg.render();
            let again = Package::parse(&text, Path::new("prop")).expect("rendered text parses");
            prop_assert_eq!(&again, &pkg);
            prop_assert_eq!(again.render(), text);
        }

        #[test]
        fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            fuzz_parse(&data);
        }

        /// Text made of UCI-ish fragments parses often enough to exercise the round trip.
        #[test]
        fn fragments_round_trip(parts in proptest::collection::vec(
            proptest::sample::select(vec![
                "config ", "option ", "list ", "c ", "o ", "l ", "package ", " ", "\t", "\n",
                "\r\n", "'", "\"", "\\", "a", "b_1", "x-y", "#", ";", "\u{e9}", "'\\''", "''",
            ]),
            0..40,
        )) {
            let text: String = parts.concat();
            fuzz_parse(text.as_bytes());
        }
    }
}
