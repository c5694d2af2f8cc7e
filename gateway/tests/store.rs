//! The shared store's key layer against a real `redis-server` (installed by
//! tests/run.sh, started here on a free port): the GCRA script's answers at
//! a limit's boundary, all-or-nothing across a request's limits, a batch
//! taking a cell per message and per tool call, ended
//! session ids with the id's remaining life as TTL, and a spray of 100,000
//! distinct principals through the policy's own `Shared::check`, which
//! leaves only keys with a TTL no longer than their limit window, and
//! nothing once the windows have passed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use mcp_gateway::cluster::{Ask, Store, Verdict};
use mcp_gateway::config::{Cluster, Config};
use mcp_gateway::policy::auth::{Credential, Principal};
use mcp_gateway::policy::limits::{Call, Limiters};
use mcp_gateway::policy::shared::Shared;
use mcp_gateway::reject::Reject;

struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (tests/run.sh installs it)");
        let redis = Redis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis.query::<String>(&["PING"]).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
    }

    fn used_memory(&self) -> u64 {
        let info: String = self.query(&["INFO", "memory"]).expect("INFO");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("used_memory")
    }

    /// Keys with no TTL, and the longest TTL (ms) of those that have one.
    fn ttls(&self) -> (i64, i64) {
        let script = "local none, most = 0, 0 \
            for _, k in ipairs(redis.call('KEYS', '*')) do \
              local t = redis.call('PTTL', k) \
              if t < 0 then none = none + 1 elseif t > most then most = t end \
            end return {none, most}";
        self.query(&["EVAL", script, "0"]).expect("EVAL")
    }
}

/// A store on `redis`, watched until it is up.
async fn store(redis: &Redis) -> Arc<Store> {
    let cluster = Cluster {
        store: Some(redis.url()),
        store_recheck: Duration::from_millis(50),
        store_timeout: Duration::from_millis(500),
        ..Cluster::default()
    };
    let store = Store::new(&cluster)
        .unwrap()
        .expect("a store is configured");
    let watched = Arc::clone(&store);
    tokio::spawn(async move { watched.watch().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.is_up() {
        assert!(Instant::now() < deadline, "the store never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
}

fn ask(key: &str, interval: Duration, burst: u32) -> Ask {
    Ask::new(
        "t:",
        "rq",
        &[key],
        interval,
        burst,
        "requests per principal",
    )
}

#[tokio::test]
async fn a_limit_lets_its_burst_through_then_refuses_with_the_wait_and_writes_nothing_when_refused()
{
    let redis = Redis::start();
    let store = store(&redis).await;
    let slow = ask("a", Duration::from_secs(10), 3);
    for i in 0..3 {
        let v = store.check(std::slice::from_ref(&slow), None).await;
        assert_eq!(v, Ok(Verdict::Allowed), "cell {i}");
    }
    match store.check(std::slice::from_ref(&slow), None).await {
        Ok(Verdict::Limited { index: 0, wait }) => {
            assert!(
                wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
                "{wait:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A request refused by one of its limits spends none of the others.
    let other = ask("b", Duration::from_secs(10), 1);
    let both = [other.clone(), slow.clone()];
    assert!(matches!(
        store.check(&both, None).await,
        Ok(Verdict::Limited { index: 1, .. })
    ));
    assert_eq!(store.check(&[other], None).await, Ok(Verdict::Allowed));
    let (none, most) = redis.ttls();
    assert_eq!(none, 0, "every key has a TTL");
    assert!(most <= 30_000, "at most burst x interval: {most} ms");
}

#[tokio::test]
async fn an_ended_session_is_ended_for_its_remaining_life() {
    let redis = Redis::start();
    let store = store(&redis).await;
    let (ended, open) = ([7u8; 12], [8u8; 12]);
    store
        .end_session(&ended, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(store.check(&[], Some(&ended)).await, Ok(Verdict::Ended));
    assert_eq!(store.check(&[], Some(&open)).await, Ok(Verdict::Allowed));
    let ttl: i64 = redis
        .query(&["TTL", &format!("mcp-gateway:end:{}", "07".repeat(12))])
        .unwrap();
    assert!((85..=90).contains(&ttl), "{ttl}");
}

fn named(name: &str, tier: &str) -> Principal {
    Principal {
        name: name.into(),
        credential: Credential::ApiKey,
        subject: name.into(),
        tier: tier.into(),
        scopes: vec![],
    }
}

#[tokio::test]
async fn a_batch_takes_a_cell_per_message_and_per_tool_call_it_holds() {
    let redis = Redis::start();
    let store = store(&redis).await;
    let config: Config = toml::from_str(
        "[limits.tiers.default]\nrequests_per_second = 5\nburst = 5\n\
         [limits.tiers.big]\nrequests_per_second = 1000\ntool_limits = { get_agent = 3 }\n",
    )
    .unwrap();
    let limits = Limiters::new(&config.limits.tiers, &config.limits.global);
    let shared = Shared::new(Arc::clone(&store), &config);
    let check = |who: &'static Principal, messages: u32, tools: &'static [(&'static str, bool)]| {
        let (shared, limits) = (&shared, &limits);
        async move {
            let key: Arc<str> = Arc::from(who.name.as_str());
            let call = Call {
                who,
                key: &key,
                ip: None,
                messages,
                tools,
                new_session: false,
            };
            shared.check(limits, &call, None).await
        }
    };
    let limited = |r: Result<(), Reject>| match r {
        Err(Reject::RateLimited { what, .. }) => what,
        other => panic!("not rate limited: {other:?}"),
    };
    // Five messages in one batch are the burst of five requests.
    let a: &'static Principal = Box::leak(Box::new(named("key:a", "default")));
    assert!(check(a, 5, &[]).await.is_ok());
    assert_eq!(limited(check(a, 1, &[]).await), "requests per principal");
    // Two calls of a tool in a batch, then one more: its 3 a minute.
    let b: &'static Principal = Box::leak(Box::new(named("key:b", "big")));
    const TWICE: &[(&str, bool)] = &[("get_agent", true), ("get_agent", true)];
    assert!(check(b, 3, TWICE).await.is_ok());
    assert!(check(b, 1, &TWICE[..1]).await.is_ok());
    let refused = limited(check(b, 1, &TWICE[..1]).await);
    assert_eq!(refused, "calls of this tool per principal");
}

fn principal(i: u32) -> Principal {
    Principal {
        name: format!("jwt:https://issuer.test:spray-{i}"),
        credential: Credential::Jwt,
        subject: format!("spray-{i}"),
        tier: "default".into(),
        scopes: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_of_100k_principals_leaves_only_keys_that_expire_with_their_window() {
    let redis = Redis::start();
    let store = store(&redis).await;
    let before = redis.used_memory();
    let config: Config = toml::from_str(
        "[limits.tiers.default]\nrequests_per_second = 5\nburst = 5\nsessions_per_minute = 600\n",
    )
    .unwrap();
    let limits = Limiters::new(&config.limits.tiers, &config.limits.global);
    let shared = Arc::new(Shared::new(Arc::clone(&store), &config));
    let n = 100_000u32;
    let started = Instant::now();
    let refused = futures::stream::iter(0..n)
        .map(|i| {
            let (shared, limits) = (Arc::clone(&shared), Arc::clone(&limits));
            async move {
                let who = principal(i);
                let key: Arc<str> = Arc::from(who.name.as_str());
                let call = Call {
                    who: &who,
                    key: &key,
                    ip: None,
                    messages: 1,
                    tools: &[],
                    new_session: i % 10 == 0,
                };
                shared.check(&limits, &call, None).await
            }
        })
        .buffer_unordered(64)
        .filter(|r| std::future::ready(r.is_err()))
        .collect::<Vec<Result<(), Reject>>>()
        .await;
    let took = started.elapsed();
    assert!(refused.is_empty(), "{:?}", &refused[..refused.len().min(3)]);
    assert!(store.is_up(), "the store stayed up through the spray");
    let keys: i64 = redis.query(&["DBSIZE"]).unwrap();
    let (none, most) = redis.ttls();
    let during = redis.used_memory();
    eprintln!(
        "spray: {n} principals in {took:?}; {keys} keys, longest TTL {most} ms, memory {before} -> {during} B"
    );
    assert_eq!(none, 0, "a key without a TTL");
    // requests: burst 5 at 5/s (1 s); sessions: 1 cell of 600/min (100 ms)
    assert!(most <= 1_000, "TTL beyond the limit window: {most} ms");
    assert!(keys <= i64::from(n + n / 10), "{keys} keys");
    assert!(during - before < 64 << 20, "{} MB", (during - before) >> 20);
    // Once the windows have passed, nothing is left.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys: i64 = redis.query(&["DBSIZE"]).unwrap();
        if keys == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{keys} keys left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = redis.used_memory();
    assert!(after < before + (4 << 20), "{before} -> {after} B");
}
