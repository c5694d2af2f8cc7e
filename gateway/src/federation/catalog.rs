//! The lists of a virtual server: each member's `tools/list`,
//! `prompts/list`, `resources/list` and `resources/templates/list` as
//! clients see them (names mapped), kept per member, kind and principal
//! (a member may list differently for different principals) so that a
//! warm list reaches no backend. Bounded: entries weigh their bytes, the
//! table holds at most [`MAX_BYTES`], least recently used out first; each
//! lives `list_ttl`; a member's `list_changed` (or its leaving or
//! returning) bumps the member's generation for the kind and older entries
//! are never served again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::names::Names;
use crate::policy::jsonrpc::Method;

/// Bytes of lists one virtual server keeps.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Items per page of a merged list.
pub const PAGE: usize = 100;
/// Pages of one member's list read before the rest is left out.
pub const MAX_MEMBER_PAGES: usize = 50;

/// What is listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Tools, Kind::Prompts, Kind::Resources, Kind::Templates];

    /// The list a request asks for.
    pub fn of(method: &Method) -> Option<Kind> {
        match method {
            Method::ToolsList => Some(Kind::Tools),
            Method::PromptsList => Some(Kind::Prompts),
            Method::ResourcesList => Some(Kind::Resources),
            Method::ResourceTemplatesList => Some(Kind::Templates),
            _ => None,
        }
    }

    pub fn method(self) -> &'static str {
        match self {
            Kind::Tools => "tools/list",
            Kind::Prompts => "prompts/list",
            Kind::Resources => "resources/list",
            Kind::Templates => "resources/templates/list",
        }
    }

    /// The result's field holding the items.
    pub fn field(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }

    /// The notification that says it changed.
    pub fn changed(self) -> &'static str {
        match self {
            Kind::Tools => "notifications/tools/list_changed",
            Kind::Prompts => "notifications/prompts/list_changed",
            Kind::Resources | Kind::Templates => "notifications/resources/list_changed",
        }
    }

    /// The kinds a server notification says changed.
    pub fn changed_by(method: &str) -> &'static [Kind] {
        match method {
            "notifications/tools/list_changed" => &[Kind::Tools],
            "notifications/prompts/list_changed" => &[Kind::Prompts],
            "notifications/resources/list_changed" => &[Kind::Resources, Kind::Templates],
            _ => &[],
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// What names an item (a tool's or prompt's name, a resource's URI, a
    /// template's URI template).
    pub fn key(self) -> &'static str {
        match self {
            Kind::Tools | Kind::Prompts => "name",
            Kind::Resources => "uri",
            Kind::Templates => "uriTemplate",
        }
    }
}

/// One member's list as clients see it: each item's JSON as it is sent,
/// and its key (name, URI or URI template).
#[derive(Debug, Default)]
pub struct List {
    pub keys: Vec<String>,
    raw: Vec<Box<RawValue>>,
    bytes: usize,
}

impl List {
    /// The member's own items, names mapped and curated (`names`); items
    /// without their key are dropped.
    pub fn shown(kind: Kind, names: &Names, raw: Vec<Value>) -> Self {
        let mut list = Self::default();
        for mut item in raw {
            let Some(obj) = item.as_object_mut() else {
                continue;
            };
            if matches!(kind, Kind::Tools | Kind::Prompts) && !rename(obj, names) {
                continue;
            }
            let Some(key) = obj.get(kind.key()).and_then(Value::as_str) else {
                continue;
            };
            let key = key.to_owned();
            let Ok(raw) = serde_json::value::to_raw_value(&item) else {
                continue;
            };
            list.bytes += raw.get().len() + key.len();
            list.keys.push(key);
            list.raw.push(raw);
        }
        list
    }

    /// Whether it lists `key` (a name or a URI).
    pub fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|k| k == key)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A tool's or prompt's name and description as clients see them; `false`: hidden.
fn rename(obj: &mut Map<String, Value>, names: &Names) -> bool {
    let Some(own) = obj.get("name").and_then(Value::as_str).map(str::to_owned) else {
        return false;
    };
    let Some(shown) = names.shown(&own) else {
        return false;
    };
    if let Some(text) = names.description(&own) {
        obj.insert("description".into(), text.into());
    }
    obj.insert("name".into(), shown.into());
    true
}

type Key = (u16, Kind, Arc<str>);

/// The lists of one virtual server's members.
pub struct Catalog {
    lists: moka::sync::Cache<Key, (u64, Arc<List>)>,
    /// Per member, per kind: bumped when the member's list is known to change.
    generations: Vec<[AtomicU64; 4]>,
}

impl Catalog {
    pub fn new(members: usize, ttl: Duration) -> Self {
        let lists = moka::sync::Cache::builder()
            .max_capacity(MAX_BYTES)
            .weigher(|_k: &Key, v: &(u64, Arc<List>)| {
                u32::try_from(v.1.bytes + 64).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl.max(Duration::from_millis(1)))
            .build();
        Self {
            lists,
            generations: (0..members).map(|_| Default::default()).collect(),
        }
    }

    /// The member's generation for `kind` (read before a list is fetched).
    pub fn generation(&self, member: usize, kind: Kind) -> u64 {
        self.generations
            .get(member)
            .map_or(0, |g| g[kind.index()].load(Ordering::Acquire))
    }

    /// A member's list for a principal, if one is kept and still current.
    pub fn get(&self, member: usize, kind: Kind, principal: &str) -> Option<Arc<List>> {
        let key = (member as u16, kind, Arc::from(principal));
        let (generation, list) = self.lists.get(&key)?;
        (generation == self.generation(member, kind)).then_some(list)
    }

    /// Keeps a list fetched when the member's generation was `generation`.
    pub fn put(
        &self,
        member: usize,
        kind: Kind,
        principal: &str,
        generation: u64,
        list: Arc<List>,
    ) {
        if generation != self.generation(member, kind) {
            return; // it changed while it was read
        }
        let key = (member as u16, kind, Arc::from(principal));
        self.lists.insert(key, (generation, list));
    }

    /// The member's list of `kind` changed: no kept copy is served again.
    pub fn invalidate(&self, member: usize, kind: Kind) {
        if let Some(g) = self.generations.get(member) {
            g[kind.index()].fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Merges members' lists, given in precedence order: an item whose key an
/// earlier member already listed is left out (it is shadowed).
pub fn merge(lists: &[Arc<List>]) -> Vec<&RawValue> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for list in lists {
        for (key, raw) in list.keys.iter().zip(&list.raw) {
            if seen.insert(key.as_str()) {
                out.push(&**raw);
            }
        }
    }
    out
}

const CURSOR_TAG: &str = "fed1:";

/// The cursor of the page starting at `offset`.
pub fn cursor(offset: usize) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{CURSOR_TAG}{offset}"))
}

/// The offset a cursor stands for; `None`: not one of ours.
pub fn offset(cursor: &str) -> Option<usize> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix(CURSOR_TAG)?
        .parse()
        .ok()
}

/// One page of a merged list, as a JSON-RPC response to `id` (the items'
/// JSON copied as kept, not parsed again).
pub fn page(kind: Kind, items: &[&RawValue], from: usize, id: &str) -> String {
    let end = (from + PAGE).min(items.len());
    let slice = items.get(from..end).unwrap_or_default();
    let size: usize = slice.iter().map(|r| r.get().len() + 1).sum();
    let mut out = String::with_capacity(64 + size);
    out.push_str(r#"{"jsonrpc":"2.0","id":"#);
    out.push_str(id);
    out.push_str(r#","result":{""#);
    out.push_str(kind.field());
    out.push_str(r#"":["#);
    for (n, item) in slice.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(item.get());
    }
    out.push(']');
    if end < items.len() {
        out.push_str(r#","nextCursor":""#);
        out.push_str(&cursor(end));
        out.push('"');
    }
    out.push_str("}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemberConfig;
    use serde_json::json;

    fn names(prefix: &str) -> Names {
        Names::new(&MemberConfig {
            pool: "p".into(),
            prefix: prefix.into(),
            allow: None,
            rename: Default::default(),
            describe: Default::default(),
        })
    }

    #[test]
    fn merged_lists_keep_precedence_drop_shadowed_names_and_page_with_our_cursors() {
        let a = List::shown(
            Kind::Tools,
            &names("a_"),
            vec![json!({"name": "x"}), json!({"name": "y"})],
        );
        let b = List::shown(
            Kind::Tools,
            &names(""),
            vec![
                json!({"name": "a_x"}),
                json!({"name": "z"}),
                json!({"nameless": 1}),
            ],
        );
        let lists = [Arc::new(a), Arc::new(b)];
        let merged = merge(&lists);
        let name = |r: &RawValue| serde_json::from_str::<Value>(r.get()).unwrap()["name"].clone();
        let shown: Vec<Value> = merged.iter().map(|r| name(r)).collect();
        assert_eq!(shown, ["a_x", "a_y", "z"]);
        let raw = (0..250).map(|i| json!({"name": format!("t{i}")})).collect();
        let all = [Arc::new(List::shown(Kind::Tools, &names(""), raw))];
        let all = merge(&all);
        let first: Value = serde_json::from_str(&page(Kind::Tools, &all, 0, "7")).unwrap();
        assert_eq!(first["id"], 7);
        assert_eq!(first["result"]["tools"].as_array().unwrap().len(), PAGE);
        assert_eq!(first["result"]["tools"][0]["name"], "t0");
        let next = offset(first["result"]["nextCursor"].as_str().unwrap()).unwrap();
        let last: Value = serde_json::from_str(&page(Kind::Tools, &all, 200, "\"x\"")).unwrap();
        assert_eq!(next, PAGE);
        assert_eq!(last["id"], "x");
        assert_eq!(last["result"]["tools"].as_array().unwrap().len(), 50);
        assert!(last["result"].get("nextCursor").is_none());
        assert_eq!(offset("bm90LW91cnM"), None, "a cursor we did not make");
    }

    #[test]
    fn a_changed_member_list_is_never_served_again_even_when_put_late() {
        let cat = Catalog::new(2, Duration::from_secs(60));
        let g = cat.generation(0, Kind::Tools);
        cat.put(0, Kind::Tools, "alice", g, Arc::new(List::default()));
        assert!(cat.get(0, Kind::Tools, "alice").is_some());
        assert!(
            cat.get(0, Kind::Tools, "bob").is_none(),
            "kept per principal"
        );
        cat.invalidate(0, Kind::Tools);
        assert!(cat.get(0, Kind::Tools, "alice").is_none());
        cat.put(0, Kind::Tools, "alice", g, Arc::new(List::default()));
        assert!(
            cat.get(0, Kind::Tools, "alice").is_none(),
            "read before the change"
        );
        assert!(cat.get(1, Kind::Tools, "alice").is_none());
    }
}
