//! Scenario files (TOML, YAML or JSON): what each session calls, with which
//! arguments, how often, and what the run's shape and pass criteria are.
//! The file format is documented in the README ("Load testing") and in the
//! shipped examples under `client/scenarios/`.
//!
//! A file is read into `ScenarioFile` (serde, unknown keys refused) and
//! compiled into a [`Scenario`]: templates parsed, data sets read, names
//! and captures checked, so every mistake is reported before the first call.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use super::data::DataSets;
use super::template::{RESERVED, Source, Template};
use super::threshold::Threshold;

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScenarioFile {
    pub name: Option<String>,
    pub description: Option<String>,
    /// Named data sets: a list, `{ csv = "file.csv" }` or `{ json = "file.json" }`.
    #[serde(default)]
    pub data: BTreeMap<String, Value>,
    /// Calls made once (each `repeat` times) before the run, not measured.
    #[serde(default)]
    pub setup: Vec<StepFile>,
    #[serde(default)]
    pub steps: Vec<StepFile>,
    #[serde(default)]
    pub load: LoadFile,
    #[serde(default)]
    pub replies: RepliesFile,
    #[serde(default)]
    pub thresholds: Vec<String>,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepFile {
    pub name: Option<String>,
    /// `tools/call` of this tool.
    pub tool: Option<String>,
    /// `prompts/get` of this prompt.
    pub prompt: Option<String>,
    /// `resources/read` of this URI (a template).
    pub resource: Option<String>,
    /// The method, when it is none of the above: `tools/list`, `prompts/list`, `resources/list`.
    pub method: Option<String>,
    pub args: Option<Value>,
    pub weight: Option<u32>,
    /// Pause after the call (closed loop): `100ms`, or `50ms..150ms` (uniform).
    pub think: Option<String>,
    /// Capture name → JSON pointer into the result.
    #[serde(default)]
    pub capture: BTreeMap<String, String>,
    /// JSON pointer into the result → the value expected there (a template),
    /// or `{ matches = "regex" }`.
    #[serde(default)]
    pub expect: BTreeMap<String, Value>,
    /// Setup steps: how many times to call.
    pub repeat: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// open loop: stages are calls per second
    Rate,
    /// closed loop: stages are sessions, each calling back to back
    Sessions,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoadFile {
    pub mode: Option<Mode>,
    /// Sessions (closed loop, without stages), or the sessions an open loop's calls are spread over.
    pub sessions: Option<usize>,
    /// Open loop without stages: calls per second.
    pub rate: Option<f64>,
    pub duration: Option<String>,
    pub warmup: Option<String>,
    /// The target before the first stage (default 0).
    pub start: Option<f64>,
    pub stages: Option<Vec<StageFile>>,
    /// Sessions ended and replaced per second.
    pub churn: Option<f64>,
    /// `GET` streams held open, idle, while the calls run.
    pub idle_streams: Option<usize>,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StageFile {
    pub duration: String,
    pub target: f64,
}

#[derive(Debug, Default, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RepliesFile {
    pub sampling: Option<SamplingReply>,
    pub elicitation: Option<ElicitationReply>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SamplingReply {
    /// The assistant message's text.
    pub text: String,
    #[serde(default = "default_model")]
    pub model: String,
    pub stop_reason: Option<String>,
}

fn default_model() -> String {
    "mcp-client-load".into()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ElicitationReply {
    /// `accept`, `decline` or `cancel`.
    pub action: String,
    /// The form's values (with `accept`).
    pub content: Option<Value>,
}

/// What a step sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Tool { name: String, args: Template },
    Prompt { name: String, args: Template },
    Resource { uri: Template, text: String },
    List(&'static str),
}

impl Action {
    pub fn method(&self) -> &'static str {
        match self {
            Action::Tool { .. } => "tools/call",
            Action::Prompt { .. } => "prompts/get",
            Action::Resource { .. } => "resources/read",
            Action::List(m) => m,
        }
    }

    /// The tool or prompt name, the resource URI as written, or the method.
    pub fn target(&self) -> String {
        match self {
            Action::Tool { name, .. } | Action::Prompt { name, .. } => name.clone(),
            Action::Resource { text, .. } => text.clone(),
            Action::List(m) => (*m).to_owned(),
        }
    }
}

/// A check on a call's result.
#[derive(Debug, Clone)]
pub enum Check {
    Equals(Template),
    Matches(regex::Regex),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Think {
    pub min: Duration,
    pub max: Duration,
}

impl Think {
    pub fn draw(&self, rng: &mut fastrand::Rng) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        self.min + (self.max - self.min).mul_f64(rng.f64())
    }
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub action: Action,
    pub weight: u32,
    pub think: Option<Think>,
    /// Capture name and JSON pointer.
    pub captures: Vec<(String, String)>,
    /// JSON pointer and what must be there.
    pub expect: Vec<(String, Check)>,
    /// Captures its templates read: the step runs only in a session that has them.
    pub needs: BTreeSet<String>,
    pub repeat: u64,
}

#[derive(Debug)]
pub struct Scenario {
    pub name: String,
    pub data: DataSets,
    pub setup: Vec<Step>,
    pub steps: Vec<Step>,
    pub load: LoadFile,
    pub replies: RepliesFile,
    pub thresholds: Vec<Threshold>,
}

/// The file's format, from its extension.
fn parse_file(path: &Path, text: &str) -> Result<ScenarioFile> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok(match ext {
        "toml" => toml::from_str(text)?,
        "yaml" | "yml" => serde_yaml::from_str(text)?,
        "json" => serde_json::from_str(text)?,
        _ => bail!("a scenario file ends in .toml, .yaml, .yml or .json"),
    })
}

impl Scenario {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the scenario {}", path.display()))?;
        let file =
            parse_file(path, &text).with_context(|| format!("the scenario {}", path.display()))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let fallback = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("scenario")
            .to_owned();
        Self::compile(file, &dir, &fallback)
            .with_context(|| format!("the scenario {}", path.display()))
    }

    pub fn compile(file: ScenarioFile, dir: &Path, fallback_name: &str) -> Result<Self> {
        let data = DataSets::load(&file.data, dir)?;
        let setup = file
            .setup
            .iter()
            .enumerate()
            .map(|(i, s)| compile_step(s, true).with_context(|| format!("setup step {}", i + 1)))
            .collect::<Result<Vec<_>>>()?;
        if file.steps.is_empty() {
            bail!("it has no steps");
        }
        let steps = file
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                compile_step(s, false).with_context(|| {
                    format!("step {} ({})", i + 1, s.name.clone().unwrap_or_default())
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut seen = BTreeSet::new();
        for s in setup.iter().chain(&steps) {
            if !seen.insert(&s.name) {
                bail!(
                    "two steps are named `{}`: give them distinct names (the `name` key)",
                    s.name
                );
            }
            check_data_refs(s, &data)?;
        }
        check_captures(&setup, &steps)?;
        let thresholds = file
            .thresholds
            .iter()
            .map(|t| t.parse::<Threshold>().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<_>>>()?;
        if let Some(e) = &file.replies.elicitation
            && !matches!(e.action.as_str(), "accept" | "decline" | "cancel")
        {
            bail!(
                "replies.elicitation.action is accept, decline or cancel, not `{}`",
                e.action
            );
        }
        Ok(Self {
            name: file.name.unwrap_or_else(|| fallback_name.to_owned()),
            data,
            setup,
            steps,
            load: file.load,
            replies: file.replies,
            thresholds,
        })
    }

    /// Every step and tool name a threshold may scope to.
    pub fn scopes(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .flat_map(|s| [s.name.clone(), s.action.target()])
            .collect()
    }
}

fn compile_step(s: &StepFile, setup: bool) -> Result<Step> {
    let args = s.args.clone();
    let no_args = |what: &str| -> Result<()> {
        if args.is_some() {
            bail!("{what} takes no `args`");
        }
        Ok(())
    };
    let object = |v: Option<Value>| -> Result<Template> {
        let v = v.unwrap_or_else(|| json!({}));
        if !v.is_object() {
            bail!("`args` must be a table (an object of argument names)");
        }
        Ok(Template::compile(&v)?)
    };
    let kinds = [&s.tool, &s.prompt, &s.resource]
        .iter()
        .filter(|k| k.is_some())
        .count();
    if kinds > 1 {
        bail!("a step has one of `tool`, `prompt` or `resource`");
    }
    let method = s.method.as_deref();
    let action = match (&s.tool, &s.prompt, &s.resource, method) {
        (Some(t), _, _, None | Some("tools/call")) => Action::Tool {
            name: t.clone(),
            args: object(args)?,
        },
        (_, Some(p), _, None | Some("prompts/get")) => Action::Prompt {
            name: p.clone(),
            args: object(args)?,
        },
        (_, _, Some(uri), None | Some("resources/read")) => {
            no_args("resources/read")?;
            Action::Resource {
                uri: Template::compile(&Value::from(uri.as_str()))?,
                text: uri.clone(),
            }
        }
        (None, None, None, Some(m @ ("tools/list" | "prompts/list" | "resources/list"))) => {
            no_args(m)?;
            Action::List(match m {
                "tools/list" => "tools/list",
                "prompts/list" => "prompts/list",
                _ => "resources/list",
            })
        }
        (None, None, None, None) => {
            bail!("a step says what it calls: `tool`, `prompt`, `resource` or `method`")
        }
        (_, _, _, Some(m)) => bail!(
            "method `{m}` does not go with this step (tool → tools/call, prompt → prompts/get, resource → resources/read; alone: tools/list, prompts/list, resources/list)"
        ),
    };
    let name = s.name.clone().unwrap_or_else(|| action.target());
    if setup && (s.weight.is_some() || s.think.is_some()) {
        bail!("setup steps run `repeat` times: `weight` and `think` are for steps");
    }
    if !setup && s.repeat.is_some() {
        bail!("`repeat` is for setup steps");
    }
    let think = s.think.as_deref().map(parse_think).transpose()?;
    let mut captures = Vec::new();
    for (name, pointer) in &s.capture {
        if RESERVED.contains(&name.as_str()) {
            bail!("`{name}` is a built-in name: capture into another");
        }
        if !pointer.is_empty() && !pointer.starts_with('/') {
            bail!(
                "capture `{name}`: `{pointer}` is not a JSON pointer (they start with /, e.g. /content/0/text)"
            );
        }
        captures.push((name.clone(), pointer.clone()));
    }
    let mut expect = Vec::new();
    let mut needs = match &action {
        Action::Tool { args, .. } | Action::Prompt { args, .. } => args.captures(),
        Action::Resource { uri, .. } => uri.captures(),
        Action::List(_) => BTreeSet::new(),
    };
    for (pointer, want) in &s.expect {
        if !pointer.is_empty() && !pointer.starts_with('/') {
            bail!("expect: `{pointer}` is not a JSON pointer (they start with /)");
        }
        let check = match want {
            Value::Object(m) if m.len() == 1 && m.contains_key("matches") => {
                let re = m["matches"]
                    .as_str()
                    .context("expect … matches takes a regular expression")?;
                Check::Matches(
                    regex::Regex::new(re)
                        .with_context(|| format!("expect {pointer}: bad regular expression"))?,
                )
            }
            v => {
                let t = Template::compile(v)?;
                needs.extend(t.captures());
                Check::Equals(t)
            }
        };
        expect.push((pointer.clone(), check));
    }
    Ok(Step {
        name,
        action,
        weight: s.weight.unwrap_or(1),
        think,
        captures,
        expect,
        needs,
        repeat: s.repeat.unwrap_or(1),
    })
}

fn parse_think(text: &str) -> Result<Think> {
    let d =
        |s: &str| humantime::parse_duration(s.trim()).with_context(|| format!("think time `{s}`"));
    let (min, max) = match text.split_once("..") {
        Some((a, b)) => (d(a)?, d(b)?),
        None => (d(text)?, d(text)?),
    };
    if max < min {
        bail!("think time `{text}`: the range goes from low to high");
    }
    Ok(Think { min, max })
}

/// `pick(set)` / `next(set)` name sets that exist; fields of CSV rows exist.
fn check_data_refs(step: &Step, data: &DataSets) -> Result<()> {
    let mut templates: Vec<&Template> = step
        .expect
        .iter()
        .filter_map(|(_, c)| match c {
            Check::Equals(t) => Some(t),
            Check::Matches(_) => None,
        })
        .collect();
    match &step.action {
        Action::Tool { args, .. } | Action::Prompt { args, .. } => templates.push(args),
        Action::Resource { uri, .. } => templates.push(uri),
        Action::List(_) => {}
    }
    for e in templates.iter().flat_map(|t| t.exprs()) {
        if let Source::Pick(set) | Source::Next(set) = &e.source {
            if !data.contains(set) {
                bail!(
                    "step `{}`: no data set `{set}` (define it under [data])",
                    step.name
                );
            }
            if let (Some(fields), Some(super::template::Access::Field(f))) =
                (data.fields(set), e.path.first())
                && !fields.contains(f)
            {
                bail!(
                    "step `{}`: data set `{set}` has no column `{f}` (it has {})",
                    step.name,
                    fields.join(", ")
                );
            }
        }
    }
    Ok(())
}

/// Every capture a step needs is made by a setup step, or by a step that can
/// run before it; and some step can run in a new session.
fn check_captures(setup: &[Step], steps: &[Step]) -> Result<()> {
    let mut have: BTreeSet<String> = BTreeSet::new();
    for s in setup {
        if let Some(missing) = s.needs.iter().find(|n| !have.contains(*n)) {
            bail!(
                "setup step `{}` needs `{missing}`, which no earlier setup step captures",
                s.name
            );
        }
        have.extend(s.captures.iter().map(|(n, _)| n.clone()));
    }
    if !steps
        .iter()
        .any(|s| s.weight > 0 && s.needs.is_subset(&have))
    {
        bail!("no step can run in a new session: each needs a capture (or has weight 0)");
    }
    let mut runnable = vec![false; steps.len()];
    loop {
        let mut grew = false;
        for (i, s) in steps.iter().enumerate() {
            if !runnable[i] && s.weight > 0 && s.needs.is_subset(&have) {
                runnable[i] = true;
                have.extend(s.captures.iter().map(|(n, _)| n.clone()));
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    for (i, s) in steps.iter().enumerate() {
        if !runnable[i] && s.weight > 0 {
            let missing: Vec<&String> = s.needs.iter().filter(|n| !have.contains(*n)).collect();
            bail!(
                "step `{}` needs {}, which no step that can run before it captures",
                s.name,
                missing
                    .iter()
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(())
}

/// A weighted choice of registry tools (`--mix get_agent=70,search_agents=20`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mix(pub Vec<(String, u32)>);

pub const DEFAULT_MIX: &str = "get_agent=70,search_agents=20,register_agent=10";

impl Mix {
    pub fn parse(text: &str) -> Result<Self> {
        let mut items = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (tool, w) = part.split_once('=').unwrap_or((part, "1"));
            let w: u32 = w
                .parse()
                .with_context(|| format!("weight of {tool} is not a number"))?;
            if w > 0 {
                items.push((tool.to_owned(), w));
            }
        }
        if items.is_empty() {
            bail!("the tool mix is empty");
        }
        Ok(Self(items))
    }
}

/// The registry's scenario, as `--mix` and `--seed-agents` describe it:
/// `seed_agents` agents registered in setup, each tool of the mix called
/// with arguments that find them (or, for `register_agent`, new ids).
/// `client/scenarios/registry.toml` is the default mix written out.
pub fn registry_file(mix: &Mix, seed_agents: usize) -> ScenarioFile {
    let last = seed_agents.max(1) - 1;
    let seeded = format!("load-seed-{{{{random(0, {last})}}}}");
    let new_agent = json!({"agent_id": "load-{{run}}-{{seq}}", "agent_url": "http://127.0.0.1:9/a2a", "capabilities": ["load"]});
    let steps = mix
        .0
        .iter()
        .map(|(tool, weight)| StepFile {
            tool: Some(tool.clone()),
            weight: Some(*weight),
            args: Some(match tool.as_str() {
                "get_agent" => json!({ "agent_id": seeded }),
                "get_agent_facts" => json!({ "username": seeded.replace('-', "_") }),
                "search_agents" => json!({ "query": "load-seed-{{random(0, 9)}}", "limit": 10 }),
                "list_agents" => json!({ "limit": 10 }),
                "register_agent" => new_agent.clone(),
                "update_agent" => json!({ "agent_id": seeded, "status": "active" }),
                _ => json!({}),
            }),
            ..Default::default()
        })
        .collect();
    let setup = if seed_agents == 0 {
        Vec::new()
    } else {
        vec![StepFile {
            name: Some("seed".into()),
            tool: Some("register_agent".into()),
            repeat: Some(seed_agents as u64),
            args: Some(
                json!({"agent_id": "load-seed-{{seq}}", "agent_url": "http://127.0.0.1:9/a2a", "capabilities": ["load"]}),
            ),
            ..Default::default()
        }]
    };
    ScenarioFile {
        name: Some("registry".into()),
        setup,
        steps,
        ..Default::default()
    }
}

pub fn registry(mix: &Mix, seed_agents: usize) -> Result<Scenario> {
    Scenario::compile(registry_file(mix, seed_agents), &PathBuf::new(), "registry")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toml_scenario(text: &str) -> Result<Scenario> {
        let file: ScenarioFile = toml::from_str(text)?;
        Scenario::compile(file, Path::new("."), "t")
    }

    #[test]
    fn the_shipped_registry_scenario_is_the_default_mix() {
        let shipped: ScenarioFile =
            toml::from_str(include_str!("../../../scenarios/registry.toml")).unwrap();
        let built = registry_file(&Mix::parse(DEFAULT_MIX).unwrap(), 100);
        assert_eq!(shipped.setup, built.setup);
        assert_eq!(shipped.steps, built.steps);
        registry(&Mix::parse(DEFAULT_MIX).unwrap(), 0).unwrap();
    }

    #[test]
    fn the_shipped_everything_scenario_compiles() {
        let file: ScenarioFile =
            serde_yaml::from_str(include_str!("../../../scenarios/everything.yaml")).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let s = Scenario::compile(file, &dir, "everything").unwrap();
        assert!(s.steps.iter().any(|s| !s.captures.is_empty()));
        assert!(s.replies.sampling.is_some());
    }

    #[test]
    fn mix_parses_weights() {
        let m = Mix::parse("a=70, b=20,c=10,d=0").unwrap();
        assert_eq!(
            m.0,
            vec![("a".into(), 70), ("b".into(), 20), ("c".into(), 10)]
        );
        assert!(Mix::parse("").is_err());
        assert!(Mix::parse("a=x").is_err());
    }

    #[test]
    fn steps_compile_to_their_methods_and_needs() {
        let s = toml_scenario(
            r#"
            [[steps]]
            tool = "get-resource-reference"
            args = { resourceId = "{{random(1, 100)}}" }
            capture = { uri = "/content/1/resource/uri" }
            [[steps]]
            name = "read"
            resource = "{{uri}}"
            expect = { "/contents/0/uri" = "{{uri}}" }
            [[steps]]
            prompt = "simple-prompt"
            think = "10ms..20ms"
            [[steps]]
            method = "tools/list"
            weight = 0
            "#,
        )
        .unwrap();
        let methods: Vec<&str> = s.steps.iter().map(|s| s.action.method()).collect();
        assert_eq!(
            methods,
            ["tools/call", "resources/read", "prompts/get", "tools/list"]
        );
        assert_eq!(s.steps[1].needs, BTreeSet::from(["uri".to_owned()]));
        assert_eq!(s.steps[2].think.unwrap().max, Duration::from_millis(20));
        assert_eq!(s.steps[3].name, "tools/list");
    }

    #[test]
    fn mistakes_in_a_scenario_are_named_before_the_run() {
        for (text, why) in [
            ("", "no steps"),
            ("[[steps]]\nargs = {}", "says what it calls"),
            ("[[steps]]\ntool = 'a'\nprompt = 'b'", "one of `tool`"),
            ("[[steps]]\nmethod = 'tools/cal'", "does not go with"),
            (
                "[[steps]]\nresource = 'x://y'\nargs = {a = 1}",
                "takes no `args`",
            ),
            ("[[steps]]\ntool = 'a'\nargs = 'x'", "must be a table"),
            (
                "[[steps]]\ntool = 'a'\n[[steps]]\ntool = 'a'",
                "two steps are named `a`",
            ),
            (
                "[[steps]]\ntool = 'a'\nargs = {x = '{{b}}'}",
                "no step can run in a new session",
            ),
            (
                "[[steps]]\ntool = 'a'\n[[steps]]\ntool = 'b'\nargs = {x = '{{c}}'}",
                "step `b` needs `c`",
            ),
            (
                "[[steps]]\ntool = 'a'\nargs = {x = '{{pick(nope)}}'}",
                "no data set `nope`",
            ),
            (
                "[[steps]]\ntool = 'a'\ncapture = { seq = '/x' }",
                "built-in name",
            ),
            (
                "[[steps]]\ntool = 'a'\ncapture = { x = 'content' }",
                "not a JSON pointer",
            ),
            ("[[steps]]\ntool = 'a'\nthink = 'soon'", "think time"),
            ("[[steps]]\ntool = 'a'\nrepeat = 3", "for setup steps"),
            (
                "[[setup]]\ntool = 'a'\nweight = 3\n[[steps]]\ntool = 'b'",
                "setup steps run",
            ),
            (
                "[[steps]]\ntool = 'a'\nexpect = { '/x' = { matches = '(' } }",
                "bad regular expression",
            ),
            (
                "thresholds = ['p99 < 5']\n[[steps]]\ntool = 'a'",
                "needs a unit",
            ),
            (
                "[replies]\nelicitation = { action = 'maybe' }\n[[steps]]\ntool = 'a'",
                "accept, decline or cancel",
            ),
            ("[[steps]]\ntool = 'a'\nwieght = 3", "unknown field"),
        ] {
            let err = match toml_scenario(text) {
                Ok(_) => panic!("{text:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn csv_columns_are_checked() {
        let dir = std::env::temp_dir().join(format!("load-scn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("u.csv"), "name\nada\n").unwrap();
        let file: ScenarioFile = toml::from_str(
            "data = { users = { csv = 'u.csv' } }\n[[steps]]\ntool = 'a'\nargs = { x = '{{pick(users).mail}}' }",
        )
        .unwrap();
        let err = format!("{:#}", Scenario::compile(file, &dir, "t").unwrap_err());
        assert!(err.contains("no column `mail` (it has name)"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
