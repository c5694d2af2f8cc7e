//! Running a scenario: the setup calls, then sessions that call its steps
//! in an open loop (calls go out on the stages' schedule, latency counted
//! from each call's intended send time, so a slow server cannot hide its
//! queueing) or a closed loop (the stages set how many sessions call back
//! to back), with churn, idle GET streams, and every outcome sent to one
//! collector task that owns the histograms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rmcp::model::{
    CallToolResult, ClientRequest, GetPromptRequestParams, ReadResourceRequestParams,
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::answer::Answering;
use super::results::{Results, Second, StepResult, new_hist};
use super::scenario::{Action, Check, Mode, Scenario, Step};
use super::stages::{Profile, split};
use super::template::{Env, RenderError, as_text};
use crate::cmd::Output;
use crate::connect::{ConnectArgs, Connection, TransportChoice, connect_with, rate_limited};

/// How this process runs the scenario (its shard's share of it).
#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    /// The whole run's target: calls per second, or sessions.
    pub profile: Profile,
    /// Open loop: the sessions this shard spreads its calls over.
    pub pool: usize,
    pub warmup: Duration,
    pub timeout: Duration,
    /// Stop after this many measured calls.
    pub calls: Option<u64>,
    /// Sessions this shard ends and replaces per second.
    pub churn: f64,
    /// Idle GET streams this shard holds.
    pub idle_streams: usize,
    pub max_outstanding: u64,
    pub honour_retry_after: bool,
    pub transports: Vec<TransportChoice>,
    /// 0-based shard and shard count.
    pub shard: (usize, usize),
    pub run_id: String,
    pub cpu_pids: Vec<u32>,
}

impl Plan {
    /// Sessions this shard should have open `t` seconds in (closed loop).
    pub(super) fn sessions_at(&self, t: f64) -> usize {
        let whole = self.profile.target_at(t).round().max(0.0) as usize;
        split(whole, self.shard.0, self.shard.1)
    }

    fn end(&self) -> Duration {
        self.profile.total()
    }

    /// Open loop: when this shard's calls are due. Shard i of n takes every
    /// n-th call of the whole schedule from the i-th, so the shards
    /// together send exactly the schedule one process would.
    pub(super) fn scheduled(&self) -> impl Iterator<Item = f64> + '_ {
        let (shard, shards) = self.shard;
        self.profile.arrivals().skip(shard).step_by(shards.max(1))
    }
}

/// One session of the run and what its steps captured.
struct Session {
    conn: Connection<Answering>,
    index: u64,
    state: Mutex<SessionState>,
}

struct SessionState {
    captures: BTreeMap<String, Value>,
    rng: fastrand::Rng,
}

enum Event {
    Call {
        step: usize,
        latency_us: u64,
        error: Option<Failure>,
        done_at: Duration,
        measured: bool,
    },
    Opened {
        us: u64,
    },
    OpenFailed,
    Closed {
        churned: bool,
    },
    StreamOpened,
    StreamFailed,
    StreamEndedEarly,
    Setup {
        ok: bool,
    },
}

/// What every task of the run shares.
struct Ctx {
    scenario: Arc<Scenario>,
    plan: Arc<Plan>,
    conn_args: ConnectArgs,
    handler: Answering,
    /// What setup captured: every session starts with it.
    globals: BTreeMap<String, Value>,
    start: Instant,
    tx: mpsc::UnboundedSender<Event>,
    seq: AtomicU64,
    sessions_made: AtomicU64,
    issued: AtomicU64,
    outstanding: AtomicU64,
    /// Sessions owed to churn: a closed-loop session that takes one renews itself.
    renew: AtomicU64,
    /// Cancelled when the run's time is up.
    stop: CancellationToken,
}

impl Ctx {
    fn send(&self, e: Event) {
        let _ = self.tx.send(e);
    }

    fn next_seq(&self) -> u64 {
        let (i, n) = self.plan.shard;
        self.seq.fetch_add(1, Ordering::Relaxed) * n as u64 + i as u64
    }

    fn end(&self) -> Instant {
        self.start + self.plan.end()
    }

    /// Opens the run's next session.
    async fn open_next(&self) -> Result<Session> {
        let i = self.sessions_made.fetch_add(1, Ordering::Relaxed);
        open_session(
            &self.conn_args,
            &self.handler,
            &self.plan,
            i,
            &self.globals,
            &self.tx,
        )
        .await
    }

    /// Counts a measured call against `--calls`; false once the limit is reached.
    fn may_issue(&self) -> bool {
        let k = self.issued.fetch_add(1, Ordering::Relaxed);
        self.plan.calls.is_none_or(|l| k < l)
    }
}

/// Opens one session (waiting out rate limits when asked to), counting it.
async fn open_session(
    conn_args: &ConnectArgs,
    handler: &Answering,
    plan: &Plan,
    local_index: u64,
    globals: &BTreeMap<String, Value>,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<Session> {
    let (shard, shards) = plan.shard;
    let index = local_index * shards as u64 + shard as u64;
    let mut args = conn_args.clone();
    if !plan.transports.is_empty() {
        args.transport = plan.transports[local_index as usize % plan.transports.len()];
    }
    let mut attempts = 0;
    loop {
        let began = Instant::now();
        match connect_with(&args, handler.clone()).await {
            Ok(conn) => {
                let _ = tx.send(Event::Opened {
                    us: began.elapsed().as_micros() as u64,
                });
                return Ok(Session {
                    conn,
                    index,
                    state: Mutex::new(SessionState {
                        captures: globals.clone(),
                        rng: fastrand::Rng::with_seed(0x5EED ^ index.rotate_left(32)),
                    }),
                });
            }
            Err(e) => {
                let _ = tx.send(Event::OpenFailed);
                match rate_limited(&e) {
                    Some(wait) if plan.honour_retry_after && attempts < 10 => {
                        attempts += 1;
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(e.context(format!("session {index}"))),
                }
            }
        }
    }
}

async fn close_session(ctx: &Ctx, session: Arc<Session>, churned: bool) {
    if let Ok(s) = Arc::try_unwrap(session) {
        s.conn.close().await;
    }
    // a session still in use by calls in flight closes when the last of them ends
    ctx.send(Event::Closed { churned });
}

/// A step's request with its templates rendered.
enum Request {
    Tool(String, Map<String, Value>),
    Prompt(String, Map<String, Value>),
    Resource(String),
    List(&'static str),
}

struct Prepared {
    step: usize,
    request: Request,
    /// Rendered expected values, one per `expect` entry (None: a regex).
    expected: Vec<Option<Value>>,
}

/// Picks a step the session can run (it has every capture the step needs),
/// by weight.
fn pick(steps: &[Step], captures: &BTreeMap<String, Value>, rng: &mut fastrand::Rng) -> usize {
    let runnable = |s: &Step| s.weight > 0 && s.needs.iter().all(|n| captures.contains_key(n));
    let total: u64 = steps
        .iter()
        .filter(|s| runnable(s))
        .map(|s| u64::from(s.weight))
        .sum();
    let mut x = rng.u64(0..total.max(1));
    for (i, s) in steps.iter().enumerate() {
        if runnable(s) {
            if x < u64::from(s.weight) {
                return i;
            }
            x -= u64::from(s.weight);
        }
    }
    0
}

fn render(step: &Step, env: &mut Env<'_>) -> Result<(Request, Vec<Option<Value>>), RenderError> {
    let object = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let request = match &step.action {
        Action::Tool { name, args } => Request::Tool(name.clone(), object(args.render(env)?)),
        Action::Prompt { name, args } => Request::Prompt(
            name.clone(),
            // prompt arguments are strings
            object(args.render(env)?)
                .into_iter()
                .map(|(k, v)| (k, Value::from(as_text(&v))))
                .collect(),
        ),
        Action::Resource { uri, .. } => Request::Resource(as_text(&uri.render(env)?)),
        Action::List(m) => Request::List(m),
    };
    let expected = step
        .expect
        .iter()
        .map(|(_, c)| match c {
            Check::Equals(t) => t.render(env).map(Some),
            Check::Matches(_) => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((request, expected))
}

/// A failed call: its kind (as counted in `errors_by_kind`) and what
/// happened, in words (the report keeps the first of each kind per step).
#[derive(Debug, PartialEq)]
struct Failure {
    kind: &'static str,
    detail: String,
}

impl Failure {
    fn new(kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// Why a call failed, as counted in `errors_by_kind`.
fn classify(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(rmcp::ServiceError::McpError(_)) = cause.downcast_ref::<rmcp::ServiceError>() {
            return "rpc_error";
        }
    }
    let text = format!("{e:#}").to_lowercase();
    if text.contains("timed out") || text.contains("timeout") {
        "timeout"
    } else if text.contains("connect") {
        "connect"
    } else if text.contains("session") {
        "session"
    } else {
        "transport"
    }
}

/// Sends one request; the result as JSON, or why it failed (and the wait
/// a rate limit asked for).
async fn send(
    conn: &Connection<Answering>,
    request: Request,
    timeout: Duration,
) -> Result<Value, (Failure, Option<Duration>)> {
    let s = &conn.service;
    // Err(text): a tool result with isError
    let call = async {
        Ok::<Result<Value, String>, anyhow::Error>(Ok(match request {
            Request::Tool(name, args) => {
                let r: CallToolResult = conn.call(&name, Value::Object(args)).await?;
                if r.is_error.unwrap_or(false) {
                    return Ok(Err(crate::connect::result_text(&r)));
                }
                serde_json::to_value(r)?
            }
            Request::Prompt(name, args) => serde_json::to_value(
                s.get_prompt(GetPromptRequestParams::new(name).with_arguments(args))
                    .await?,
            )?,
            Request::Resource(uri) => {
                serde_json::to_value(s.read_resource(ReadResourceRequestParams::new(uri)).await?)?
            }
            // sent as they are, never answered from rmcp's list cache
            Request::List(m) => serde_json::to_value(
                s.send_request(match m {
                    "tools/list" => ClientRequest::ListToolsRequest(Default::default()),
                    "prompts/list" => ClientRequest::ListPromptsRequest(Default::default()),
                    _ => ClientRequest::ListResourcesRequest(Default::default()),
                })
                .await?,
            )?,
        }))
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err((
            Failure::new("timeout", format!("no answer within {timeout:?}")),
            None,
        )),
        Ok(Ok(Ok(v))) => Ok(v),
        Ok(Ok(Err(text))) => Err((Failure::new("tool_error", text), None)),
        Ok(Err(e)) => {
            let wait = rate_limited(&e);
            let kind = if wait.is_some() {
                "rate_limited"
            } else {
                classify(&e)
            };
            Err((Failure::new(kind, format!("{e:#}")), wait))
        }
    }
}

/// Checks a result against the step's expectations and captures what it
/// asks for; the error kind when something is missing or different.
fn check_and_capture(
    step: &Step,
    result: &Value,
    expected: &[Option<Value>],
    captures: &mut BTreeMap<String, Value>,
) -> Result<(), Failure> {
    for ((pointer, check), want) in step.expect.iter().zip(expected) {
        let got = result.pointer(pointer);
        let ok = match (check, got, want) {
            (Check::Matches(re), Some(v), _) => re.is_match(&as_text(v)),
            (Check::Equals(_), Some(v), Some(w)) => v == w || as_text(v) == as_text(w),
            _ => false,
        };
        if !ok {
            let wanted = match (check, want) {
                (Check::Matches(re), _) => format!("to match {}", re.as_str()),
                (_, Some(w)) => format!("{w}"),
                _ => String::new(),
            };
            let found = got.map_or("nothing".to_owned(), |v| v.to_string());
            return Err(Failure::new(
                "check_failed",
                format!("{pointer} is {found}, expected {wanted}"),
            ));
        }
    }
    for (name, pointer) in &step.captures {
        match result.pointer(pointer) {
            Some(v) => {
                captures.insert(name.clone(), v.clone());
            }
            None => {
                return Err(Failure::new(
                    "capture_failed",
                    format!("{name}: nothing at {pointer} in the result"),
                ));
            }
        }
    }
    Ok(())
}

/// One call of a step the session picks: rendered, sent (unless the client
/// is saturated), checked, counted. Returns the step and any wait a rate
/// limit asked for.
async fn call(
    ctx: &Ctx,
    session: &Session,
    intended: Duration,
    measured: bool,
    saturated: bool,
) -> (usize, Option<Duration>) {
    let prepared = {
        let mut st = session.state.lock().unwrap_or_else(PoisonError::into_inner);
        let SessionState { captures, rng } = &mut *st;
        let step = pick(&ctx.scenario.steps, captures, rng);
        let mut env = Env::new(
            ctx.next_seq(),
            session.index,
            &ctx.plan.run_id,
            captures,
            &ctx.scenario.data,
            rng,
        );
        render(&ctx.scenario.steps[step], &mut env)
            .map(|(request, expected)| Prepared {
                step,
                request,
                expected,
            })
            .map_err(|e| (step, e))
    };
    let report = |step: usize, error: Option<Failure>| {
        let done = ctx.start.elapsed();
        ctx.send(Event::Call {
            step,
            latency_us: done.saturating_sub(intended).as_micros() as u64,
            error,
            done_at: done,
            measured,
        });
    };
    let p = match prepared {
        Ok(p) => p,
        Err((step, e)) => {
            report(step, Some(Failure::new("template", e.to_string())));
            return (step, None);
        }
    };
    if saturated {
        let limit = ctx.plan.max_outstanding;
        report(
            p.step,
            Some(Failure::new(
                "client_saturated",
                format!("{limit} calls were outstanding (--max-outstanding)"),
            )),
        );
        return (p.step, None);
    }
    let step = &ctx.scenario.steps[p.step];
    match send(&session.conn, p.request, ctx.plan.timeout).await {
        Ok(result) => {
            let outcome = {
                let mut st = session.state.lock().unwrap_or_else(PoisonError::into_inner);
                check_and_capture(step, &result, &p.expected, &mut st.captures)
            };
            report(p.step, outcome.err());
            (p.step, None)
        }
        Err((failure, wait)) => {
            report(p.step, Some(failure));
            (p.step, wait)
        }
    }
}

/// Sleeps `d`, or less when the run or this worker stops.
async fn pause(ctx: &Ctx, stop: &CancellationToken, d: Duration) {
    let until = (Instant::now() + d).min(ctx.end());
    tokio::select! {
        _ = tokio::time::sleep_until(until.into()) => {}
        _ = stop.cancelled() => {}
    }
}

async fn open_until_stopped(ctx: &Ctx, stop: &CancellationToken) -> Option<Arc<Session>> {
    loop {
        if stop.is_cancelled() || Instant::now() >= ctx.end() {
            return None;
        }
        match ctx.open_next().await {
            Ok(s) => return Some(Arc::new(s)),
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "a session did not open; trying again in 1 s");
                pause(ctx, stop, Duration::from_secs(1)).await;
            }
        }
    }
}

/// A closed-loop session: calls back to back (with think time) until the
/// run ends or the ramp takes it away; renews itself when churn asks.
async fn worker(ctx: Arc<Ctx>, first: Option<Arc<Session>>, stop: CancellationToken) {
    let mut session = match first {
        Some(s) => s,
        None => match open_until_stopped(&ctx, &stop).await {
            Some(s) => s,
            None => return,
        },
    };
    loop {
        let sent = ctx.start.elapsed();
        if stop.is_cancelled() || sent >= ctx.plan.end() {
            break;
        }
        let measured = sent >= ctx.plan.warmup;
        if measured && !ctx.may_issue() {
            break;
        }
        let (step, wait) = call(&ctx, &session, sent, measured, false).await;
        if let Some(wait) = wait.filter(|_| ctx.plan.honour_retry_after) {
            pause(&ctx, &stop, wait).await;
        }
        if let Some(think) = ctx.scenario.steps[step].think {
            let d = {
                let mut st = session.state.lock().unwrap_or_else(PoisonError::into_inner);
                think.draw(&mut st.rng)
            };
            pause(&ctx, &stop, d).await;
        }
        let renew = ctx
            .renew
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok();
        if renew {
            close_session(&ctx, session, true).await;
            session = match open_until_stopped(&ctx, &stop).await {
                Some(s) => s,
                None => return,
            };
        }
    }
    close_session(&ctx, session, false).await;
}

/// Closed loop: keeps as many workers as the stages ask for.
async fn closed_loop(ctx: Arc<Ctx>, mut ready: Vec<Arc<Session>>) {
    let mut active: Vec<(CancellationToken, tokio::task::JoinHandle<()>)> = Vec::new();
    let mut leaving = Vec::new();
    let end = ctx.plan.end().as_secs_f64();
    loop {
        let t = ctx.start.elapsed().as_secs_f64();
        if t >= end || ctx.stop.is_cancelled() {
            break;
        }
        let want = ctx.plan.sessions_at(t);
        while active.len() < want {
            let stop = ctx.stop.child_token();
            let first = ready.pop();
            active.push((
                stop.clone(),
                tokio::spawn(worker(Arc::clone(&ctx), first, stop)),
            ));
        }
        while active.len() > want {
            if let Some((stop, handle)) = active.pop() {
                stop.cancel();
                leaving.push(handle);
            }
        }
        if ctx.plan.calls.is_some()
            && active.iter().all(|(_, h)| h.is_finished())
            && !active.is_empty()
        {
            break; // --calls reached: every worker has stopped
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = ctx.stop.cancelled() => {}
        }
    }
    for s in ready {
        close_session(&ctx, s, false).await;
    }
    for (_, h) in active {
        let _ = h.await;
    }
    for h in leaving {
        let _ = h.await;
    }
}

/// Open loop: calls go out on the schedule, over a pool of sessions.
async fn open_loop(ctx: Arc<Ctx>, pool: Vec<Arc<Session>>) {
    if pool.is_empty() {
        return;
    }
    let slots: Arc<Vec<Mutex<Arc<Session>>>> = Arc::new(pool.into_iter().map(Mutex::new).collect());
    let churn = (ctx.plan.churn > 0.0).then(|| {
        let ctx = Arc::clone(&ctx);
        let slots = Arc::clone(&slots);
        tokio::spawn(async move {
            let every = Duration::from_secs_f64(1.0 / ctx.plan.churn);
            let mut next = 0usize;
            let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = ctx.stop.cancelled() => break,
                }
                let fresh = match ctx.open_next().await {
                    Ok(s) => Arc::new(s),
                    Err(_) => continue,
                };
                let old = {
                    let mut slot = slots[next % slots.len()]
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    std::mem::replace(&mut *slot, fresh)
                };
                next += 1;
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move { close_session(&ctx, old, true).await });
            }
        })
    });
    let mut limited = false;
    for (n, t) in ctx.plan.scheduled().enumerate() {
        if ctx.stop.is_cancelled() {
            break;
        }
        let intended = Duration::from_secs_f64(t);
        let measured = intended >= ctx.plan.warmup;
        if measured && !ctx.may_issue() {
            limited = true;
            break;
        }
        tokio::time::sleep_until((ctx.start + intended).into()).await;
        let session = Arc::clone(
            &slots[n % slots.len()]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let saturated = ctx.outstanding.load(Ordering::Relaxed) >= ctx.plan.max_outstanding;
        let ctx = Arc::clone(&ctx);
        ctx.outstanding.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            call(&ctx, &session, intended, measured, saturated).await;
            ctx.outstanding.fetch_sub(1, Ordering::Relaxed);
        });
    }
    if limited {
        ctx.stop.cancel();
    } else {
        // idle streams and churn go on to the end (the timer stops them)
        ctx.stop.cancelled().await;
    }
    if let Some(c) = churn {
        let _ = c.await;
    }
    // calls in flight end within their timeout
    while ctx.outstanding.load(Ordering::Relaxed) > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for slot in slots.iter() {
        let s = Arc::clone(&slot.lock().unwrap_or_else(PoisonError::into_inner));
        close_session(&ctx, s, false).await;
    }
}

/// Hands out churn renewals to closed-loop sessions at the churn rate.
async fn churn_ticker(ctx: Arc<Ctx>) {
    let every = Duration::from_secs_f64(1.0 / ctx.plan.churn);
    let mut tick = tokio::time::interval_at((Instant::now() + every).into(), every);
    loop {
        tokio::select! {
            _ = tick.tick() => { ctx.renew.fetch_add(1, Ordering::Relaxed); }
            _ = ctx.stop.cancelled() => break,
        }
    }
}

/// One idle stream: a session of its own and its `GET` event stream, held
/// until the run ends (legacy: the `GET /sse` stream).
async fn idle_stream(ctx: Arc<Ctx>) {
    let opened = hold_stream(&ctx).await;
    match opened {
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "an idle stream did not open");
            ctx.send(Event::StreamFailed);
        }
        Ok(ended_early) => {
            if ended_early {
                ctx.send(Event::StreamEndedEarly);
            }
        }
    }
}

const STREAM_PROTOCOL: &str = "2025-06-18";

/// Opens and holds the stream; Ok(true) when it ended before the run did.
async fn hold_stream(ctx: &Ctx) -> Result<bool> {
    let http = ctx.conn_args.http_client()?;
    let transport = ctx.plan.transports.first().copied();
    let legacy = transport.unwrap_or(ctx.conn_args.transport) == TransportChoice::Sse
        || ctx.conn_args.url.trim_end_matches('/').ends_with("/sse");
    if legacy {
        let r = http
            .get(ctx.conn_args.sse_url())
            .header("accept", "text/event-stream")
            .send()
            .await?;
        return hold(ctx, r).await;
    }
    let url = ctx.conn_args.mcp_url();
    let init = http
        .post(&url)
        .header("accept", "application/json, text/event-stream")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": STREAM_PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "mcp-client-load-idle", "version": env!("CARGO_PKG_VERSION")}}}),
        )
        .send()
        .await?;
    let status = init.status();
    let sid = init
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .with_context(|| format!("initialize answered {status} without a session id"))?;
    let _ = init.bytes().await?;
    let with_session = |b: reqwest::RequestBuilder| {
        b.header("mcp-session-id", &sid)
            .header("mcp-protocol-version", STREAM_PROTOCOL)
    };
    let held = async {
        with_session(http.post(&url))
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .send()
            .await?
            .error_for_status()?;
        let r = with_session(http.get(&url))
            .header("accept", "text/event-stream")
            .send()
            .await?;
        hold(ctx, r).await
    }
    .await;
    // the session ends with the stream, however that went
    let _ = with_session(http.delete(&url)).send().await;
    held
}

/// Reads an event stream until the run ends; Ok(true) when it ended first.
async fn hold(ctx: &Ctx, response: reqwest::Response) -> Result<bool> {
    use futures::StreamExt;
    let is_stream = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    if !response.status().is_success() || !is_stream {
        anyhow::bail!(
            "the GET was answered {} without an event stream",
            response.status()
        );
    }
    ctx.send(Event::StreamOpened);
    let mut body = response.bytes_stream();
    Ok(loop {
        tokio::select! {
            chunk = body.next() => match chunk {
                Some(Ok(_)) => continue,
                _ => break true,
            },
            _ = ctx.stop.cancelled() => break false,
        }
    })
}

/// Runs the setup steps once, on a session of their own; what they capture
/// every session of the run starts with.
async fn setup(
    conn_args: &ConnectArgs,
    scenario: &Scenario,
    handler: &Answering,
    plan: &Plan,
    tx: &mpsc::UnboundedSender<Event>,
) -> Result<BTreeMap<String, Value>> {
    let mut captures = BTreeMap::new();
    if scenario.setup.is_empty() {
        return Ok(captures);
    }
    let mut args = conn_args.clone();
    if let Some(t) = plan.transports.first() {
        args.transport = *t;
    }
    let conn = connect_with(&args, handler.clone())
        .await
        .context("opening the setup session")?;
    let mut rng = fastrand::Rng::with_seed(0x5E7);
    for step in &scenario.setup {
        for seq in 0..step.repeat {
            let rendered = {
                let mut env = Env::new(seq, 0, &plan.run_id, &captures, &scenario.data, &mut rng);
                render(step, &mut env)
            };
            let ok = match rendered {
                Ok((request, expected)) => match send(&conn, request, plan.timeout).await {
                    Ok(result) => {
                        check_and_capture(step, &result, &expected, &mut captures).is_ok()
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            let _ = tx.send(Event::Setup { ok });
        }
    }
    conn.close().await;
    Ok(captures)
}

/// CPU time (user + system) the given processes have used so far, in seconds.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // fields after the command name (which may hold spaces) in parentheses
            let rest = stat.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .sum()
}

/// Runs the scenario; `config` is echoed into the results.
pub async fn execute(
    conn_args: &ConnectArgs,
    scenario: Arc<Scenario>,
    plan: Arc<Plan>,
    config: Value,
    output: Output,
) -> Result<Results> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let handler = Answering::new(scenario.replies.clone(), conn_args.client_info());
    let globals = setup(conn_args, &scenario, &handler, &plan, &tx).await?;

    // the sessions the run starts with are open before the clock starts
    let first = match plan.mode {
        Mode::Rate => plan.pool,
        Mode::Sessions => plan.sessions_at(0.0),
    };
    let mut ready = Vec::with_capacity(first);
    for i in 0..first {
        ready.push(Arc::new(
            open_session(conn_args, &handler, &plan, i as u64, &globals, &tx).await?,
        ));
    }
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let ctx = Arc::new(Ctx {
        scenario: Arc::clone(&scenario),
        plan: Arc::clone(&plan),
        conn_args: conn_args.clone(),
        handler: handler.clone(),
        globals,
        start: Instant::now(),
        tx,
        seq: AtomicU64::new(0),
        sessions_made: AtomicU64::new(first as u64),
        issued: AtomicU64::new(0),
        outstanding: AtomicU64::new(0),
        renew: AtomicU64::new(0),
        stop: CancellationToken::new(),
    });
    let start = ctx.start;
    let cpu_probe = (!plan.cpu_pids.is_empty()).then(|| {
        let pids = plan.cpu_pids.clone();
        let from = start + plan.warmup;
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            cpu_seconds(&pids)
        })
    });
    // the run: its own task, so the collector below sees the channel close
    // when the last task holding the context is done
    let finished = Arc::new(AtomicU64::new(0));
    {
        let ctx = Arc::clone(&ctx);
        let finished = Arc::clone(&finished);
        tokio::spawn(async move {
            let timer = {
                let stop = ctx.stop.clone();
                let end = ctx.end();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep_until(end.into()) => stop.cancel(),
                        _ = stop.cancelled() => {}
                    }
                })
            };
            let streams: Vec<_> = (0..ctx.plan.idle_streams)
                .map(|_| tokio::spawn(idle_stream(Arc::clone(&ctx))))
                .collect();
            match ctx.plan.mode {
                Mode::Rate => open_loop(Arc::clone(&ctx), ready).await,
                Mode::Sessions => {
                    let churn = (ctx.plan.churn > 0.0)
                        .then(|| tokio::spawn(churn_ticker(Arc::clone(&ctx))));
                    closed_loop(Arc::clone(&ctx), ready).await;
                    ctx.stop.cancel();
                    if let Some(c) = churn {
                        let _ = c.await;
                    }
                }
            }
            finished.store(start.elapsed().as_micros() as u64, Ordering::Relaxed);
            ctx.stop.cancel();
            for s in streams {
                let _ = s.await;
            }
            let _ = timer.await;
        });
    }
    drop(ctx);

    let mut collector = Collector::new(&scenario, &plan, output);
    while let Some(e) = rx.recv().await {
        collector.add(e, start);
    }
    collector.finish_bar();

    let ran_for = Duration::from_micros(finished.load(Ordering::Relaxed));
    let measured_seconds = ran_for
        .min(plan.end())
        .saturating_sub(plan.warmup)
        .as_secs_f64()
        .max(0.001);
    let mut results = collector.into_results(config, started_unix_ms, measured_seconds);
    let counts = &handler.counts;
    results.server_requests.sampling_answered = counts.sampling.load(Ordering::Relaxed);
    results.server_requests.elicitation_answered = counts.elicitation.load(Ordering::Relaxed);
    results.server_requests.refused = counts.refused.load(Ordering::Relaxed);
    results.idle_streams.requested = plan.idle_streams as u64;
    if let Some(probe) = cpu_probe.filter(|p| p.is_finished()) {
        let cpu = cpu_seconds(&plan.cpu_pids) - probe.await.unwrap_or(0.0);
        let calls = results.total();
        let calls = calls.ok + calls.errors;
        results.cpu = Some(json!({
            "pids": plan.cpu_pids,
            "seconds": cpu,
            "ms_per_1000_calls": if calls > 0 { cpu * 1_000_000.0 / calls as f64 } else { 0.0 },
        }));
    }
    Ok(results)
}

/// Owns the counts and histograms; every task reports to it over the channel.
struct Collector {
    steps: Vec<StepResult>,
    timeline: BTreeMap<u64, Second>,
    results: Results,
    open: u64,
    plan: Arc<Plan>,
    bar: Option<indicatif::ProgressBar>,
    last_tick: Instant,
    ok_hist: hdrhistogram::Histogram<u64>,
}

impl Collector {
    fn new(scenario: &Scenario, plan: &Arc<Plan>, output: Output) -> Self {
        let bar = (output == Output::Pretty).then(|| {
            let bar = indicatif::ProgressBar::new(plan.end().as_millis() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            steps: scenario
                .steps
                .iter()
                .map(|s| StepResult::new(&s.name, s.action.method(), &s.action.target()))
                .collect(),
            timeline: BTreeMap::new(),
            results: Results::new(
                Value::Null,
                vec![format!("{}/{}", plan.shard.0 + 1, plan.shard.1)],
            ),
            open: 0,
            plan: Arc::clone(plan),
            bar,
            last_tick: Instant::now(),
            ok_hist: new_hist(),
        }
    }

    fn add(&mut self, e: Event, start: Instant) {
        let r = &mut self.results;
        match e {
            Event::Call {
                step,
                latency_us,
                error,
                done_at,
                measured,
            } => {
                if !measured {
                    return;
                }
                let s = &mut self.steps[step];
                let second = self.timeline.entry(done_at.as_secs()).or_default();
                match error {
                    Some(f) => {
                        s.errors += 1;
                        second.errors += 1;
                        *s.errors_by_kind.entry(f.kind.to_owned()).or_default() += 1;
                        s.error_examples
                            .entry(f.kind.to_owned())
                            .or_insert(f.detail);
                    }
                    None => {
                        let v = latency_us.max(1);
                        s.ok += 1;
                        second.ok += 1;
                        s.hist.saturating_record(v);
                        second.hist.saturating_record(v);
                        self.ok_hist.saturating_record(v);
                    }
                }
            }
            Event::Opened { us } => {
                r.sessions.opened += 1;
                r.connect_hist.saturating_record(us.max(1));
                self.open += 1;
                r.sessions.peak_open = r.sessions.peak_open.max(self.open);
            }
            Event::OpenFailed => r.sessions.failed_to_open += 1,
            Event::Closed { churned } => {
                r.sessions.closed += 1;
                r.sessions.churned += u64::from(churned);
                self.open = self.open.saturating_sub(1);
            }
            Event::StreamOpened => r.idle_streams.opened += 1,
            Event::StreamFailed => r.idle_streams.failed_to_open += 1,
            Event::StreamEndedEarly => r.idle_streams.ended_early += 1,
            Event::Setup { ok: true } => r.setup.ok += 1,
            Event::Setup { ok: false } => r.setup.errors += 1,
        }
        self.tick(start);
    }

    /// The live line: what the run asks for now and what it completes.
    fn tick(&mut self, start: Instant) {
        let Some(bar) = &self.bar else { return };
        if self.last_tick.elapsed() < Duration::from_millis(200) {
            return;
        }
        self.last_tick = Instant::now();
        let t = start.elapsed();
        let secs = t.saturating_sub(self.plan.warmup).as_secs_f64().max(0.001);
        let ok: u64 = self.steps.iter().map(|s| s.ok).sum();
        let err: u64 = self.steps.iter().map(|s| s.errors).sum();
        let target = match self.plan.mode {
            Mode::Rate => format!(
                "target {:.0} calls/s",
                self.plan.profile.target_at(t.as_secs_f64()) / self.plan.shard.1 as f64
            ),
            Mode::Sessions => format!("target {} sessions", self.plan.sessions_at(t.as_secs_f64())),
        };
        bar.set_position(t.as_millis() as u64);
        bar.set_message(format!(
            "{target} · {} sessions open · completed {ok} ok ({:.0}/s), {err} errors · p99 {:.2} ms",
            self.open,
            ok as f64 / secs,
            self.ok_hist.value_at_quantile(0.99) as f64 / 1000.0
        ));
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn into_results(self, config: Value, started_unix_ms: u64, measured_seconds: f64) -> Results {
        Results {
            config,
            started_unix_ms,
            measured_seconds,
            steps: self.steps,
            timeline: self.timeline,
            ..self.results
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scenario::ScenarioFile;
    use super::*;

    #[test]
    fn a_session_picks_only_steps_whose_captures_it_has() {
        let file: ScenarioFile = toml::from_str(
            "[[steps]]\ntool = 'make'\nweight = 1\ncapture = { id = '/id' }\n[[steps]]\ntool = 'use'\nweight = 1000\nargs = { id = '{{id}}' }",
        )
        .unwrap();
        let s = Scenario::compile(file, std::path::Path::new("."), "t").unwrap();
        let mut rng = fastrand::Rng::with_seed(3);
        let none = BTreeMap::new();
        assert!((0..100).all(|_| pick(&s.steps, &none, &mut rng) == 0));
        let have = BTreeMap::from([("id".to_owned(), json!(1))]);
        let picks: Vec<usize> = (0..1000).map(|_| pick(&s.steps, &have, &mut rng)).collect();
        assert!(picks.iter().filter(|p| **p == 1).count() > 950);
    }

    #[test]
    fn results_are_checked_and_captured_by_pointer() {
        let file: ScenarioFile = toml::from_str(
            "[[steps]]\ntool = 'echo'\nargs = { m = 'hi {{seq}}' }\ncapture = { said = '/content/0/text' }\nexpect = { '/content/0/text' = 'Echo: hi {{seq}}', '/isError' = { matches = '^false$' } }",
        )
        .unwrap();
        let s = Scenario::compile(file, std::path::Path::new("."), "t").unwrap();
        let step = &s.steps[0];
        let mut rng = fastrand::Rng::with_seed(1);
        let caps = BTreeMap::new();
        let mut env = Env::new(7, 0, "r", &caps, &s.data, &mut rng);
        let (request, expected) = render(step, &mut env).unwrap();
        assert!(matches!(&request, Request::Tool(n, a) if n == "echo" && a["m"] == "hi 7"));
        let mut caps = BTreeMap::new();
        let good = json!({"content": [{"type": "text", "text": "Echo: hi 7"}], "isError": false});
        assert_eq!(check_and_capture(step, &good, &expected, &mut caps), Ok(()));
        assert_eq!(caps["said"], "Echo: hi 7");
        let wrong = json!({"content": [{"type": "text", "text": "Echo: hi 8"}], "isError": false});
        assert_eq!(
            check_and_capture(step, &wrong, &expected, &mut caps),
            Err(Failure::new(
                "check_failed",
                r#"/content/0/text is "Echo: hi 8", expected "Echo: hi 7""#
            ))
        );
        let no_text = json!({"content": [], "isError": false});
        assert_eq!(
            check_and_capture(step, &no_text, &expected, &mut caps),
            Err(Failure::new(
                "check_failed",
                "/content/0/text is nothing, expected \"Echo: hi 7\""
            ))
        );
    }
}
