//! `--format` templates, as docker's: the part of Go's `text/template`
//! that docker's and podman's users write (`{{.State.Status}}`, `{{json
//! .Config}}`, `{{range $k, $v := .NetworkSettings.Networks}}...{{end}}`,
//! `{{index .Config.Labels "k"}}`), over a JSON document.
//!
//! Written here rather than taken from the one Rust crate of Go templates
//! (gtmpl): that ranges over a map in no fixed order and prints maps and
//! lists as Rust's debug output, and scripts written for docker need Go's
//! sorted keys and `map[k:v]`. The subset is:
//! - text, and actions `{{ ... }}` with `{{-`/`-}}` trimming the spaces
//!   beside them;
//! - `.`, `.A.B`, `$`, `$v.A`, `"strings"`, `` `raw` ``, numbers, `true`,
//!   `false`, `(pipelines)`, and pipelines `X | f`;
//! - `if`, `else`, `else if`, `with`, `range` (`range $v :=`, `range $k,
//!   $v :=`), `end`;
//! - the functions `json`, `index`, `len`, `join`, `split`, `upper`,
//!   `lower`, `title`, `eq`, `ne`, `not`, `and`, `or`, `print`, `println`.

use std::fmt::Write as _;

use serde_json::Value;

/// A parsed template.
#[derive(Debug)]
pub struct Template {
    nodes: Vec<Node>,
}

#[derive(Debug)]
enum Node {
    Text(String),
    Print(Pipeline),
    If(Pipeline, Vec<Node>, Vec<Node>),
    With(Pipeline, Vec<Node>, Vec<Node>),
    Range {
        vars: Vec<String>,
        over: Pipeline,
        body: Vec<Node>,
        otherwise: Vec<Node>,
    },
}

/// Commands joined by `|`: each after the first gets the value before it
/// as its last argument.
#[derive(Debug, Clone)]
struct Pipeline(Vec<Vec<Arg>>);

#[derive(Debug, Clone)]
enum Arg {
    /// `.` and fields after it.
    Dot(Vec<String>),
    /// `$name` (`$` alone: the whole document) and fields after it.
    Var(String, Vec<String>),
    Literal(Value),
    Func(String),
    Group(Pipeline, Vec<String>),
}

const FUNCS: [&str; 16] = [
    "json", "index", "len", "join", "split", "upper", "lower", "title", "eq", "ne", "not", "and",
    "or", "print", "println", "printf",
];

/// The fields of docker's objects that hold maps (their keys are data,
/// not field names): a key not in one is no mistake.
const MAP_FIELDS: [&str; 12] = [
    "Labels",
    "Ports",
    "Networks",
    "ExposedPorts",
    "Volumes",
    "PortBindings",
    "Sysctls",
    "Tmpfs",
    "Options",
    "DriverOpts",
    "Annotations",
    "Containers",
];

/// What a key missing from a map gives, as Go's default
/// (`missingkey=default`): printed `<no value>`, false, and no mistake.
const NO_VALUE: &str = "\0<no value>";

fn no_value() -> Value {
    let mut map = serde_json::Map::new();
    map.insert(NO_VALUE.into(), Value::Bool(true));
    Value::Object(map)
}

fn is_no_value(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.len() == 1 && m.contains_key(NO_VALUE))
}

/// Whether `map`, reached through field `field`, is a map rather than one
/// of docker's structs: a field known to hold one, or keys that are not
/// all field names (`80/tcp`, `org.label`, `app`), or none at all.
fn is_map(field: Option<&str>, map: &serde_json::Map<String, Value>) -> bool {
    let field_name = |k: &String| {
        k.starts_with(|c: char| c.is_ascii_uppercase())
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    field.is_some_and(|f| MAP_FIELDS.contains(&f)) || map.is_empty() || !map.keys().all(field_name)
}

/// One lexed piece: text between actions, or an action's words.
enum Piece {
    Text(String),
    Action(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// `.A.B` (empty for `.`).
    Dot(Vec<String>),
    Var(String, Vec<String>),
    Str(String),
    Number(serde_json::Number),
    Ident(String),
    Pipe,
    Open,
    Close,
    Comma,
    Declare,
}

impl Template {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let pieces = lex(text)?;
        check_depth(&pieces)?;
        let mut at = 0;
        let (nodes, stop) = parse_list(&pieces, &mut at)?;
        if let Some(stop) = stop {
            anyhow::bail!(
                "{{{{{stop}}}}} without the {{{{if}}}}, {{{{with}}}} or {{{{range}}}} it ends"
            );
        }
        Ok(Template { nodes })
    }

    /// The template applied to `doc`.
    pub fn render(&self, doc: &Value) -> anyhow::Result<String> {
        let mut out = String::new();
        let mut scope = Scope {
            root: doc,
            vars: Vec::new(),
        };
        exec(&self.nodes, doc, &mut scope, &mut out)?;
        Ok(out)
    }

    /// Whether the template names `.FIELD` at its top (ps asks the guest
    /// for its addresses only when they are shown).
    pub fn names_field(&self, field: &str) -> bool {
        fn in_pipe(p: &Pipeline, field: &str) -> bool {
            p.0.iter().flatten().any(|a| match a {
                Arg::Dot(f) | Arg::Var(_, f) => f.first().is_some_and(|f| f == field),
                Arg::Group(p, _) => in_pipe(p, field),
                _ => false,
            })
        }
        fn in_nodes(nodes: &[Node], field: &str) -> bool {
            nodes.iter().any(|n| match n {
                Node::Text(_) => false,
                Node::Print(p) => in_pipe(p, field),
                Node::If(p, a, b) | Node::With(p, a, b) => {
                    in_pipe(p, field) || in_nodes(a, field) || in_nodes(b, field)
                }
                Node::Range {
                    over,
                    body,
                    otherwise,
                    ..
                } => in_pipe(over, field) || in_nodes(body, field) || in_nodes(otherwise, field),
            })
        }
        in_nodes(&self.nodes, field)
    }
}

fn lex(text: &str) -> anyhow::Result<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    let mut trim_next = false;
    while let Some(open) = rest.find("{{") {
        let mut before = &rest[..open];
        let mut inner_start = open + 2;
        if rest[inner_start..].starts_with("- ") {
            before = before.trim_end();
            inner_start += 2;
        }
        if trim_next {
            before = before.trim_start();
        }
        pieces.push(Piece::Text(before.to_string()));
        let (tokens, used) = lex_action(&rest[inner_start..]).map_err(|e| {
            let action: String = rest[open..].chars().take(40).collect();
            anyhow::anyhow!("{e} in {action:?}")
        })?;
        let after = &rest[inner_start + used..];
        trim_next = after.starts_with(" -}}");
        let close = if trim_next { 4 } else { 2 };
        pieces.push(Piece::Action(tokens));
        rest = &after[close..];
    }
    pieces.push(Piece::Text(if trim_next {
        rest.trim_start().to_string()
    } else {
        rest.to_string()
    }));
    Ok(pieces)
}

/// Blocks and parentheses nest at most [`MAX_DEPTH`] deep, so that the
/// parser's recursion is bounded whatever the template.
const MAX_DEPTH: usize = 64;

fn check_depth(pieces: &[Piece]) -> anyhow::Result<()> {
    let mut blocks = 0usize;
    for piece in pieces {
        let Piece::Action(tokens) = piece else {
            continue;
        };
        match tokens.first() {
            Some(Token::Ident(k)) if ["if", "with", "range"].contains(&k.as_str()) => blocks += 1,
            Some(Token::Ident(k)) if k == "end" => blocks = blocks.saturating_sub(1),
            _ => {}
        }
        let mut parens = 0usize;
        for t in tokens {
            match t {
                Token::Open => parens += 1,
                Token::Close => parens = parens.saturating_sub(1),
                _ => {}
            }
            if blocks + parens > MAX_DEPTH {
                anyhow::bail!("blocks and parentheses nested more than {MAX_DEPTH} deep");
            }
        }
        if blocks > MAX_DEPTH {
            anyhow::bail!("blocks and parentheses nested more than {MAX_DEPTH} deep");
        }
    }
    Ok(())
}

/// An action's tokens up to its `}}` (or ` -}}`), and how many bytes they
/// took.
fn lex_action(text: &str) -> anyhow::Result<(Vec<Token>, usize)> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let word_end = |from: usize| {
        from + text[from..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(text.len() - from)
    };
    // `.A.B` from `i` (at a '.'), as field names.
    let fields = |mut i: usize| -> anyhow::Result<(Vec<String>, usize)> {
        let mut names = Vec::new();
        while bytes.get(i) == Some(&b'.') {
            let end = word_end(i + 1);
            if end == i + 1 {
                if names.is_empty() && !text[i + 1..].starts_with(|c: char| c.is_alphanumeric()) {
                    return Ok((names, i + 1));
                }
                anyhow::bail!("a '.' not followed by a field name");
            }
            names.push(text[i + 1..end].to_string());
            i = end;
        }
        Ok((names, i))
    };
    loop {
        while bytes.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            if text[i..].starts_with(" -}}") {
                return Ok((tokens, i));
            }
            i += 1;
        }
        let Some(&c) = bytes.get(i) else {
            anyhow::bail!("{{{{ without }}}}");
        };
        match c {
            b'}' if text[i..].starts_with("}}") => return Ok((tokens, i)),
            b'.' => {
                let (names, end) = fields(i)?;
                tokens.push(Token::Dot(names));
                i = end;
            }
            b'$' => {
                let end = word_end(i + 1);
                let (names, after) = fields(end)?;
                tokens.push(Token::Var(text[i..end].to_string(), names));
                i = after;
            }
            b'"' => {
                let mut value = String::new();
                let mut chars = text[i + 1..].char_indices();
                let end = loop {
                    match chars.next() {
                        None => anyhow::bail!("a string without its closing '\"'"),
                        Some((at, '"')) => break i + 1 + at + 1,
                        Some((_, '\\')) => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some(c @ ('\\' | '"')) => value.push(c),
                            _ => anyhow::bail!(
                                "a string with an escape other than \\n \\t \\\\ \\\""
                            ),
                        },
                        Some((_, c)) => value.push(c),
                    }
                };
                tokens.push(Token::Str(value));
                i = end;
            }
            b'`' => {
                let len = text[i + 1..]
                    .find('`')
                    .ok_or_else(|| anyhow::anyhow!("a raw string without its closing '`'"))?;
                tokens.push(Token::Str(text[i + 1..i + 1 + len].to_string()));
                i += len + 2;
            }
            b'|' => {
                tokens.push(Token::Pipe);
                i += 1;
            }
            b'(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            b')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            b',' => {
                tokens.push(Token::Comma);
                i += 1;
            }
            b':' if text[i..].starts_with(":=") => {
                tokens.push(Token::Declare);
                i += 2;
            }
            b'-' | b'0'..=b'9' => {
                let mut end = word_end(i + 1);
                // A fraction: `3.14` (and `1e-3`), where `.` takes no field.
                if bytes.get(end) == Some(&b'.')
                    && bytes.get(end + 1).is_some_and(u8::is_ascii_digit)
                {
                    end = word_end(end + 1);
                }
                if bytes.get(end) == Some(&b'-') && text[..end].ends_with(['e', 'E']) {
                    end = word_end(end + 1);
                }
                let word = &text[i..end];
                let number = match word.parse::<i64>() {
                    Ok(n) => Some(serde_json::Number::from(n)),
                    Err(_) => word
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64),
                }
                .ok_or_else(|| anyhow::anyhow!("{word:?} is not a number"))?;
                tokens.push(Token::Number(number));
                i = end;
            }
            c if c.is_ascii_alphabetic() => {
                let end = word_end(i);
                tokens.push(Token::Ident(text[i..end].to_string()));
                i = end;
            }
            _ => anyhow::bail!("unexpected {:?}", &text[i..].chars().next().unwrap_or(' ')),
        }
    }
}

/// Nodes up to an `{{end}}` or `{{else ...}}` (returned with the tokens
/// after `else`), or the end of the template.
fn parse_list(pieces: &[Piece], at: &mut usize) -> anyhow::Result<(Vec<Node>, Option<String>)> {
    let mut nodes = Vec::new();
    while let Some(piece) = pieces.get(*at) {
        *at += 1;
        let tokens = match piece {
            Piece::Text(t) => {
                if !t.is_empty() {
                    nodes.push(Node::Text(t.clone()));
                }
                continue;
            }
            Piece::Action(tokens) => tokens,
        };
        match tokens.first() {
            Some(Token::Ident(k)) if k == "end" && tokens.len() == 1 => {
                return Ok((nodes, Some("end".into())))
            }
            Some(Token::Ident(k)) if k == "else" => {
                // `else` alone, or `else if ...` (kept for the caller).
                *at -= 1;
                return Ok((nodes, Some("else".into())));
            }
            Some(Token::Ident(k)) if k == "if" || k == "with" => {
                let cond = parse_pipeline(&tokens[1..])?;
                let (then, otherwise) = parse_branches(pieces, at, k)?;
                nodes.push(if k == "if" {
                    Node::If(cond, then, otherwise)
                } else {
                    Node::With(cond, then, otherwise)
                });
            }
            Some(Token::Ident(k)) if k == "range" => {
                let rest = &tokens[1..];
                let (vars, over) = match rest.iter().position(|t| *t == Token::Declare) {
                    Some(at) => {
                        let vars: Vec<String> = rest[..at]
                            .iter()
                            .filter(|t| **t != Token::Comma)
                            .map(|t| match t {
                                Token::Var(v, f) if f.is_empty() && v.len() > 1 => Ok(v.clone()),
                                _ => Err(anyhow::anyhow!(
                                    "{{{{range}}}} declares $variables: range $v := or range $k, $v :="
                                )),
                            })
                            .collect::<anyhow::Result<_>>()?;
                        if vars.is_empty() || vars.len() > 2 {
                            anyhow::bail!("{{{{range}}}} declares one or two $variables");
                        }
                        (vars, &rest[at + 1..])
                    }
                    None => (Vec::new(), rest),
                };
                let over = parse_pipeline(over)?;
                let (body, otherwise) = parse_branches(pieces, at, "range")?;
                nodes.push(Node::Range {
                    vars,
                    over,
                    body,
                    otherwise,
                });
            }
            Some(Token::Ident(k)) if k == "end" => anyhow::bail!("{{{{end}}}} takes nothing"),
            _ => nodes.push(Node::Print(parse_pipeline(tokens)?)),
        }
    }
    Ok((nodes, None))
}

/// The body of an `if`, `with` or `range` just opened, and its `else`
/// part (an `else if` as an `if` inside it).
fn parse_branches(
    pieces: &[Piece],
    at: &mut usize,
    what: &str,
) -> anyhow::Result<(Vec<Node>, Vec<Node>)> {
    let (then, stop) = parse_list(pieces, at)?;
    match stop.as_deref() {
        Some("end") => Ok((then, Vec::new())),
        Some(_) => {
            let Some(Piece::Action(tokens)) = pieces.get(*at) else {
                unreachable!("parse_list stops before an else action");
            };
            *at += 1;
            if tokens.len() == 1 {
                let (otherwise, stop) = parse_list(pieces, at)?;
                if stop.as_deref() != Some("end") {
                    anyhow::bail!("{{{{{what}}}}}'s {{{{else}}}} without its {{{{end}}}}");
                }
                return Ok((then, otherwise));
            }
            if tokens.get(1) != Some(&Token::Ident("if".into())) {
                anyhow::bail!("{{{{else}}}} takes nothing, or if and a condition");
            }
            // `else if C`: an `if` whose `end` is the outer one's.
            let cond = parse_pipeline(&tokens[2..])?;
            let (inner, otherwise) = parse_branches(pieces, at, "if")?;
            Ok((then, vec![Node::If(cond, inner, otherwise)]))
        }
        None => anyhow::bail!("{{{{{what}}}}} without its {{{{end}}}}"),
    }
}

fn parse_pipeline(tokens: &[Token]) -> anyhow::Result<Pipeline> {
    let mut commands = Vec::new();
    let mut command = Vec::new();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        i += 1;
        let arg = match token {
            Token::Pipe => {
                if command.is_empty() {
                    anyhow::bail!("a '|' with nothing before it");
                }
                commands.push(std::mem::take(&mut command));
                continue;
            }
            Token::Dot(f) => Arg::Dot(f.clone()),
            Token::Var(v, f) => Arg::Var(v.clone(), f.clone()),
            Token::Str(s) => Arg::Literal(Value::String(s.clone())),
            Token::Number(n) => Arg::Literal(Value::Number(n.clone())),
            Token::Ident(w) if w == "true" || w == "false" => {
                Arg::Literal(Value::Bool(w == "true"))
            }
            Token::Ident(w) if FUNCS.contains(&w.as_str()) => Arg::Func(w.clone()),
            Token::Ident(w) => {
                anyhow::bail!("{w:?} is not a function; these are: {}", FUNCS.join(" "))
            }
            Token::Open => {
                let mut depth = 1;
                let start = i;
                while depth > 0 {
                    match tokens.get(i) {
                        Some(Token::Open) => depth += 1,
                        Some(Token::Close) => depth -= 1,
                        Some(_) => {}
                        None => anyhow::bail!("a '(' without its ')'"),
                    }
                    i += 1;
                }
                let inner = parse_pipeline(&tokens[start..i - 1])?;
                // `(X).Field`: fields after the group.
                let mut fields = Vec::new();
                if let Some(Token::Dot(f)) = tokens.get(i) {
                    fields = f.clone();
                    i += 1;
                }
                Arg::Group(inner, fields)
            }
            Token::Close => anyhow::bail!("a ')' without its '('"),
            Token::Comma | Token::Declare => {
                anyhow::bail!("',' and ':=' belong to range's $variables only")
            }
        };
        command.push(arg);
    }
    if command.is_empty() {
        anyhow::bail!(if commands.is_empty() {
            "an empty {{}}"
        } else {
            "a '|' with nothing after it"
        });
    }
    commands.push(command);
    for later in &commands[1..] {
        if !matches!(later[0], Arg::Func(_)) {
            anyhow::bail!("what follows a '|' must be a function");
        }
    }
    Ok(Pipeline(commands))
}

struct Scope<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
}

fn exec(nodes: &[Node], dot: &Value, scope: &mut Scope, out: &mut String) -> anyhow::Result<()> {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Print(p) => print(&eval(p, dot, scope)?, out),
            Node::If(cond, then, otherwise) => {
                let branch = if truth(&eval(cond, dot, scope)?) {
                    then
                } else {
                    otherwise
                };
                exec(branch, dot, scope, out)?;
            }
            Node::With(value, then, otherwise) => {
                let value = eval(value, dot, scope)?;
                if truth(&value) {
                    exec(then, &value, scope, out)?;
                } else {
                    exec(otherwise, dot, scope, out)?;
                }
            }
            Node::Range {
                vars,
                over,
                body,
                otherwise,
            } => {
                let over = eval(over, dot, scope)?;
                // Go ranges over a map's keys in order; serde_json's map
                // keeps them sorted.
                let items: Vec<(Value, &Value)> = match &over {
                    Value::Array(items) => items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| (Value::from(i), v))
                        .collect(),
                    Value::Object(map) if !is_no_value(&over) => map
                        .iter()
                        .map(|(k, v)| (Value::from(k.clone()), v))
                        .collect(),
                    Value::Null => Vec::new(),
                    // A key missing from a map ranges over nothing, as in Go.
                    no if is_no_value(no) => Vec::new(),
                    other => {
                        anyhow::bail!("range over {}, which is not a list or a map", kind(other))
                    }
                };
                if items.is_empty() {
                    exec(otherwise, dot, scope, out)?;
                }
                for (key, value) in items {
                    let depth = scope.vars.len();
                    match vars.as_slice() {
                        [v] => scope.vars.push((v.clone(), value.clone())),
                        [k, v] => {
                            scope.vars.push((k.clone(), key));
                            scope.vars.push((v.clone(), value.clone()));
                        }
                        _ => {}
                    }
                    let done = exec(body, value, scope, out);
                    scope.vars.truncate(depth);
                    done?;
                }
            }
        }
    }
    Ok(())
}

fn eval(pipeline: &Pipeline, dot: &Value, scope: &Scope) -> anyhow::Result<Value> {
    let mut value: Option<Value> = None;
    for command in &pipeline.0 {
        let mut args = Vec::new();
        for arg in &command[1..] {
            args.push(operand(arg, dot, scope)?);
        }
        args.extend(value.take());
        value = Some(match &command[0] {
            Arg::Func(name) => call(name, &args)?,
            first => {
                if !args.is_empty() {
                    anyhow::bail!(
                        "{} is not a function: it takes no arguments",
                        describe(first)
                    );
                }
                operand(first, dot, scope)?
            }
        });
    }
    Ok(value.unwrap_or(Value::Null))
}

fn operand(arg: &Arg, dot: &Value, scope: &Scope) -> anyhow::Result<Value> {
    match arg {
        Arg::Dot(fields) => walk(dot, fields, "."),
        Arg::Var(name, fields) => {
            let value = if name == "$" {
                scope.root
            } else {
                scope
                    .vars
                    .iter()
                    .rev()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v)
                    .ok_or_else(|| anyhow::anyhow!("{name} is not declared"))?
            };
            walk(value, fields, name)
        }
        Arg::Literal(v) => Ok(v.clone()),
        Arg::Func(name) => call(name, &[]),
        Arg::Group(p, fields) => walk(&eval(p, dot, scope)?, fields, "(...)"),
    }
}

/// `.A.B` from `value`; a missing field is an error naming those there,
/// a key missing from a map gives [`no_value`].
fn walk(value: &Value, fields: &[String], start: &str) -> anyhow::Result<Value> {
    let mut value = value;
    let mut path = start.trim_end_matches('.').to_string();
    let mut previous: Option<&str> = None;
    for field in fields {
        value = match value {
            Value::Object(map) if !map.contains_key(field) && is_map(previous, map) => {
                return Ok(no_value())
            }
            Value::Object(map) => map.get(field).ok_or_else(|| {
                let known: Vec<&str> = map.keys().map(String::as_str).collect();
                anyhow::anyhow!(
                    "{path}.{field}: no such field; {} has {}",
                    if path.is_empty() { "." } else { &path },
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )
            })?,
            Value::Null => anyhow::bail!("{path}.{field}: {path} is nil"),
            other => anyhow::bail!("{path}.{field}: {path} is {}, with no fields", kind(other)),
        };
        let _ = write!(path, ".{field}");
        previous = Some(field);
    }
    Ok(value.clone())
}

fn call(name: &str, args: &[Value]) -> anyhow::Result<Value> {
    let want = |n: usize| -> anyhow::Result<()> {
        if args.len() != n {
            anyhow::bail!(
                "{name} takes {n} argument{}, not {}",
                if n == 1 { "" } else { "s" },
                args.len()
            );
        }
        Ok(())
    };
    Ok(match name {
        "json" => {
            want(1)?;
            if is_no_value(&args[0]) {
                Value::String("null".into())
            } else {
                Value::String(serde_json::to_string(&args[0])?)
            }
        }
        "index" => {
            let Some((first, keys)) = args.split_first() else {
                anyhow::bail!("index takes a map or list and keys");
            };
            let mut value = first.clone();
            for key in keys {
                value = match (&value, key) {
                    // A key not there is the empty value, as Go's
                    // index of a map of strings gives.
                    (Value::Object(map), Value::String(k)) => {
                        map.get(k).cloned().unwrap_or(Value::String(String::new()))
                    }
                    (Value::Array(items), Value::Number(n)) => {
                        let i = n.as_u64().unwrap_or(u64::MAX);
                        items.get(i as usize).cloned().ok_or_else(|| {
                            anyhow::anyhow!("index {n} out of range: the list has {}", items.len())
                        })?
                    }
                    (Value::Null, _) => Value::String(String::new()),
                    (v, k) => anyhow::bail!("cannot index {} with {}", kind(v), kind(k)),
                };
            }
            value
        }
        "len" => {
            want(1)?;
            if is_no_value(&args[0]) {
                anyhow::bail!("len of <no value>");
            }
            Value::from(match &args[0] {
                Value::Array(a) => a.len(),
                Value::Object(m) => m.len(),
                Value::String(s) => s.len(),
                Value::Null => 0,
                other => anyhow::bail!("len of {}", kind(other)),
            })
        }
        "join" => {
            want(2)?;
            let Value::Array(items) = &args[0] else {
                anyhow::bail!("join takes a list and a separator");
            };
            let items: Vec<String> = items.iter().map(text).collect();
            Value::String(items.join(&text(&args[1])))
        }
        "split" => {
            want(2)?;
            let separator = text(&args[1]);
            Value::Array(
                text(&args[0])
                    .split(separator.as_str())
                    .map(|s| Value::String(s.into()))
                    .collect(),
            )
        }
        "upper" | "lower" | "title" => {
            want(1)?;
            let s = text(&args[0]);
            Value::String(match name {
                "upper" => s.to_uppercase(),
                "lower" => s.to_lowercase(),
                // Each word's first letter, as Go's strings.Title.
                _ => {
                    let mut out = String::new();
                    let mut first = true;
                    for c in s.chars() {
                        if first {
                            out.extend(c.to_uppercase());
                        } else {
                            out.push(c);
                        }
                        first = c.is_whitespace();
                    }
                    out
                }
            })
        }
        "eq" => {
            if args.len() < 2 {
                anyhow::bail!("eq takes two or more arguments");
            }
            Value::Bool(args[1..].iter().any(|a| *a == args[0]))
        }
        "ne" => {
            want(2)?;
            Value::Bool(args[0] != args[1])
        }
        "not" => {
            want(1)?;
            Value::Bool(!truth(&args[0]))
        }
        // Go's: the first argument that decides, else the last.
        "and" | "or" => {
            if args.is_empty() {
                anyhow::bail!("{name} takes one or more arguments");
            }
            let decides = |v: &&Value| truth(v) == (name == "or");
            args.iter()
                .find(decides)
                .unwrap_or(&args[args.len() - 1])
                .clone()
        }
        "print" | "println" => {
            let mut s = String::new();
            for (i, a) in args.iter().enumerate() {
                // Go's Sprint puts a space only between two non-strings;
                // Sprintln between every two.
                let spaced =
                    name == "println" || (!a.is_string() && i > 0 && !args[i - 1].is_string());
                if i > 0 && spaced {
                    s.push(' ');
                }
                print(a, &mut s);
            }
            if name == "println" {
                s.push('\n');
            }
            Value::String(s)
        }
        "printf" => {
            let Some((Value::String(format), rest)) = args.split_first() else {
                anyhow::bail!("printf takes a format string first");
            };
            Value::String(printf(format, rest))
        }
        _ => unreachable!("the parser takes only FUNCS"),
    })
}

/// Go's `fmt.Sprintf` for the verbs templates use: `%v %s %d %q %t %x
/// %X %f %e %g %%`, with the `-`, `0` and `+` flags, a width and a
/// precision. A verb that does not fit its value, or one with no value
/// left, is written as Go writes it (`%!d(string=web)`, `%!s(MISSING)`).
fn printf(format: &str, args: &[Value]) -> String {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&f) = chars.peek() {
            match f {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let number = |chars: &mut std::iter::Peekable<std::str::Chars>| {
            let mut n: Option<usize> = None;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                n = Some(
                    n.unwrap_or(0)
                        .saturating_mul(10)
                        .saturating_add(d as usize)
                        .min(1024),
                );
                chars.next();
            }
            n
        };
        let width = number(&mut chars);
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(number(&mut chars).unwrap_or(0))
        } else {
            None
        };
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        let float = arg.as_f64();
        let formatted = match (verb, arg) {
            ('v', _) => Some(text(arg)),
            ('s', Value::String(s)) => Some(match precision {
                Some(p) => s.chars().take(p).collect(),
                None => s.clone(),
            }),
            ('s', _) if !arg.is_number() && !arg.is_boolean() => Some(text(arg)),
            ('q', Value::String(s)) => Some(serde_json::to_string(s).expect("a string serializes")),
            ('t', Value::Bool(b)) => Some(b.to_string()),
            ('d', Value::Number(n)) if n.is_i64() || n.is_u64() => Some(match (plus, n.as_i64()) {
                (true, Some(i)) if i >= 0 => format!("+{n}"),
                _ => n.to_string(),
            }),
            ('x', Value::Number(n)) if n.is_u64() => n.as_u64().map(|u| format!("{u:x}")),
            ('X', Value::Number(n)) if n.is_u64() => n.as_u64().map(|u| format!("{u:X}")),
            ('x', Value::String(s)) => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
            ('f' | 'e' | 'g', Value::Number(_)) => float.map(|f| {
                let p = precision.unwrap_or(6);
                let body = match verb {
                    'f' => format!("{f:.p$}"),
                    'e' => format!("{f:.p$e}"),
                    _ => text(arg),
                };
                if plus && f >= 0.0 {
                    format!("+{body}")
                } else {
                    body
                }
            }),
            _ => None,
        };
        let Some(body) = formatted else {
            let _ = write!(out, "%!{verb}({})", typed(arg));
            continue;
        };
        let pad = width.unwrap_or(0).saturating_sub(body.chars().count());
        let numeric = matches!(verb, 'd' | 'x' | 'X' | 'f' | 'e' | 'g');
        if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            let (sign, digits) = match body.strip_prefix(['-', '+']) {
                Some(rest) => (&body[..1], rest),
                None => ("", body.as_str()),
            };
            out.push_str(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    // Go names arguments no verb took.
    let extra: Vec<String> = args.map(typed).collect();
    if !extra.is_empty() {
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    out
}

/// A value with its Go type, as fmt names a value a verb did not fit:
/// `string=web`.
fn typed(v: &Value) -> String {
    let what = match v {
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int",
        Value::Null => return "<nil>".into(),
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    };
    format!("{what}={}", text(v))
}

/// Go's truth: false, 0, nil and empty strings, lists and maps are false.
fn truth(v: &Value) -> bool {
    if is_no_value(v) {
        return false;
    }
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A value as Go's `%v` prints it: `<nil>`, `[a b]`, `map[k:v]`.
fn print(v: &Value, out: &mut String) {
    if is_no_value(v) {
        out.push_str("<no value>");
        return;
    }
    match v {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => out.push_str(s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                print(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push_str("map[");
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                print(item, out);
            }
            out.push(']');
        }
    }
}

fn text(v: &Value) -> String {
    let mut s = String::new();
    print(v, &mut s);
    s
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

fn describe(arg: &Arg) -> String {
    match arg {
        Arg::Dot(f) => format!(".{}", f.join(".")),
        Arg::Var(v, f) if f.is_empty() => v.clone(),
        Arg::Var(v, f) => format!("{v}.{}", f.join(".")),
        Arg::Literal(v) => v.to_string(),
        Arg::Func(f) => f.clone(),
        Arg::Group(..) => "(...)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::json!({
            "Name": "web",
            "State": {"Status": "running", "Running": true, "ExitCode": 0, "Health": null},
            "Config": {"Labels": {"tier": "front", "app": "shop"}, "Env": ["A=1", "B=2"]},
            "NetworkSettings": {"Networks": {
                "backend": {"IPAddress": "10.89.0.2"},
                "alpha": {"IPAddress": "10.89.1.2"}
            }},
            "Mounts": [],
        })
    }

    fn render(template: &str) -> String {
        Template::parse(template)
            .unwrap_or_else(|e| panic!("{template}: {e}"))
            .render(&doc())
            .unwrap_or_else(|e| panic!("{template}: {e}"))
    }

    fn fails(template: &str) -> String {
        match Template::parse(template).and_then(|t| t.render(&doc())) {
            Ok(out) => panic!("{template} gave {out:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn fields_and_values_print_as_go_prints_them() {
        assert_eq!(render("{{.Name}}"), "web");
        assert_eq!(
            render("{{.State.Status}} {{.State.Running}} {{.State.ExitCode}} {{.State.Health}}"),
            "running true 0 <nil>"
        );
        assert_eq!(render("{{.Config.Labels}}"), "map[app:shop tier:front]");
        assert_eq!(render("{{.Config.Env}} {{.Mounts}}"), "[A=1 B=2] []");
        assert_eq!(render("a\\t{{ .Name }}\n"), "a\\tweb\n");
        assert_eq!(render("{{$.Name}}"), "web");
    }

    #[test]
    fn functions_and_pipelines() {
        assert_eq!(
            render("{{json .Config.Labels}}"),
            r#"{"app":"shop","tier":"front"}"#
        );
        assert_eq!(render("{{index .Config.Labels \"tier\"}}"), "front");
        assert_eq!(render("{{index .Config.Labels \"none\"}}"), "");
        assert_eq!(render("{{index .Config.Env 1}}"), "B=2");
        assert_eq!(render("{{len .Config.Env}} {{len .Mounts}}"), "2 0");
        assert_eq!(render("{{join .Config.Env \",\"}}"), "A=1,B=2");
        assert_eq!(
            render("{{.Name | upper}} {{upper .Name | lower}}"),
            "WEB web"
        );
        assert_eq!(render("{{title .Name}} {{title \"a bc\"}}"), "Web A Bc");
        assert_eq!(render("{{json (index .Config.Labels `app`)}}"), "\"shop\"");
        assert_eq!(
            render("{{(index .NetworkSettings.Networks \"alpha\").IPAddress}}"),
            "10.89.1.2"
        );
        assert_eq!(render("{{index (split \"a:b\" \":\") 1}}"), "b");
        assert_eq!(
            render("{{print .Name 1 2 \"x\"}}|{{println .Name 1}}"),
            "web1 2x|web 1\n"
        );
        assert_eq!(
            render("{{eq .State.Status \"exited\" \"running\"}} {{ne .Name \"web\"}}"),
            "true false"
        );
        assert_eq!(
            render("{{or .State.Health \"none\"}} {{and .Name .State.Running}}"),
            "none true"
        );
        assert_eq!(render("{{not .Mounts}}"), "true");
        assert_eq!(
            render("{{printf \"%s is %v\" .Name .State.Running}}"),
            "web is true"
        );
        assert_eq!(
            render(
                "{{printf \"%-6s|%5d|%05d|%+.2f|%q|%x|%.1s|%t|%%\" \
                 .Name .State.ExitCode 42 3.14159 .Name 255 .Name .State.Running}}"
            ),
            "web   |    0|00042|+3.14|\"web\"|ff|w|true|%"
        );
        assert_eq!(render("{{.Name | printf \"<%8s>\"}}"), "<     web>");
        // What does not fit is written as Go writes it.
        assert_eq!(render("{{printf \"%d\" .Name}}"), "%!d(string=web)");
        assert_eq!(render("{{printf \"%s %s\" .Name}}"), "web %!s(MISSING)");
        assert_eq!(render("{{printf \"%s\" .Name 1}}"), "web%!(EXTRA int=1)");
    }

    #[test]
    fn a_key_missing_from_a_map_is_no_value_as_in_go() {
        assert_eq!(render("{{.Config.Labels.version}}"), "<no value>");
        assert_eq!(render("{{.NetworkSettings.Networks.nope}}"), "<no value>");
        assert_eq!(
            render("{{if .Config.Labels.version}}y{{else}}n{{end}}"),
            "n"
        );
        assert_eq!(
            render("{{range .Config.Labels.version}}x{{else}}none{{end}}"),
            "none"
        );
        assert_eq!(render("{{json .Config.Labels.version}}"), "null");
        assert_eq!(
            render("{{with .NetworkSettings.Networks}}{{.nope}}{{end}}"),
            "<no value>",
            "keys that are no field names: a map"
        );
        // docker's structs still name their fields.
        assert!(fails("{{.Config.Lables}}").contains("no such field; .Config has Env, Labels"));
    }

    #[test]
    fn control_structures() {
        assert_eq!(
            render("{{range $k, $v := .NetworkSettings.Networks}}{{$k}}={{$v.IPAddress}};{{end}}"),
            "alpha=10.89.1.2;backend=10.89.0.2;",
            "sorted by key, as Go ranges over a map"
        );
        assert_eq!(
            render("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"),
            "10.89.1.2 10.89.0.2 "
        );
        assert_eq!(
            render("{{range $i, $e := .Config.Env}}{{$i}}:{{$e}} {{end}}"),
            "0:A=1 1:B=2 "
        );
        assert_eq!(
            render("{{range .Mounts}}x{{else}}no mounts{{end}}"),
            "no mounts"
        );
        assert_eq!(render("{{if .State.Running}}up{{else}}down{{end}}"), "up");
        assert_eq!(
            render(
                "{{if eq .State.Status \"exited\"}}E{{else if .State.Running}}R{{else}}?{{end}}"
            ),
            "R"
        );
        assert_eq!(
            render("{{with .State.Health}}{{.Status}}{{else}}no check{{end}}"),
            "no check"
        );
        assert_eq!(
            render("{{with .State}}{{.Status}}{{$.Name}}{{end}}"),
            "runningweb"
        );
        assert_eq!(render("a  {{- .Name -}}  \n b"), "awebb");
        assert_eq!(
            render("{{range $k, $v := .Config.Labels}}{{range $.Config.Env}}{{$k}}{{.}} {{end}}{{end}}"),
            "appA=1 appB=2 tierA=1 tierB=2 "
        );
    }

    /// Any text of template pieces is parsed and rendered, or refused:
    /// never a panic (a cheap stand-in for a fuzz target, which would pull
    /// the whole command line into the fuzz build).
    #[test]
    fn any_text_renders_or_is_refused() {
        const BITS: [&str; 24] = [
            "{{",
            "}}",
            "{{- ",
            " -}}",
            ".",
            ".Name",
            ".State",
            ".Config.Labels",
            "$",
            "$k",
            "(",
            ")",
            "|",
            " ",
            "\"",
            "`",
            "if ",
            "range ",
            "else",
            "end",
            "json ",
            "index ",
            ":=",
            "é",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let doc = doc();
        let (mut parsed, mut rendered) = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..next() % 24 {
                text.push_str(BITS[(next() % BITS.len() as u64) as usize]);
            }
            if let Ok(t) = Template::parse(&text) {
                parsed += 1;
                rendered += usize::from(t.render(&doc).is_ok());
            }
        }
        // The texts reach the renderer, not only the parser's refusals.
        assert!(
            parsed > 1_000 && rendered > 500,
            "{parsed} parsed, {rendered} rendered"
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert!(fails("{{.State.Nope}}")
            .contains(".State.Nope: no such field; .State has ExitCode, Health"));
        assert!(fails("{{.State.Health.Status}}").contains(".State.Health is nil"));
        assert!(fails("{{.Name.First}}").contains("a string, with no fields"));
        assert!(fails("{{.Name").contains("{{ without }}"));
        assert!(fails("{{if .Name}}x").contains("{{if}} without its {{end}}"));
        assert!(fails("x{{end}}").contains("{{end}} without the"));
        assert!(fails("{{nope .Name}}").contains("\"nope\" is not a function; these are: json"));
        assert!(fails("{{json}}").contains("json takes 1 argument, not 0"));
        assert!(fails("{{.Name | .State}}").contains("must be a function"));
        assert!(fails("{{.Name .State}}").contains("takes no arguments"));
        assert!(fails("{{$x}}").contains("$x is not declared"));
        assert!(fails("{{\"a}}").contains("closing '\"'"));
        assert!(fails("{{}}").contains("an empty {{}}"));
        assert!(fails("{{range .Name}}{{end}}").contains("not a list or a map"));
        assert!(fails("{{index .Config.Env 5}}").contains("out of range"));
        let deep = format!("{}.Name{}", "{{if .Name}}".repeat(65), "{{end}}".repeat(65));
        assert!(fails(&deep).contains("nested more than 64 deep"));
        let deep = format!("{{{{{}.Name{}}}}}", "(".repeat(65), ")".repeat(65));
        assert!(fails(&deep).contains("nested more than 64 deep"));
        assert_eq!(
            render(&format!(
                "{{{{{}.Name{}}}}}",
                "(".repeat(64),
                ")".repeat(64)
            )),
            "web"
        );
    }
}
