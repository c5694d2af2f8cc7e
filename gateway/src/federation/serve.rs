//! A message to a virtual server. The gateway answers `initialize` (the
//! members' capabilities united), `ping` and the lists (merged from the
//! catalog, fetched from a member only when its kept copy is missing or
//! stale); it sends `tools/call`, `prompts/get` and `completion/complete`
//! to the member that owns the name (the name unprefixed),
//! `resources/read`/`subscribe`/`unsubscribe` to the member that listed
//! the URI (URIs are never rewritten), a client's answer to the member
//! session that asked (by its `asks` tag), and notifications,
//! `logging/setLevel` and `DELETE` to every member. A `GET` stream carries
//! every member's server stream, and a `list_changed` when a member leaves
//! or comes back. A member that cannot take a message is named in the
//! error (`Reject::Member`): the others keep working.

use bytes::Bytes;
use futures::future::join_all;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::sync::Arc;

use super::catalog::{self, Kind, List};
use super::{Member, Opened, Virtual};
use crate::asks;
use crate::metrics::Transport;
use crate::policy::jsonrpc::{self, Method, Rpc};
use crate::reject::Reject;
use crate::relay::queue::{self, Queue};
use crate::relay::{self, Answer, Collect, Downstream, Failure, Seen, Sink};
use crate::session::binding::trim_init;
use crate::session::exchange::{Exchange, Message, Target};
use crate::session::{Caller, Sessions};
use crate::state::State;
use crate::upstream::Upstream;

/// What serving a virtual server needs of the gateway.
#[derive(Clone, Copy)]
pub struct Federated<'a> {
    pub sessions: &'a Sessions,
    pub upstream: &'a Upstream,
    pub state: &'a State,
}

/// One client request to a virtual server.
pub struct Request<'r> {
    pub vs: &'r Arc<Virtual>,
    pub body: Bytes,
    pub rpc: Option<&'r Rpc>,
    pub caller: &'r Caller,
    /// The client's federated session (`None`: a stateless request, or `initialize`).
    pub session: Option<&'r Opened>,
    /// A stateless request's `MCP-Protocol-Version`.
    pub version: Option<&'r str>,
    pub transport: Transport,
}

impl Request<'_> {
    fn id(&self) -> Option<&RawValue> {
        self.rpc.and_then(|r| r.id.as_deref())
    }

    fn target(&self, member: usize) -> Target<'_> {
        match self.session {
            Some(s) => Target::Session(&s.members[member]),
            None => Target::Anywhere { seal: false },
        }
    }
}

/// The id the gateway gives the requests it makes itself.
const OWN_ID: &str = "\"mcp-gateway\"";

impl Federated<'_> {
    fn exchange(&self) -> Exchange<'_> {
        Exchange {
            sessions: self.sessions,
            upstream: self.upstream,
            state: self.state,
        }
    }

    /// Answers one request to a virtual server through the client's sink;
    /// every refusal is written there.
    pub async fn serve<S: Sink>(&self, req: &Request<'_>, sink: &mut S) -> Result<(), Failure> {
        match self.route(req, sink).await {
            Err(Failure::Reject(r)) => relay::refuse(sink, &self.state.metrics, &r, req.id()).await,
            other => other,
        }
    }

    async fn route<S: Sink>(&self, req: &Request<'_>, sink: &mut S) -> Result<(), Failure> {
        let rpc = req.rpc.ok_or(Reject::BadRequest(
            "a virtual server takes JSON-RPC messages",
        ))?;
        if rpc.batch {
            return Err(Reject::Invalid(
                "a virtual server takes one message per request (no batches)".into(),
            )
            .into());
        }
        if req.session.is_none() && !rpc.is_initialize() && req.transport != Transport::Stateless {
            return Err(Reject::BadRequest("this message needs a session").into());
        }
        match &rpc.method {
            Method::Initialize => self.initialize(req, rpc, sink).await,
            Method::Ping => reply(sink, req.id(), json!({})).await,
            Method::Response => self.answer(req, rpc, sink).await,
            m if m.is_notification() => {
                self.everyone(req, rpc).await;
                sink.reply(None, None).await
            }
            Method::ToolsCall { name } => self.named(req, Kind::Tools, name, &["name"], sink).await,
            Method::PromptsGet { name } => {
                self.named(req, Kind::Prompts, name, &["name"], sink).await
            }
            Method::ResourcesRead { uri } => self.by_uri(req, rpc, uri, sink).await,
            Method::Other(m) if m == "resources/subscribe" || m == "resources/unsubscribe" => {
                let uri = param(&req.body, &["uri"])
                    .ok_or(Reject::Invalid("params.uri is required".into()))?;
                self.by_uri(req, rpc, &uri, sink).await
            }
            Method::Other(m) if m == "completion/complete" => self.complete(req, sink).await,
            Method::Other(m) if m == "logging/setLevel" => {
                self.everyone(req, rpc).await;
                reply(sink, req.id(), json!({})).await
            }
            m => match Kind::of(m) {
                Some(kind) => self.list(req, kind, sink).await,
                None => Err(Reject::NoMethod(m.as_str().unwrap_or("?").to_owned()).into()),
            },
        }
    }

    /// `initialize`: a session opened on every member that can take one;
    /// the answer unites theirs. A member down now joins when first used.
    async fn initialize<S: Sink>(
        &self,
        req: &Request<'_>,
        rpc: &Rpc,
        sink: &mut S,
    ) -> Result<(), Failure> {
        let vs = req.vs;
        let opens = vs.members.iter().enumerate().map(|(i, m)| async move {
            let mut got = Collect::default();
            let msg = Message::gateway(&m.pool, req.body.clone(), Some(rpc), req.caller, req.transport);
            let out = self.exchange().run(&msg, Target::Anywhere { seal: false }, &mut got).await;
            let link = out.ok().and_then(|o| o.answered).and_then(|a| a.opened);
            let result = got.answer.as_deref().and_then(jsonrpc::result_of).and_then(|r| serde_json::from_str::<Value>(r).ok());
            match (link, result) {
                (Some(link), Some(result)) => Some((i, link, result)),
                _ => {
                    tracing::warn!(server = %vs.name, member = %m.label(), "member left out of a new federated session");
                    None
                }
            }
        });
        let joined: Vec<_> = join_all(opens).await.into_iter().flatten().collect();
        if joined.is_empty() {
            return Err(Reject::NoBackend.into());
        }
        let links: Vec<(u16, &crate::session::Link)> =
            joined.iter().map(|(i, l, _)| (*i as u16, l)).collect();
        let init = jsonrpc::params_of(&req.body)
            .map(trim_init)
            .unwrap_or_default();
        let (token, _) = self
            .sessions
            .pin_members(vs.index, &req.caller.principal, &init, &links)
            .ok_or(Reject::BadGateway)?;
        let asked = jsonrpc::params_of(&req.body).and_then(jsonrpc::protocol_version);
        let results: Vec<(&Member, &Value)> = joined
            .iter()
            .map(|(i, _, r)| (&vs.members[*i], r))
            .collect();
        let result = united(&vs.name, asked.as_deref(), &results);
        let answer = response(req.id(), result);
        sink.reply(Some(answer), Some(&token)).await
    }

    /// A client's answer to a server request: to the member session that asked.
    async fn answer<S: Sink>(
        &self,
        req: &Request<'_>,
        rpc: &Rpc,
        sink: &mut S,
    ) -> Result<(), Failure> {
        let session = req.session.ok_or(Reject::AnswerUndeliverable)?;
        let asker = match asks::unmark(&req.body) {
            asks::Answer::Marked { tag, .. } => {
                session.members.iter().position(|b| b.tag() == Some(tag))
            }
            _ => None,
        };
        let i = asker.ok_or(Reject::AnswerUndeliverable)?;
        self.send_to(req, i, req.body.clone(), rpc, None, sink)
            .await
    }

    /// A message for every member (notifications, `logging/setLevel`):
    /// members without a live session and failures are passed over.
    async fn everyone(&self, req: &Request<'_>, rpc: &Rpc) {
        let Some(session) = req.session else { return };
        let sends = session
            .members
            .iter()
            .enumerate()
            .filter(|(_, b)| b.current().is_some())
            .map(|(i, _)| async move {
                let mut quiet = Collect::default();
                let _ = self
                    .send_to(req, i, req.body.clone(), rpc, None, &mut quiet)
                    .await;
            });
        join_all(sends).await;
    }

    /// `tools/call`, `prompts/get`: to the owner, under its own name.
    async fn named<S: Sink>(
        &self,
        req: &Request<'_>,
        kind: Kind,
        shown: &str,
        at: &[&str],
        sink: &mut S,
    ) -> Result<(), Failure> {
        let what = if kind == Kind::Tools {
            "tool"
        } else {
            "prompt"
        };
        let listed = self.lists(req, kind).await;
        let (i, own) = req
            .vs
            .owner(shown, &listed)
            .ok_or_else(|| Reject::NotFound(format!("no {what} named {shown} on this server")))?;
        let mut path = vec!["params"];
        path.extend_from_slice(at);
        let body = with_param(&req.body, &path, &own)
            .ok_or(Reject::Invalid("params are not an object".into()))?;
        let rpc = jsonrpc::parse(&body)?;
        let started = std::time::Instant::now();
        let sent = self.send_to(req, i, body, &rpc, Some(&own), sink).await;
        if kind == Kind::Tools {
            let listed = || listed.iter().any(|(_, l)| l.has(shown));
            req.vs.tool_seconds[i].observe(shown, listed, started.elapsed());
        }
        sent
    }

    /// `completion/complete`: a prompt's by its name, a resource's by URI.
    async fn complete<S: Sink>(&self, req: &Request<'_>, sink: &mut S) -> Result<(), Failure> {
        let kind = param(&req.body, &["ref", "type"]);
        match kind.as_deref() {
            Some("ref/prompt") => {
                let name = param(&req.body, &["ref", "name"])
                    .ok_or(Reject::Invalid("params.ref.name is required".into()))?;
                self.named(req, Kind::Prompts, &name, &["ref", "name"], sink)
                    .await
            }
            Some("ref/resource") => {
                let uri = param(&req.body, &["ref", "uri"])
                    .ok_or(Reject::Invalid("params.ref.uri is required".into()))?;
                let rpc = req.rpc.ok_or(Reject::BadGateway)?;
                self.by_uri(req, rpc, &uri, sink).await
            }
            _ => Err(
                Reject::Invalid("params.ref.type must be ref/prompt or ref/resource".into()).into(),
            ),
        }
    }

    /// A message about a resource: to the member that listed its URI (or
    /// a template it matches), unchanged.
    async fn by_uri<S: Sink>(
        &self,
        req: &Request<'_>,
        rpc: &Rpc,
        uri: &str,
        sink: &mut S,
    ) -> Result<(), Failure> {
        let i = self
            .uri_owner(req, uri)
            .await
            .ok_or_else(|| Reject::NotFound(format!("no resource {uri} on this server")))?;
        self.send_to(req, i, req.body.clone(), rpc, Some(uri), sink)
            .await
    }

    async fn uri_owner(&self, req: &Request<'_>, uri: &str) -> Option<usize> {
        let listed = self.lists(req, Kind::Resources).await;
        if let Some((i, _)) = listed.iter().find(|(_, l)| l.has(uri)) {
            return Some(*i);
        }
        let templates = self.lists(req, Kind::Templates).await;
        let mut best: Option<(usize, usize)> = None;
        for (i, list) in &templates {
            for template in &list.keys {
                let fixed = template.split('{').next().unwrap_or("");
                if !fixed.is_empty()
                    && uri.starts_with(fixed)
                    && best.is_none_or(|(_, n)| fixed.len() > n)
                {
                    best = Some((*i, fixed.len()));
                }
            }
        }
        if let Some((i, _)) = best {
            return Some(i);
        }
        // One member offers resources at all: it is asked.
        let mut offering = listed
            .iter()
            .chain(&templates)
            .filter(|(_, l)| !l.is_empty())
            .map(|(i, _)| *i);
        let first = offering.next()?;
        offering.all(|i| i == first).then_some(first)
    }

    /// A merged list, one page of it.
    async fn list<S: Sink>(
        &self,
        req: &Request<'_>,
        kind: Kind,
        sink: &mut S,
    ) -> Result<(), Failure> {
        let from = match param(&req.body, &["cursor"]) {
            None => 0,
            Some(c) => catalog::offset(&c)
                .ok_or_else(|| Reject::NotFound(format!("unknown cursor {c:?}")))?,
        };
        let lists: Vec<Arc<List>> = self
            .lists(req, kind)
            .await
            .into_iter()
            .map(|(_, l)| l)
            .collect();
        let items = catalog::merge(&lists);
        let id = req.id().map_or(OWN_ID, RawValue::get);
        let answer = Bytes::from(catalog::page(kind, &items, from, id));
        let shaped = match (&req.caller.rewrite, kind) {
            (Some(rewrite), Kind::Tools) => {
                rewrite(&String::from_utf8_lossy(&answer)).map(Bytes::from)
            }
            _ => None,
        };
        sink.reply(Some(shaped.unwrap_or(answer)), None).await
    }

    /// The members' lists of `kind` in precedence order: kept copies, or
    /// fetched; a member that is down or cannot answer is left out.
    async fn lists(&self, req: &Request<'_>, kind: Kind) -> Vec<(usize, Arc<List>)> {
        let vs = req.vs;
        let principal = req.caller.principal.as_str();
        let each = vs.order.iter().map(|&i| async move {
            if let Some(list) = vs.catalog.get(i, kind, principal) {
                return Some((i, list));
            }
            if !vs.members[i].available() {
                return None;
            }
            match self.fetch(req, i, kind).await {
                Ok(list) => Some((i, list)),
                Err(why) => {
                    tracing::warn!(server = %vs.name, member = %vs.members[i].label(), %why, "member left out of a list");
                    None
                }
            }
        });
        join_all(each).await.into_iter().flatten().collect()
    }

    /// Reads a member's whole list (page after page) and keeps it.
    async fn fetch(&self, req: &Request<'_>, i: usize, kind: Kind) -> Result<Arc<List>, Reject> {
        let vs = req.vs;
        let generation = vs.catalog.generation(i, kind);
        let caller = Caller {
            rewrite: None,
            ..req.caller.clone()
        };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..catalog::MAX_MEMBER_PAGES {
            let params = cursor
                .as_ref()
                .map_or_else(|| json!({}), |c| json!({ "cursor": c }));
            let body = json!({"jsonrpc": "2.0", "id": "mcp-gateway", "method": kind.method(), "params": params});
            let body = Bytes::from(body.to_string());
            let rpc = jsonrpc::parse(&body)?;
            let mut got = Collect::default();
            let sub = Request {
                vs,
                body: Bytes::new(),
                rpc: Some(&rpc),
                caller: &caller,
                session: req.session,
                version: req.version,
                transport: req.transport,
            };
            self.send_to(&sub, i, body.clone(), &rpc, None, &mut got)
                .await
                .map_err(|_| Reject::BadGateway)?;
            if let Some(Reject::Member { cause, .. }) = got.refused {
                return Err(*cause);
            }
            let Some(answer) = got.answer else {
                return Err(Reject::BadGateway);
            };
            let Some(result) = jsonrpc::result_of(&answer) else {
                if unknown_method(&answer) {
                    break; // the member lists nothing of this kind
                }
                tracing::warn!(member = %vs.members[i].label(), %answer, "a member's list came back as an error");
                return Err(Reject::BadGateway);
            };
            let mut result: Map<String, Value> =
                serde_json::from_str(result).map_err(|_| Reject::BadGateway)?;
            if let Some(Value::Array(page)) = result.remove(kind.field()) {
                items.extend(page);
            }
            cursor = result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            if cursor.is_none() {
                break;
            }
        }
        let list = Arc::new(List::shown(kind, &vs.members[i].names, items));
        vs.catalog.put(
            i,
            kind,
            &req.caller.principal,
            generation,
            Arc::clone(&list),
        );
        Ok(list)
    }

    /// One message to member `i` through the exchange; its refusals name
    /// the member. `name`: the name or URI a stateless request's `Mcp-Name`
    /// carries to the member.
    async fn send_to<S: Sink>(
        &self,
        req: &Request<'_>,
        i: usize,
        body: Bytes,
        rpc: &Rpc,
        name: Option<&str>,
        sink: &mut S,
    ) -> Result<(), Failure> {
        let vs = req.vs;
        let member = &vs.members[i];
        let notice = |m: &str| vs.noticed(i, m);
        let mut msg = Message::gateway(&member.pool, body, Some(rpc), req.caller, req.transport);
        msg.notice = Some(&notice);
        if req.session.is_none() {
            msg.version = req.version;
            msg.mcp = rpc.method.as_str().map(|m| (m, name));
        }
        let mut named = Named {
            inner: sink,
            member: member.label(),
        };
        self.exchange().run(&msg, req.target(i), &mut named).await?;
        Ok(())
    }

    /// `DELETE`: every member session ends, and the client's id with them.
    pub async fn end(&self, req: &Request<'_>, down: &mut Downstream<'_>) -> Result<(), Failure> {
        let Some(session) = req.session else {
            let r = Reject::BadRequest("DELETE needs a session");
            return relay::refuse(down, &self.state.metrics, &r, None).await;
        };
        let ends = session
            .members
            .iter()
            .filter(|b| b.current().is_some())
            .map(|b| async move {
                b.close(self.upstream, req.caller).await;
            });
        join_all(ends).await;
        self.sessions
            .end_members(session.nonce, &session.members)
            .await;
        down.json(200, Bytes::new()).await
    }

    /// `GET`: one client stream carrying every member's server stream, and
    /// a `list_changed` whenever a member leaves or comes back.
    pub async fn stream(
        &self,
        req: &Request<'_>,
        down: &mut Downstream<'_>,
    ) -> Result<(), Failure> {
        let Some(session) = req.session else {
            let r = Reject::BadRequest("a stream needs a session");
            return relay::refuse(down, &self.state.metrics, &r, None).await;
        };
        let limits = self.state.limits();
        let (queue, mut rx) = Queue::new(limits.write_timeout);
        let head = queue::stream_head()?;
        down.start(head, Bytes::from_static(mcp_sse::KEEPALIVE))
            .await?;
        let members = self.feeds(req, session, queue);
        let pumped = tokio::select! {
            pumped = queue::pump(down, &mut rx, limits.sse_keepalive, |rx| rx.is_empty()) => Some(pumped),
            () = members => None,
        };
        match pumped {
            Some(pumped) => pumped,
            None => down.finish().await,
        }
    }

    /// Every member's server stream into `queue`, and a `list_changed`
    /// whenever a member leaves or returns, while the client reads.
    pub async fn feeds(&self, req: &Request<'_>, session: &Opened, queue: Queue) {
        let feeds: Vec<_> = (0..session.members.len())
            .map(|i| self.feed(req, i, queue.clone()))
            .collect();
        tokio::join!(join_all(feeds), announce(req.vs, queue));
    }

    /// Member `i`'s server stream into the client's: opened again after a
    /// loss (the exchange moves the session), waited for while the member
    /// is down; ends when the member offers no stream.
    async fn feed(&self, req: &Request<'_>, i: usize, mut queue: Queue) {
        let vs = req.vs;
        let member = &vs.members[i];
        let caller = req.caller;
        let mut changes = vs.subscribe();
        let notice = |m: &str| vs.noticed(i, m);
        loop {
            let mut msg = Message::gateway(&member.pool, Bytes::new(), None, caller, req.transport);
            msg.method = http::Method::GET;
            msg.accept = Some("text/event-stream");
            msg.content_type = None;
            msg.notice = Some(&notice);
            let ran = self.exchange().run(&msg, req.target(i), &mut queue).await;
            match ran {
                Err(_) => return,                            // the client's stream failed
                Ok(out) if out.answered.is_some() => return, // no stream offered
                Ok(_) => {}
            }
            // Refused: the member is down. Wait for it to come back.
            loop {
                match changes.recv().await {
                    Ok((m, true)) if m == i => break,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => return,
                }
            }
        }
    }
}

/// Tells an open stream that lists changed when members leave or return.
async fn announce(vs: &Virtual, queue: Queue) {
    let mut changes = vs.subscribe();
    loop {
        match changes.recv().await {
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(_) => return,
        }
        for kind in [Kind::Tools, Kind::Prompts, Kind::Resources] {
            let note = json!({"jsonrpc": "2.0", "method": kind.changed()}).to_string();
            if queue.deliver(queue::message(&note)).await.is_err() {
                return;
            }
        }
    }
}

/// The client's sink for one member's exchange: the gateway speaks for the
/// client (the client's headers — its session id, its `Mcp-Name` — are not
/// the member's), and a refusal names the member.
struct Named<'s, S> {
    inner: &'s mut S,
    member: &'s str,
}

impl<S: Sink> Sink for Named<'_, S> {
    fn client_headers(&self) -> Option<&HeaderMap> {
        None
    }

    async fn relay(&mut self, answer: Answer<'_>) -> Result<Seen, Failure> {
        self.inner.relay(answer).await
    }

    async fn write_refusal(
        &mut self,
        reject: &Reject,
        id: Option<&RawValue>,
    ) -> Result<(), Failure> {
        let named = Reject::Member {
            member: self.member.to_owned(),
            cause: Box::new(reject.clone()),
        };
        self.inner.write_refusal(&named, id).await
    }

    async fn finish(&mut self) -> Result<(), Failure> {
        self.inner.finish().await
    }

    async fn reply(&mut self, answer: Option<Bytes>, session: Option<&str>) -> Result<(), Failure> {
        self.inner.reply(answer, session).await
    }
}

/// Whether an answer is a JSON-RPC "method not found" error.
fn unknown_method(answer: &str) -> bool {
    serde_json::from_str::<Value>(answer).is_ok_and(|v| v["error"]["code"].as_i64() == Some(-32601))
}

/// A JSON-RPC response with `result` (to the gateway's own id when the request had none).
fn response(id: Option<&RawValue>, result: Value) -> Bytes {
    jsonrpc::result_body(id.map_or(OWN_ID, RawValue::get), &result)
}

async fn reply<S: Sink>(sink: &mut S, id: Option<&RawValue>, result: Value) -> Result<(), Failure> {
    sink.reply(Some(response(id, result)), None).await
}

/// A string at `path` inside the message's `params`.
fn param(body: &[u8], path: &[&str]) -> Option<String> {
    #[derive(Deserialize)]
    struct Msg {
        params: Option<Value>,
    }
    let msg: Msg = serde_json::from_slice(body).ok()?;
    let mut at = msg.params.as_ref()?;
    for key in path {
        at = at.get(key)?;
    }
    at.as_str().map(str::to_owned)
}

/// The message with the string at `path` set to `value`.
fn with_param(body: &[u8], path: &[&str], value: &str) -> Option<Bytes> {
    let mut msg: Value = serde_json::from_slice(body).ok()?;
    let (last, parents) = path.split_last()?;
    let mut at = &mut msg;
    for key in parents {
        at = at.get_mut(key)?;
    }
    at.as_object_mut()?.insert((*last).to_owned(), value.into());
    Some(Bytes::from(msg.to_string()))
}

/// The gateway's `initialize` result for members' results: capabilities
/// united (a flag is on when any member's is), the revision the client
/// asked when every member settled on it (else the oldest they did), each
/// member's instructions under its name.
fn united(name: &str, asked: Option<&str>, results: &[(&Member, &Value)]) -> Value {
    let mut capabilities = Map::new();
    let mut versions = Vec::new();
    let mut instructions = Vec::new();
    for (member, result) in results {
        if let Some(Value::Object(c)) = result.get("capabilities") {
            unite(&mut capabilities, c);
        }
        if let Some(v) = result.get("protocolVersion").and_then(Value::as_str) {
            versions.push(v);
        }
        if let Some(text) = result.get("instructions").and_then(Value::as_str) {
            let prefix = &member.names.prefix;
            let who = if prefix.is_empty() {
                String::new()
            } else {
                format!(" (names start with {prefix})")
            };
            instructions.push(format!("[{}{who}] {text}", member.label()));
        }
    }
    // The gateway tells clients when members' lists change.
    for kind in ["tools", "prompts", "resources"] {
        if let Some(Value::Object(c)) = capabilities.get_mut(kind) {
            c.insert("listChanged".into(), true.into());
        }
    }
    let version = match asked {
        Some(a) if versions.iter().all(|v| *v == a) => a.to_owned(),
        _ => versions.iter().min().map_or_else(
            || jsonrpc::ASSUMED_PROTOCOL_VERSION.to_owned(),
            |v| (*v).to_owned(),
        ),
    };
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": capabilities,
        "serverInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
    });
    if !instructions.is_empty() {
        result["instructions"] = instructions.join("\n\n").into();
    }
    result
}

/// Adds `from`'s capabilities to `into`: objects merged key by key, a
/// boolean on when either is.
fn unite(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => unite(a, b),
            (Some(Value::Bool(a)), Value::Bool(b)) => *a |= *b,
            (Some(_), _) => {}
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_read_and_set_at_their_path_and_nothing_else_changes() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"completion/complete","params":{"ref":{"type":"ref/prompt","name":"ev_greet"},"argument":{"name":"a","value":"b"}}}"#;
        assert_eq!(param(body, &["ref", "name"]).as_deref(), Some("ev_greet"));
        let set = with_param(body, &["params", "ref", "name"], "greet").unwrap();
        let v: Value = serde_json::from_slice(&set).unwrap();
        assert_eq!(v["params"]["ref"]["name"], "greet");
        assert_eq!(v["params"]["argument"]["name"], "a");
        assert_eq!(v["id"], 7);
        assert_eq!(param(b"{\"params\":{}}", &["cursor"]), None);
    }

    #[test]
    fn capabilities_unite_flags_on_when_any_member_has_them() {
        let mut into = serde_json::from_str::<Map<String, Value>>(
            r#"{"tools":{"listChanged":false},"logging":{}}"#,
        )
        .unwrap();
        let from = serde_json::from_str::<Map<String, Value>>(
            r#"{"tools":{"listChanged":true},"resources":{"subscribe":true}}"#,
        )
        .unwrap();
        unite(&mut into, &from);
        assert_eq!(into["tools"]["listChanged"], true);
        assert_eq!(into["resources"]["subscribe"], true);
        assert!(into.contains_key("logging"));
    }
}
