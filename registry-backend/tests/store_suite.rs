//! One behavioural suite, run against both stores: the embedded SQLite file
//! and MongoDB (a real wire-protocol server, SecantusDB, started per run).

use std::sync::Arc;

use registry_backend::model::{
    Agent, AgentFilter, AgentPatch, Cursor, FactsInput, PageRequest, build_facts, facts_url,
};
use registry_backend::store::mongo::Transactions;
use registry_backend::store::{AgentStore, MongoStore, SqliteStore, StoreError};

fn agent(id: &str, caps: &[&str], domain: &str, description: &str) -> Agent {
    Agent {
        agent_id: id.into(),
        agent_url: format!("http://127.0.0.1:7000/{id}"),
        agent_facts_url: facts_url(id),
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        domain: domain.into(),
        specialization: "general".into(),
        description: description.into(),
        status: "active".into(),
        created_at: "2026-11-24T00:00:00.000Z".into(),
        updated_at: None,
    }
}

fn facts(a: &Agent) -> serde_json::Value {
    build_facts(
        a,
        &FactsInput {
            modalities: vec!["text".into()],
            languages: vec!["en".into(), "fr".into()],
            streaming: false,
            batch: true,
        },
    )
}

async fn insert(store: &dyn AgentStore, a: Agent) {
    store.insert(&a, &facts(&a)).await.expect("insert");
}

fn all() -> PageRequest {
    PageRequest {
        after: None,
        limit: 1000,
    }
}

async fn ids(store: &dyn AgentStore, filter: AgentFilter) -> Vec<String> {
    store
        .list(&filter, &all())
        .await
        .expect("list")
        .agents
        .into_iter()
        .map(|a| a.agent_id)
        .collect()
}

fn caps(c: &[&str]) -> AgentFilter {
    AgentFilter {
        capabilities: c.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn query(q: &str) -> AgentFilter {
    AgentFilter {
        query: Some(q.to_lowercase()),
        ..Default::default()
    }
}

async fn suite(store: Arc<dyn AgentStore>) {
    let s = store.as_ref();
    s.ping().await.expect("ping");

    // insert / get / duplicate
    insert(
        s,
        agent(
            "weather-bot",
            &["chat", "forecast"],
            "weather",
            "Forecasts the WEATHER",
        ),
    )
    .await;
    insert(
        s,
        agent(
            "code.reviewer",
            &["code_review"],
            "software",
            "Reviews pull requests",
        ),
    )
    .await;
    insert(
        s,
        agent(
            "chef:1",
            &["chat", "recipes"],
            "cooking",
            "Cooks with a.b*c flair",
        ),
    )
    .await;
    let got = s.get("weather-bot").await.unwrap().expect("stored");
    assert_eq!(got.capabilities, vec!["chat", "forecast"]);
    assert!(s.get("nope").await.unwrap().is_none());
    let dup = agent("weather-bot", &["x"], "y", "z");
    assert!(matches!(
        s.insert(&dup, &facts(&dup)).await,
        Err(StoreError::AlreadyExists)
    ));
    // the failed duplicate changed nothing
    assert_eq!(
        s.get("weather-bot").await.unwrap().unwrap().domain,
        "weather"
    );
    assert_eq!(
        s.facts("weather_bot").await.unwrap().unwrap()["description"],
        "Forecasts the WEATHER"
    );

    // facts by username (dashes → underscores) and by agent name
    let f = s
        .facts("weather_bot")
        .await
        .unwrap()
        .expect("facts by username");
    assert_eq!(f["agent_name"], "weather-bot");
    assert_eq!(f["skills"].as_array().unwrap().len(), 2);
    assert!(s.facts("weather-bot").await.unwrap().is_some());
    assert!(s.facts("nobody").await.unwrap().is_none());

    // filters
    assert_eq!(
        ids(s, AgentFilter::default()).await,
        vec!["chef:1", "code.reviewer", "weather-bot"]
    );
    assert_eq!(ids(s, caps(&["chat"])).await, vec!["chef:1", "weather-bot"]);
    assert_eq!(
        ids(s, caps(&["recipes", "code_review"])).await,
        vec!["chef:1", "code.reviewer"]
    );
    assert!(ids(s, caps(&["teleport"])).await.is_empty());
    let domain = AgentFilter {
        domain: Some("software".into()),
        ..Default::default()
    };
    assert_eq!(ids(s, domain).await, vec!["code.reviewer"]);
    assert_eq!(ids(s, query("WeAtHeR")).await, vec!["weather-bot"]);
    assert_eq!(ids(s, query("pull req")).await, vec!["code.reviewer"]);
    assert_eq!(ids(s, query("7000/chef")).await, vec!["chef:1"]); // url
    // regex metacharacters are plain text
    assert_eq!(ids(s, query("a.b*c")).await, vec!["chef:1"]);
    assert!(ids(s, query(".*")).await.is_empty());
    assert!(ids(s, query("(")).await.is_empty());
    let combined = AgentFilter {
        capabilities: vec!["chat".into()],
        domain: Some("cooking".into()),
        query: Some("flair".into()),
        status: Some("active".into()),
    };
    assert_eq!(ids(s, combined).await, vec!["chef:1"]);

    // update, and facts follow
    let patch = AgentPatch {
        agent_url: Some("https://example.test/a2a".into()),
        capabilities: Some(vec!["chat".into(), "alerts".into(), "radar".into()]),
        status: Some("inactive".into()),
        ..Default::default()
    };
    let updated = s
        .update("weather-bot", &patch, "2026-11-24T01:00:00.000Z")
        .await
        .unwrap()
        .expect("updated");
    assert_eq!(updated.agent_url, "https://example.test/a2a");
    assert_eq!(
        updated.updated_at.as_deref(),
        Some("2026-11-24T01:00:00.000Z")
    );
    assert_eq!(updated.domain, "weather"); // untouched
    assert_eq!(s.get("weather-bot").await.unwrap().unwrap(), updated);
    let f = s.facts("weather_bot").await.unwrap().unwrap();
    assert_eq!(f["skills"].as_array().unwrap().len(), 3);
    assert_eq!(
        f["skills"][0]["supportedLanguages"],
        serde_json::json!(["en", "fr"])
    );
    assert_eq!(ids(s, caps(&["radar"])).await, vec!["weather-bot"]);
    assert!(ids(s, caps(&["forecast"])).await.is_empty());
    let inactive = AgentFilter {
        status: Some("inactive".into()),
        ..Default::default()
    };
    assert_eq!(ids(s, inactive).await, vec!["weather-bot"]);
    assert!(s.update("ghost", &patch, "t").await.unwrap().is_none());

    // delete removes the agent and its facts
    assert!(s.delete("chef:1").await.unwrap());
    assert!(!s.delete("chef:1").await.unwrap());
    assert!(s.get("chef:1").await.unwrap().is_none());
    assert!(s.facts("chef:1").await.unwrap().is_none());

    // pagination: 250 agents in pages of 100, no gaps, no repeats
    for i in 0..250 {
        insert(s, agent(&format!("bulk-{i:04}"), &["bulk"], "bulk", "")).await;
    }
    let filter = caps(&["bulk"]);
    let mut seen = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = s
            .list(
                &filter,
                &PageRequest {
                    after: after.clone(),
                    limit: 100,
                },
            )
            .await
            .unwrap();
        pages += 1;
        seen.extend(page.agents.iter().map(|a| a.agent_id.clone()));
        match page.next_cursor {
            Some(c) => after = Cursor::decode(&c),
            None => break,
        }
        assert!(pages < 10, "pagination does not terminate");
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..250).map(|i| format!("bulk-{i:04}")).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("registry.db")).unwrap();
    suite(Arc::new(store)).await;
}

#[tokio::test]
async fn mongodb_store_passes_the_suite() {
    let mongo = e2e::Mongo::start().expect("SecantusDB must be installed (README test command)");
    let store = MongoStore::connect(&mongo.uri, "suite_test", Transactions::Auto)
        .await
        .unwrap();
    suite(Arc::new(store)).await;
    let compensated = MongoStore::connect(&mongo.uri, "suite_test_plain", Transactions::Off)
        .await
        .unwrap();
    suite(Arc::new(compensated)).await;
}

#[tokio::test]
async fn two_sqlite_handles_on_one_file_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    insert(&a, agent("from-a", &["chat"], "general", "")).await;
    insert(&b, agent("from-b", &["chat"], "general", "")).await;
    assert!(b.get("from-a").await.unwrap().is_some());
    assert!(a.get("from-b").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_ping_fails_when_the_file_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.db");
    let store = SqliteStore::open(&path).unwrap();
    store.ping().await.unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        store.ping().await,
        Err(StoreError::Unavailable(_))
    ));
}

// ---- the promises of store/mod.rs, on every store ---------------------------

/// Every store under test: SQLite, MongoDB with transactions, MongoDB with
/// ordered, compensated writes (the same SecantusDB server, one database each).
async fn every_store(
    tag: &str,
    dir: &tempfile::TempDir,
    mongo: &e2e::Mongo,
) -> Vec<(&'static str, Arc<dyn AgentStore>)> {
    let txn = MongoStore::connect(&mongo.uri, &format!("{tag}_txn"), Transactions::On)
        .await
        .expect("SecantusDB runs transactions");
    assert!(txn.uses_transactions());
    let plain = MongoStore::connect(&mongo.uri, &format!("{tag}_plain"), Transactions::Off)
        .await
        .unwrap();
    assert!(!plain.uses_transactions());
    vec![
        (
            "sqlite",
            Arc::new(SqliteStore::open(dir.path().join(format!("{tag}.db"))).unwrap()),
        ),
        ("mongodb+transactions", Arc::new(txn)),
        ("mongodb+compensation", Arc::new(plain)),
    ]
}

fn mongo() -> e2e::Mongo {
    e2e::Mongo::start().expect("SecantusDB must be installed (README test command)")
}

#[tokio::test]
async fn a_look_alike_id_cannot_take_another_agents_facts() {
    let (dir, mongo) = (tempfile::tempdir().unwrap(), mongo());
    for (name, store) in every_store("clash", &dir, &mongo).await {
        let s = store.as_ref();
        insert(s, agent("agent-1", &["chat"], "a", "the first agent")).await;
        let twin = agent("agent_1", &["chat"], "b", "the look-alike");
        match s.insert(&twin, &facts(&twin)).await {
            Err(e @ StoreError::FactsNameTaken { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("agent_1") && msg.contains("agent-1"),
                    "{name}: {msg}"
                );
            }
            other => panic!("{name}: expected a facts clash, got {other:?}"),
        }
        assert!(
            s.get("agent_1").await.unwrap().is_none(),
            "{name}: nothing written"
        );
        let f = s.facts("agent_1").await.unwrap().expect("facts");
        assert_eq!(
            f["agent_name"], "agent-1",
            "{name}: facts still the first agent's"
        );
        assert_eq!(f["endpoints"]["static"][0], "http://127.0.0.1:7000/agent-1");
        // and the id itself resolves to its own facts, never the other's
        assert_eq!(
            s.facts("agent-1").await.unwrap().unwrap()["agent_name"],
            "agent-1"
        );
    }
}

#[tokio::test]
async fn concurrent_updates_of_different_fields_both_survive() {
    let (dir, mongo) = (tempfile::tempdir().unwrap(), mongo());
    for (name, store) in every_store("lost", &dir, &mongo).await {
        insert(store.as_ref(), agent("busy", &["chat"], "orig", "orig")).await;
        for round in 0..25 {
            let (a, b) = (Arc::clone(&store), Arc::clone(&store));
            let desc = AgentPatch {
                description: Some(format!("d{round}")),
                ..Default::default()
            };
            let domain = AgentPatch {
                domain: Some(format!("m{round}")),
                ..Default::default()
            };
            let (x, y) = tokio::join!(
                tokio::spawn(async move { a.update("busy", &desc, "t").await }),
                tokio::spawn(async move { b.update("busy", &domain, "t").await })
            );
            x.unwrap().unwrap().expect("updated");
            y.unwrap().unwrap().expect("updated");
            let now = store.get("busy").await.unwrap().unwrap();
            assert_eq!(
                now.description,
                format!("d{round}"),
                "{name}: round {round} lost the description"
            );
            assert_eq!(
                now.domain,
                format!("m{round}"),
                "{name}: round {round} lost the domain"
            );
            let f = store.facts("busy").await.unwrap().unwrap();
            assert_eq!(
                f["description"],
                format!("d{round}"),
                "{name}: facts follow the last update"
            );
        }
    }
}

#[tokio::test]
async fn an_update_racing_a_delete_leaves_no_orphan_facts() {
    let (dir, mongo) = (tempfile::tempdir().unwrap(), mongo());
    for (name, store) in every_store("race", &dir, &mongo).await {
        for i in 0..30 {
            let id = format!("doomed-{i}");
            insert(store.as_ref(), agent(&id, &["chat"], "x", "x")).await;
            let (a, b, id2) = (Arc::clone(&store), Arc::clone(&store), id.clone());
            let patch = AgentPatch {
                description: Some("changed".into()),
                ..Default::default()
            };
            let (u, d) = tokio::join!(
                tokio::spawn(async move { a.update(&id2, &patch, "t").await }),
                tokio::spawn(async move { b.delete(&id).await })
            );
            u.unwrap().unwrap();
            assert!(d.unwrap().unwrap(), "{name}: the delete found the agent");
            let id = format!("doomed-{i}");
            assert!(
                store.get(&id).await.unwrap().is_none(),
                "{name}: deleted stays deleted"
            );
            assert!(
                store.facts(&id).await.unwrap().is_none(),
                "{name}: no orphan facts for {id}"
            );
        }
    }
}

#[tokio::test]
async fn a_failure_between_two_writes_leaves_nothing_half_written() {
    let (dir, mongo) = (tempfile::tempdir().unwrap(), mongo());
    for (name, store) in every_store("fault", &dir, &mongo).await {
        let s = store.as_ref();
        // insert: neither the agent nor its facts
        let a = agent("faulty", &["chat"], "x", "before");
        s.faults().arm();
        assert!(
            s.insert(&a, &facts(&a)).await.is_err(),
            "{name}: insert failed"
        );
        assert!(s.get("faulty").await.unwrap().is_none(), "{name}: no agent");
        assert!(
            s.facts("faulty").await.unwrap().is_none(),
            "{name}: no facts"
        );
        insert(s, a).await;
        // update: agent and facts as they were
        s.faults().arm();
        let patch = AgentPatch {
            description: Some("after".into()),
            ..Default::default()
        };
        assert!(
            s.update("faulty", &patch, "t").await.is_err(),
            "{name}: update failed"
        );
        assert_eq!(
            s.get("faulty").await.unwrap().unwrap().description,
            "before",
            "{name}"
        );
        assert_eq!(
            s.facts("faulty").await.unwrap().unwrap()["description"],
            "before",
            "{name}"
        );
        // and a later update still works (no stale revision left behind)
        let done = s.update("faulty", &patch, "t").await.unwrap().unwrap();
        assert_eq!(done.description, "after", "{name}");
        // delete: both still there
        s.faults().arm();
        assert!(s.delete("faulty").await.is_err(), "{name}: delete failed");
        assert!(
            s.get("faulty").await.unwrap().is_some(),
            "{name}: agent kept"
        );
        assert!(
            s.facts("faulty").await.unwrap().is_some(),
            "{name}: facts kept"
        );
        assert!(s.delete("faulty").await.unwrap(), "{name}");
        assert!(s.facts("faulty").await.unwrap().is_none(), "{name}");
    }
}
