//! What one request asks of the shared store, and the Lua script that
//! answers it in one round trip.
//!
//! Each [`Ask`] is one GCRA limit (governor's algorithm, the same one the
//! local limiters run) as a key, the emission interval and the burst. The
//! script reads every asked key, decides with Redis's own clock (`TIME`,
//! so replicas' clocks never matter), and either refuses — naming the
//! limit that waits longest and how long, writing nothing — or moves every
//! key's theoretical arrival time (TAT) on. A key's TTL is the time until
//! its bucket is full again: past it the key is worth nothing and Redis
//! drops it, so keys live only as long as their limit window. A session
//! id's "ended" key, when asked, is checked first.

use std::time::Duration;

/// One GCRA limit of one request in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// The whole key (prefix included).
    pub key: String,
    /// Microseconds between two cells (1 / rate).
    pub interval_us: u64,
    /// Cells that may go at once.
    pub burst: u32,
    /// Cells this request takes (a batch: one per message it counts).
    pub cells: u32,
    /// The limit's name in a refusal ("requests per principal").
    pub what: &'static str,
}

impl Ask {
    /// `prefix` + `kind` + ':' + the parts, separated by a byte no name
    /// carries (0x1f), so ("a:b", "c") and ("a", "b:c") stay two keys.
    pub fn new(
        prefix: &str,
        kind: &str,
        parts: &[&str],
        interval: Duration,
        burst: u32,
        what: &'static str,
    ) -> Self {
        let mut key = String::with_capacity(
            prefix.len() + kind.len() + 1 + parts.iter().map(|p| p.len() + 1).sum::<usize>(),
        );
        key.push_str(prefix);
        key.push_str(kind);
        key.push(':');
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                key.push('\u{1f}');
            }
            key.push_str(p);
        }
        Self {
            key,
            interval_us: (interval.as_micros() as u64).max(1),
            burst: burst.max(1),
            cells: 1,
            what,
        }
    }

    /// The same limit, taking `cells` cells at once.
    pub fn taking(self, cells: u32) -> Self {
        Self {
            cells: cells.max(1),
            ..self
        }
    }
}

/// The store's answer to one request's asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// `asks[index]` refused; its next cell comes in `wait`.
    Limited {
        index: usize,
        wait: Duration,
    },
    /// The session id was ended (DELETE) on some replica.
    Ended,
}

impl Verdict {
    /// From the script's `{index, wait_us}` (index 0: allowed; -1: ended).
    pub fn from_reply(reply: (i64, i64)) -> Self {
        match reply {
            (-1, _) => Verdict::Ended,
            (i, wait) if i > 0 => Verdict::Limited {
                index: (i - 1) as usize,
                wait: Duration::from_micros(wait.max(0) as u64),
            },
            _ => Verdict::Allowed,
        }
    }
}

/// KEYS: the asked limits' keys, then (if `ARGV[1]` < #KEYS) the session's
/// ended key. ARGV: the number of limits, then per limit the time its
/// cells move the TAT on (interval × cells) and its tolerance (burst ×
/// interval), in microseconds. Returns
/// `{0, 0}` allowed, `{i, wait_us}` refused by limit i (1-based), `{-1, 0}`
/// ended. Numbers are written with `%.0f` (Lua's default `%.14g` would
/// round microsecond timestamps).
pub const SCRIPT: &str = r#"
local n = tonumber(ARGV[1])
if #KEYS > n and redis.call('EXISTS', KEYS[n + 1]) == 1 then
  return {-1, 0}
end
if n == 0 then
  return {0, 0}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
local worst, wait = 0, 0
for i = 1, n do
  local interval = tonumber(ARGV[2 * i])
  local tolerance = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then
    tat = now
  end
  local after = tat + interval
  local over = after - now - tolerance
  if over > wait then
    worst, wait = i, over
  end
  tats[i] = after
end
if worst > 0 then
  return {worst, wait}
end
for i = 1, n do
  local ttl = math.ceil((tats[i] - now) / 1000)
  redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', ttl)
end
return {0, 0}
"#;

/// The key recording that a session id was ended.
pub fn ended_key(prefix: &str, nonce: &[u8; 12]) -> String {
    let mut key = String::with_capacity(prefix.len() + 4 + 24);
    key.push_str(prefix);
    key.push_str("end:");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in nonce {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 15)]));
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_parts_apart_and_replies_read_back() {
        let a = Ask::new("p:", "tl", &["a:b", "c"], Duration::from_secs(1), 5, "x");
        let b = Ask::new("p:", "tl", &["a", "b:c"], Duration::from_secs(1), 5, "x");
        assert_ne!(a.key, b.key);
        assert_eq!(a.interval_us, 1_000_000);
        let fast = Ask::new("p:", "rq", &["k"], Duration::from_nanos(10), 0, "x");
        assert_eq!((fast.interval_us, fast.burst), (1, 1), "never zero");
        assert_eq!(Verdict::from_reply((0, 0)), Verdict::Allowed);
        assert_eq!(Verdict::from_reply((-1, 0)), Verdict::Ended);
        assert_eq!(
            Verdict::from_reply((2, 1500)),
            Verdict::Limited {
                index: 1,
                wait: Duration::from_micros(1500)
            }
        );
        assert_eq!(
            ended_key("p:", &[0xab; 12]),
            format!("p:end:{}", "ab".repeat(12))
        );
    }
}
