//! Argument templates: `{{ expr }}` inside the strings of a step's
//! arguments, resource URI and expectations.
//!
//! A template is compiled when the scenario loads, so a typo is an error
//! before the first call, and rendered once per call. A string that is
//! exactly one `{{expr}}` keeps the value's JSON type (a number stays a
//! number, a captured object stays an object); anywhere else the value is
//! written into the text.
//!
//! Within one call each generator (`uuid`, `random(a, b)`, `pick(set)`,
//! `next(set)`) yields one value wherever it appears, so
//! `{{pick(users).name}}` and `{{pick(users).email}}` come from the same
//! row, and an expectation can repeat what the arguments sent.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use super::data::DataSets;

/// A template that does not compile.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TemplateError {
    #[error("`{{{{` without a closing `}}}}` in {0:?}")]
    Unclosed(String),
    #[error("`{{{{{expr}}}}}`: {why}")]
    Syntax { expr: String, why: String },
}

/// A template that cannot be rendered for this call (the call is not sent
/// and counts as an error of kind `template`).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RenderError {
    #[error("`{0}` has not been captured in this session yet")]
    MissingCapture(String),
    #[error("`{expr}` has no {what}")]
    NoPath { expr: String, what: String },
    #[error("data set `{0}` is not defined")]
    NoDataSet(String),
}

/// Where an expression's value comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// The call's number in the run, unique across shards.
    Seq,
    /// The session's number in the run, unique across shards.
    Session,
    /// The run's id.
    Run,
    /// A random (version 4) UUID.
    Uuid,
    /// A random integer in `[lo, hi]`.
    Random(i64, i64),
    /// A random row of a data set.
    Pick(String),
    /// The data set's rows in order, one per call, round and round.
    Next(String),
    /// A value an earlier step of this session captured.
    Capture(String),
}

/// `.field` or `[index]` after a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Access {
    Field(String),
    Index(usize),
}

/// One `{{ … }}`: a source, then field and index accesses.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub source: Source,
    pub path: Vec<Access>,
    /// The expression without blanks: what it is known by within a call.
    key: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// A compiled JSON value with expressions in its strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    /// No expression anywhere inside: sent as it is.
    Fixed(Value),
    /// The string was exactly one expression: its value, with its type.
    Whole(Expr),
    /// Text with expressions written into it.
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

/// Names an expression may not use for a capture.
pub const RESERVED: &[&str] = &["seq", "session", "run", "uuid", "random", "pick", "next"];

impl Template {
    pub fn compile(value: &Value) -> Result<Self, TemplateError> {
        Ok(match value {
            Value::String(s) => {
                let parts = parse_parts(s)?;
                match parts.as_slice() {
                    [] => Template::Fixed(value.clone()),
                    [Part::Text(_)] => Template::Fixed(value.clone()),
                    [Part::Expr(e)] => Template::Whole(e.clone()),
                    _ => Template::Text(parts),
                }
            }
            Value::Array(items) => {
                let items = items
                    .iter()
                    .map(Template::compile)
                    .collect::<Result<Vec<_>, _>>()?;
                if items.iter().all(|t| matches!(t, Template::Fixed(_))) {
                    Template::Fixed(value.clone())
                } else {
                    Template::Array(items)
                }
            }
            Value::Object(map) => {
                let items = map
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Template::compile(v)?)))
                    .collect::<Result<Vec<_>, TemplateError>>()?;
                if items.iter().all(|(_, t)| matches!(t, Template::Fixed(_))) {
                    Template::Fixed(value.clone())
                } else {
                    Template::Object(items)
                }
            }
            other => Template::Fixed(other.clone()),
        })
    }

    /// Every expression inside, in order.
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut out = Vec::new();
        self.collect(&mut out);
        out
    }

    fn collect<'a>(&'a self, out: &mut Vec<&'a Expr>) {
        match self {
            Template::Fixed(_) => {}
            Template::Whole(e) => out.push(e),
            Template::Text(parts) => out.extend(parts.iter().filter_map(|p| match p {
                Part::Expr(e) => Some(e),
                Part::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(out)),
            Template::Object(items) => items.iter().for_each(|(_, t)| t.collect(out)),
        }
    }

    /// The captures this template reads.
    pub fn captures(&self) -> BTreeSet<String> {
        self.exprs()
            .into_iter()
            .filter_map(|e| match &e.source {
                Source::Capture(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn render(&self, env: &mut Env<'_>) -> Result<Value, RenderError> {
        Ok(match self {
            Template::Fixed(v) => v.clone(),
            Template::Whole(e) => env.eval(e)?,
            Template::Text(parts) => {
                let mut s = String::new();
                for p in parts {
                    match p {
                        Part::Text(t) => s.push_str(t),
                        Part::Expr(e) => s.push_str(&as_text(&env.eval(e)?)),
                    }
                }
                Value::String(s)
            }
            Template::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|t| t.render(env))
                    .collect::<Result<_, _>>()?,
            ),
            Template::Object(items) => Value::Object(
                items
                    .iter()
                    .map(|(k, t)| Ok((k.clone(), t.render(env)?)))
                    .collect::<Result<_, RenderError>>()?,
            ),
        })
    }
}

/// A value as text: strings as they are, anything else as JSON.
pub fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What one call's templates are rendered with.
pub struct Env<'a> {
    pub seq: u64,
    pub session: u64,
    pub run: &'a str,
    pub captures: &'a BTreeMap<String, Value>,
    pub data: &'a DataSets,
    pub rng: &'a mut fastrand::Rng,
    /// Generator values already drawn in this call, by expression.
    drawn: HashMap<String, Value>,
}

impl<'a> Env<'a> {
    pub fn new(
        seq: u64,
        session: u64,
        run: &'a str,
        captures: &'a BTreeMap<String, Value>,
        data: &'a DataSets,
        rng: &'a mut fastrand::Rng,
    ) -> Self {
        Self {
            seq,
            session,
            run,
            captures,
            data,
            rng,
            drawn: HashMap::new(),
        }
    }

    fn eval(&mut self, e: &Expr) -> Result<Value, RenderError> {
        let base = match &e.source {
            Source::Seq => Value::from(self.seq),
            Source::Session => Value::from(self.session),
            Source::Run => Value::from(self.run),
            Source::Capture(name) => self
                .captures
                .get(name)
                .cloned()
                .ok_or_else(|| RenderError::MissingCapture(name.clone()))?,
            generator => {
                // the source's own text (without accesses) names the draw
                let key = e.key.split(['.', '[']).next().unwrap_or(&e.key);
                if let Some(v) = self.drawn.get(key) {
                    v.clone()
                } else {
                    let v = self.draw(generator)?;
                    self.drawn.insert(key.to_owned(), v.clone());
                    v
                }
            }
        };
        let mut v = &base;
        for a in &e.path {
            let next = match a {
                Access::Field(f) => v.get(f),
                Access::Index(i) => v.get(i),
            };
            v = next.ok_or_else(|| RenderError::NoPath {
                expr: e.key.clone(),
                what: match a {
                    Access::Field(f) => format!("field `{f}`"),
                    Access::Index(i) => format!("item [{i}]"),
                },
            })?;
        }
        Ok(v.clone())
    }

    fn draw(&mut self, source: &Source) -> Result<Value, RenderError> {
        Ok(match source {
            Source::Uuid => {
                let mut bytes = [0u8; 16];
                self.rng.fill(&mut bytes);
                Value::from(
                    uuid::Builder::from_random_bytes(bytes)
                        .into_uuid()
                        .to_string(),
                )
            }
            Source::Random(lo, hi) => Value::from(self.rng.i64(*lo..=*hi)),
            Source::Pick(set) => self
                .data
                .pick(set, self.rng)
                .ok_or_else(|| RenderError::NoDataSet(set.clone()))?,
            Source::Next(set) => self
                .data
                .next(set)
                .ok_or_else(|| RenderError::NoDataSet(set.clone()))?,
            Source::Seq | Source::Session | Source::Run | Source::Capture(_) => Value::Null,
        })
    }
}

fn parse_parts(s: &str) -> Result<Vec<Part>, TemplateError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| TemplateError::Unclosed(s.to_owned()))?;
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_owned()));
        }
        parts.push(Part::Expr(parse_expr(&after[..close])?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_owned()));
    }
    Ok(parts)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// `name`, `name(args)`, then `.field` / `[index]` any number of times.
pub fn parse_expr(src: &str) -> Result<Expr, TemplateError> {
    let key: String = src.split_whitespace().collect();
    let fail = |why: &str| TemplateError::Syntax {
        expr: key.clone(),
        why: why.to_owned(),
    };
    // blanks may stand between tokens, never inside a name or a number
    let words: Vec<&str> = src.split_whitespace().collect();
    if let Some(w) = words
        .windows(2)
        .find(|w| w[0].ends_with(is_name_char) && w[1].starts_with(is_name_char))
    {
        return Err(fail(&format!("unexpected `{}`", w[1])));
    }
    let name_end = key.find(|c| !is_name_char(c)).unwrap_or(key.len());
    let name = &key[..name_end];
    if name.is_empty() || name.starts_with('-') {
        return Err(fail(
            "expected a name (seq, session, run, uuid, random(a, b), pick(set), next(set) or a capture)",
        ));
    }
    let mut rest = &key[name_end..];
    let source = if let Some(inner) = rest.strip_prefix('(') {
        let close = inner.find(')').ok_or_else(|| fail("`(` without `)`"))?;
        let args: Vec<&str> = inner[..close]
            .split(',')
            .filter(|a| !a.is_empty())
            .collect();
        rest = &inner[close + 1..];
        let set = |args: &[&str]| -> Result<String, TemplateError> {
            match args {
                [set] if set.chars().all(is_name_char) => Ok((*set).to_owned()),
                _ => Err(fail(&format!("{name}() takes one data set name"))),
            }
        };
        match name {
            "random" => {
                let [lo, hi] = args.as_slice() else {
                    return Err(fail("random(a, b) takes two integers"));
                };
                let lo: i64 = lo
                    .parse()
                    .map_err(|_| fail("random(a, b) takes two integers"))?;
                let hi: i64 = hi
                    .parse()
                    .map_err(|_| fail("random(a, b) takes two integers"))?;
                if lo > hi {
                    return Err(fail("random(a, b) needs a <= b"));
                }
                Source::Random(lo, hi)
            }
            "pick" => Source::Pick(set(&args)?),
            "next" => Source::Next(set(&args)?),
            "uuid" if args.is_empty() => Source::Uuid,
            _ => return Err(fail(&format!("no function `{name}`"))),
        }
    } else {
        match name {
            "seq" => Source::Seq,
            "session" => Source::Session,
            "run" => Source::Run,
            "uuid" => Source::Uuid,
            "random" | "pick" | "next" => {
                return Err(fail(&format!("`{name}` is a function: {name}(…)")));
            }
            capture => Source::Capture(capture.to_owned()),
        }
    };
    let mut path = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(|c| !is_name_char(c)).unwrap_or(after.len());
            if end == 0 {
                return Err(fail("`.` needs a field name"));
            }
            path.push(Access::Field(after[..end].to_owned()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']').ok_or_else(|| fail("`[` without `]`"))?;
            let i = after[..close]
                .parse()
                .map_err(|_| fail("[…] takes an index (0, 1, …)"))?;
            path.push(Access::Index(i));
            rest = &after[close + 1..];
        } else {
            return Err(fail(&format!("unexpected `{rest}`")));
        }
    }
    Ok(Expr { source, path, key })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(t: &Value, seq: u64, captures: &BTreeMap<String, Value>, data: &DataSets) -> Value {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut env = Env::new(seq, 3, "r1", captures, data, &mut rng);
        Template::compile(t).unwrap().render(&mut env).unwrap()
    }

    #[test]
    fn a_whole_expression_keeps_its_type_and_text_embeds_it() {
        let data = DataSets::default();
        let caps = BTreeMap::from([("agent".to_owned(), json!({"id": "a-1", "n": [4, 5]}))]);
        let out = render(
            &json!({"n": "{{seq}}", "s": "call {{ seq }} of {{run}}", "a": "{{agent}}",
                    "id": "{{agent.id}}", "second": "{{agent.n[1]}}", "plain": [1, "x"]}),
            41,
            &caps,
            &data,
        );
        assert_eq!(
            out,
            json!({"n": 41, "s": "call 41 of r1", "a": {"id": "a-1", "n": [4, 5]},
                   "id": "a-1", "second": 5, "plain": [1, "x"]})
        );
    }

    #[test]
    fn generators_draw_once_per_call() {
        let data = DataSets::from_lists([(
            "users",
            vec![
                json!({"name": "ada", "mail": "a@x"}),
                json!({"name": "bob", "mail": "b@x"}),
            ],
        )]);
        let caps = BTreeMap::new();
        for seq in 0..20 {
            let out = render(
                &json!({"u1": "{{uuid}}", "u2": "{{ uuid }}", "who": "{{pick(users).name}}", "mail": "{{pick(users).mail}}", "r": "{{random(5, 6)}}"}),
                seq,
                &caps,
                &data,
            );
            assert_eq!(out["u1"], out["u2"]);
            let u = uuid::Uuid::parse_str(out["u1"].as_str().unwrap()).unwrap();
            assert_eq!(u.get_version_num(), 4);
            assert_eq!(
                out["mail"].as_str().unwrap()[..1],
                out["who"].as_str().unwrap()[..1]
            );
            assert!(matches!(out["r"].as_i64(), Some(5 | 6)));
        }
    }

    #[test]
    fn next_walks_the_rows_in_order() {
        let data = DataSets::from_lists([("ids", vec![json!(10), json!(20), json!(30)])]);
        let caps = BTreeMap::new();
        let got: Vec<Value> = (0..4)
            .map(|s| render(&json!("{{next(ids)}}"), s, &caps, &data))
            .collect();
        assert_eq!(got, vec![json!(10), json!(20), json!(30), json!(10)]);
    }

    #[test]
    fn bad_templates_are_refused_with_the_reason() {
        for (text, why) in [
            ("{{seq", "without a closing"),
            ("{{}}", "expected a name"),
            ("{{random(1)}}", "two integers"),
            ("{{random(9, 1)}}", "a <= b"),
            ("{{pick}}", "is a function"),
            ("{{nope(x)}}", "no function `nope`"),
            ("{{seq.}}", "needs a field name"),
            ("{{a[x]}}", "takes an index"),
            ("{{a b}}", "unexpected"),
        ] {
            let err = Template::compile(&json!(text)).unwrap_err().to_string();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn a_missing_capture_or_field_is_a_render_error() {
        let data = DataSets::default();
        let caps = BTreeMap::from([("a".to_owned(), json!({"x": 1}))]);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut env = Env::new(0, 0, "r", &caps, &data, &mut rng);
        let t = Template::compile(&json!("{{b}}")).unwrap();
        assert_eq!(
            t.render(&mut env),
            Err(RenderError::MissingCapture("b".into()))
        );
        let t = Template::compile(&json!("{{a.y}}")).unwrap();
        assert!(matches!(
            t.render(&mut env),
            Err(RenderError::NoPath { .. })
        ));
        assert_eq!(
            Template::compile(&json!({"k": "{{a}} {{c.d}}"}))
                .unwrap()
                .captures(),
            BTreeSet::from(["a".to_owned(), "c".to_owned()])
        );
    }
}
