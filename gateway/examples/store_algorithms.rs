//! The two ways to hold one limit across replicas, side by side against a
//! real `redis-server` (started here on a free port): (1) GCRA evaluated
//! atomically in Redis on every request that passed the local limits (what
//! the gateway does: `cluster::Store::check`, the gateway's own code), and
//! (2) quota leased to each replica in batches (a replica takes `batch`
//! cells at once from the same GCRA key and spends them locally, a lease
//! lapsing after `lease_ttl`). Each simulated replica has its own
//! connection and the local governor limiter in front, as in the gateway.
//!
//! Three traffic shapes for one principal over N replicas: under the limit
//! (every replica offered a quarter of it), steady overload (every replica
//! offered twice the whole limit), and idle then a spike (a
//! request per replica, then, while the leases it took are still good and
//! the bucket has refilled, a burst at all of them at once). Printed: what
//! was admitted against the exact GCRA bound (burst + rate × time), the
//! most admitted in any 100 ms window against burst + rate × 0.1 s,
//! store calls per offered request, the decision's p50/p99 for requests
//! that reached the shared layer, and CPU per offered request in this
//! process and in redis-server.
//!
//!   cargo run --release -p mcp-gateway --example store_algorithms [-- REPLICAS BATCH]

use std::num::NonZeroU32;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use mcp_gateway::cluster::{Ask, Store, Verdict};
use mcp_gateway::config::Cluster;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

const RATE: u32 = 50;
const BURST: u32 = 50;
const LEASE_TTL: Duration = Duration::from_secs(1);

/// A batch of cells at once (or one, if the batch does not fit): the lease.
const LEASE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
for _, w in ipairs({want, 1}) do
  local after = tat + interval * w
  if after - now <= tolerance then
    redis.call('SET', KEYS[1], string.format('%.0f', after), 'PX', math.ceil((after - now) / 1000))
    return w
  end
end
return 0
"#;

enum Shared {
    Gcra(Arc<Store>),
    Lease {
        conn: MultiplexedConnection,
        script: redis::Script,
        /// Cells in hand, and until when they may be spent.
        held: Mutex<(u32, Instant)>,
        batch: u32,
    },
}

struct Replica {
    local: DefaultDirectRateLimiter,
    shared: Shared,
    calls: AtomicU64,
}

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(RATE).unwrap()).allow_burst(NonZeroU32::new(BURST).unwrap())
}

fn ask() -> Ask {
    Ask::new(
        "bench:",
        "rq",
        &["p"],
        quota().replenish_interval(),
        BURST,
        "requests",
    )
}

impl Replica {
    /// One request: admitted or not, and the shared layer's time (if reached).
    async fn decide(&self) -> (bool, Option<Duration>) {
        if self.local.check().is_err() {
            return (false, None);
        }
        let started = Instant::now();
        let admitted = match &self.shared {
            Shared::Gcra(store) => {
                self.calls.fetch_add(1, Relaxed);
                store.check(&[ask()], None).await == Ok(Verdict::Allowed)
            }
            Shared::Lease {
                conn,
                script,
                held,
                batch,
            } => {
                let mut held = held.lock().await;
                if held.0 > 0 && Instant::now() < held.1 {
                    held.0 -= 1;
                    true
                } else {
                    self.calls.fetch_add(1, Relaxed);
                    let a = ask();
                    let got: u32 = script
                        .key(&a.key)
                        .arg(a.interval_us)
                        .arg(a.interval_us * u64::from(a.burst))
                        .arg(*batch)
                        .invoke_async(&mut conn.clone())
                        .await
                        .unwrap_or(0);
                    *held = (got.saturating_sub(1), Instant::now() + LEASE_TTL);
                    got > 0
                }
            }
        };
        (admitted, Some(started.elapsed()))
    }
}

struct Redis(Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Redis {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a port")
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (apt-get install redis-server)");
    std::thread::sleep(Duration::from_millis(300));
    Redis(child, port)
}

/// CPU seconds of this process, and of another by pid.
fn cpu_self() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn cpu_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    // utime and stime are fields 14 and 15 (11 and 12 after the name), in ticks
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

async fn replicas(redis: &Redis, n: usize, batch: Option<u32>) -> Vec<Arc<Replica>> {
    let url = format!("redis://127.0.0.1:{}/0", redis.1);
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let shared = match batch {
            None => {
                let cluster = Cluster {
                    store: Some(url.clone()),
                    store_recheck: Duration::from_millis(50),
                    ..Cluster::default()
                };
                let store = Store::new(&cluster).unwrap().unwrap();
                let watched = Arc::clone(&store);
                tokio::spawn(async move { watched.watch().await });
                while !store.is_up() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Shared::Gcra(store)
            }
            Some(batch) => Shared::Lease {
                conn: client.get_multiplexed_async_connection().await.unwrap(),
                script: redis::Script::new(LEASE),
                held: Mutex::new((0, Instant::now())),
                batch,
            },
        };
        out.push(Arc::new(Replica {
            local: RateLimiter::direct(quota()),
            shared,
            calls: AtomicU64::new(0),
        }));
    }
    out
}

/// What one run saw: (seconds since start, admitted, shared-layer time).
type Seen = Vec<(f64, bool, Option<Duration>)>;

/// Each replica offered `per_sec` requests a second for `secs` (open loop).
async fn steady(reps: &[Arc<Replica>], per_sec: u32, secs: f64) -> Seen {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for r in reps {
        let r = Arc::clone(r);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_sec)));
            let mut seen = Vec::new();
            let mut pending = Vec::new();
            while start.elapsed().as_secs_f64() < secs {
                tick.tick().await;
                let r = Arc::clone(&r);
                pending.push(tokio::spawn(async move {
                    let at = start.elapsed().as_secs_f64();
                    let (ok, took) = r.decide().await;
                    (at, ok, took)
                }));
            }
            for p in pending {
                seen.push(p.await.unwrap());
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// One request per replica, a pause, then `burst` at every replica at once.
async fn spike(reps: &[Arc<Replica>], burst: usize) -> Seen {
    let start = Instant::now();
    let mut all = Vec::new();
    for r in reps {
        let (ok, took) = r.decide().await;
        all.push((start.elapsed().as_secs_f64(), ok, took));
    }
    // The leases taken by those requests are still good; the bucket has refilled.
    tokio::time::sleep(LEASE_TTL - Duration::from_millis(100)).await;
    let mut tasks = Vec::new();
    for r in reps {
        for _ in 0..burst {
            let r = Arc::clone(r);
            tasks.push(tokio::spawn(async move {
                let (ok, took) = r.decide().await;
                (start.elapsed().as_secs_f64(), ok, took)
            }));
        }
    }
    for t in tasks {
        all.push(t.await.unwrap());
    }
    all
}

fn report(name: &str, seen: &Seen, reps: &[Arc<Replica>], cpu: (f64, f64)) {
    let secs = seen.iter().map(|s| s.0).fold(0.0, f64::max);
    let admitted = seen.iter().filter(|s| s.1).count();
    let bound = f64::from(BURST) + f64::from(RATE) * secs;
    // the most admitted in any 100 ms window starting at an admitted request
    let mut at: Vec<f64> = seen.iter().filter(|s| s.1).map(|s| s.0).collect();
    at.sort_by(f64::total_cmp);
    let window = (0..at.len())
        .map(|i| at[i..].iter().take_while(|t| **t < at[i] + 0.1).count())
        .max()
        .unwrap_or(0);
    let mut lat: Vec<Duration> = seen.iter().filter_map(|s| s.2).collect();
    lat.sort();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    let calls: u64 = reps.iter().map(|r| r.calls.load(Relaxed)).sum();
    let n = seen.len() as f64;
    println!(
        "{name:<26} {:>7} {admitted:>8} {bound:>7.0} {:>+9.0} {window:>9} {:>8.0} {:>11.3} {:>8.0} {:>8.0} {:>9.1} {:>9.1}",
        seen.len(),
        admitted as f64 - bound,
        f64::from(BURST) + f64::from(RATE) * 0.1,
        calls as f64 / n,
        pct(0.5).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        cpu.0 * 1e6 / n,
        cpu.1 * 1e6 / n,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let n = args.first().copied().unwrap_or(3) as usize;
    let batch = args.get(1).copied().unwrap_or(10);
    let redis = start_redis();
    println!(
        "one principal, limit {RATE}/s burst {BURST}, {n} replicas (each its own connection, local limit in front), lease batch {batch}, lease TTL {LEASE_TTL:?}"
    );
    println!(
        "{:<26} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8} {:>11} {:>8} {:>8} {:>9} {:>9}",
        "run",
        "offered",
        "admitted",
        "bound",
        "over",
        "max/100ms",
        "bound",
        "calls/req",
        "p50 µs",
        "p99 µs",
        "CPU µs/req",
        "redis µs/req"
    );
    for (name, lease) in [("gcra-per-request", None), ("lease", Some(batch))] {
        for shape in ["under the limit", "steady overload", "idle then spike"] {
            let reps = replicas(&redis, n, lease).await;
            let (c0, r0) = (cpu_self(), cpu_of(redis.0.id()));
            let seen = match shape {
                "under the limit" => steady(&reps, RATE / 4, 5.0).await,
                "steady overload" => steady(&reps, 2 * RATE, 5.0).await,
                _ => spike(&reps, 2 * BURST as usize).await,
            };
            let cpu = (cpu_self() - c0, cpu_of(redis.0.id()) - r0);
            report(&format!("{name}, {shape}"), &seen, &reps, cpu);
        }
    }
}
