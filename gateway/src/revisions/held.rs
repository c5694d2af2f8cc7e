//! The backend sessions the gateway holds to carry stateless requests to
//! servers that speak only sessions: a bounded set, reused, one per pool ×
//! principal × declared client capabilities × slot (a principal's
//! requests spread over up to [`SLOTS`] sessions, each opened where the
//! pool's pick puts it). A session never serves another principal, nor a
//! request whose client declared other capabilities. It is opened by the
//! exchange on first use (a [`Binding`] with no link moves before anything
//! is sent: `initialize` and `notifications/initialized` with the
//! principal), moved under the failover rules when its backend is lost,
//! and ended with `DELETE` once idle for [`IDLE`] or evicted and no request
//! or paused call still holds it.

use std::cell::Cell;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::policy::jsonrpc;
use crate::pool::Pool;
use crate::pool::revision::Revision;
use crate::session::{Binding, Caller};
use crate::upstream::Upstream;

/// Most sessions held at once (all pools and principals).
pub const MAX_HELD: u64 = 4096;
/// A held session unused this long is ended.
pub const IDLE: Duration = Duration::from_secs(120);
/// Most sessions one principal × capabilities holds per pool.
pub const SLOTS: usize = 4;

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    pool: u16,
    principal: String,
    capabilities: u64,
    slot: u8,
}

/// One held backend session and who it is for. The session ends (DELETE)
/// when the last user lets go — the table, a request under way, a paused
/// call — never while one still holds it.
pub struct Holding {
    pub binding: Binding,
    pub caller: Caller,
    upstream: Arc<Upstream>,
}

impl Drop for Holding {
    fn drop(&mut self) {
        if self.binding.current().is_none() {
            return; // never opened
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = Arc::clone(&self.binding.pool);
        let binding = std::mem::replace(
            &mut self.binding,
            Binding::new(pool, String::new(), None, None),
        );
        let (caller, upstream) = (self.caller.clone(), Arc::clone(&self.upstream));
        rt.spawn(async move { binding.close(&upstream, &caller).await });
    }
}

pub struct Held {
    sessions: moka::sync::Cache<Key, Arc<Holding>>,
    upstream: Arc<Upstream>,
}

/// What a 2026-07-28 request declares about its client (`params._meta`).
#[derive(Deserialize, Default)]
struct Declared<'a> {
    #[serde(borrow, rename = "io.modelcontextprotocol/clientCapabilities")]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientInfo")]
    info: Option<&'a RawValue>,
}

fn declared(body: &[u8]) -> Declared<'_> {
    #[derive(Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        params: Option<Params<'a>>,
    }
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "_meta")]
        meta: Option<Declared<'a>>,
    }
    serde_json::from_slice::<Msg<'_>>(body)
        .ok()
        .and_then(|m| m.params)
        .and_then(|p| p.meta)
        .unwrap_or_default()
}

thread_local! {
    static TURN: Cell<usize> = const { Cell::new(0) };
}

impl Held {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        let sessions = moka::sync::Cache::builder()
            .max_capacity(MAX_HELD)
            .time_to_idle(IDLE)
            .build();
        Self { sessions, upstream }
    }

    /// Ends the sessions idle too long now (moka evicts only when used).
    pub fn tidy(&self) {
        self.sessions.run_pending_tasks();
    }

    /// The session that carries this request of `caller` to `pool` (whose
    /// servers speak `rev`): one of the principal's held sessions for the
    /// capabilities the request declares, made now if there is none.
    pub fn session(
        &self,
        pool: &Arc<Pool>,
        rev: &Revision,
        caller: &Caller,
        body: &[u8],
    ) -> Arc<Holding> {
        let declared = declared(body);
        let capabilities = declared.capabilities.map_or("{}", RawValue::get);
        let mut hash = DefaultHasher::new();
        capabilities.hash(&mut hash);
        let members = pool.members.load().list.len().clamp(1, SLOTS);
        let slot = TURN.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % members
        });
        let key = Key {
            pool: pool.index,
            principal: caller.principal.clone(),
            capabilities: hash.finish(),
            slot: slot as u8,
        };
        self.sessions.get_with(key, || {
            let version = rev
                .session_version()
                .unwrap_or(jsonrpc::ASSUMED_PROTOCOL_VERSION);
            let info = declared
                .info
                .map_or(r#"{"name":"mcp-gateway","version":"1"}"#, RawValue::get);
            let init = format!(
                r#"{{"protocolVersion":"{version}","capabilities":{capabilities},"clientInfo":{info}}}"#
            );
            Arc::new(Holding {
                // No nonce: this replica alone holds it; no link: it opens on first use.
                binding: Binding::new(Arc::clone(pool), init, None, None),
                caller: caller.clone(),
                upstream: Arc::clone(&self.upstream),
            })
        })
    }

    /// Sessions held now (for the metrics).
    pub fn count(&self) -> u64 {
        self.sessions.run_pending_tasks();
        self.sessions.entry_count()
    }
}
