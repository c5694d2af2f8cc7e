//! One behavioural suite, run against both stores: the embedded SQLite file
//! and MongoDB (a real wire-protocol server, SecantusDB, started per run).

use std::sync::Arc;

use registry_backend::model::{
    Agent, AgentFilter, AgentPatch, Cursor, FactsInput, PageRequest, build_facts, facts_url,
};
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
    let store = MongoStore::connect(&mongo.uri, "suite_test").await.unwrap();
    suite(Arc::new(store)).await;
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
