//! The registry backend as a real process, driven over Streamable HTTP by
//! rmcp's client and by raw HTTP where the wire itself is the point.

use std::time::Duration;

use anyhow::Result;
use e2e::{Backend, Mcp, Mongo};
use serde_json::{Value, json};

fn tempdb() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("registry.db");
    (dir, db)
}

async fn register(mcp: &Mcp, id: &str) -> Result<Value> {
    mcp.ok(
        "register_agent",
        json!({ "agent_id": id, "agent_url": format!("http://127.0.0.1:9/{id}") }),
    )
    .await
}

/// Polls the backend's `/health` until its in-flight count satisfies `ok`
/// (20 s at most; `what` says what never happened).
async fn wait_for_inflight(
    http: &reqwest::Client,
    base: &str,
    ok: impl Fn(u64) -> bool,
    what: &str,
) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body: Value = http
            .get(format!("{base}/health"))
            .send()
            .await?
            .json()
            .await?;
        if ok(body["inflight"].as_u64().unwrap_or(0)) {
            return Ok(());
        }
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn lists_the_eight_seed_tools_with_schemas_and_annotations() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &[])?;
    let mcp = Mcp::connect(&backend.url).await?;
    let tools = mcp.service.list_all_tools().await?;
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "delete_agent",
            "get_agent",
            "get_agent_facts",
            "health_check",
            "list_agents",
            "register_agent",
            "search_agents",
            "update_agent"
        ]
    );
    for tool in &tools {
        assert!(
            tool.description.as_deref().is_some_and(|d| !d.is_empty()),
            "{} has no description",
            tool.name
        );
        let annotations = tool.annotations.as_ref().expect("annotations");
        let read_only = annotations.read_only_hint == Some(true);
        let expect_read_only = matches!(
            tool.name.as_ref(),
            "list_agents" | "search_agents" | "get_agent" | "get_agent_facts" | "health_check"
        );
        assert_eq!(read_only, expect_read_only, "{} readOnlyHint", tool.name);
    }
    let delete = tools.iter().find(|t| t.name == "delete_agent").unwrap();
    assert_eq!(
        delete.annotations.as_ref().unwrap().destructive_hint,
        Some(true)
    );
    let register = tools.iter().find(|t| t.name == "register_agent").unwrap();
    let props = register.input_schema.get("properties").expect("properties");
    for p in [
        "agent_id",
        "agent_url",
        "capabilities",
        "domain",
        "specialization",
        "description",
        "modalities",
        "languages",
        "streaming",
        "batch",
    ] {
        assert!(props.get(p).is_some(), "register_agent schema lacks {p}");
    }
    let required = register
        .input_schema
        .get("required")
        .and_then(Value::as_array)
        .unwrap();
    let mut required: Vec<&str> = required.iter().filter_map(Value::as_str).collect();
    required.sort();
    assert_eq!(required, ["agent_id", "agent_url"]);
    // the health resource
    let resources = mcp.service.list_all_resources().await?;
    assert!(resources.iter().any(|r| r.uri == "health://check"));
    let read = mcp
        .service
        .read_resource(rmcp::model::ReadResourceRequestParams::new(
            "health://check",
        ))
        .await?;
    let text = serde_json::to_value(&read.contents)?.to_string();
    assert!(text.contains("Registry is healthy"), "{text}");
    mcp.close().await
}

#[tokio::test]
async fn every_tool_works_end_to_end() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &[])?;
    let mcp = Mcp::connect(&backend.url).await?;

    let reg = mcp
        .ok(
            "register_agent",
            json!({
                "agent_id": "travel-planner",
                "agent_url": "http://127.0.0.1:6001/a2a",
                "capabilities": ["travel", "booking"],
                "domain": "travel",
                "specialization": "itineraries",
                "languages": ["en", "es"],
            }),
        )
        .await?;
    assert_eq!(reg["status"], "success");
    assert_eq!(reg["agent_facts_username"], "travel_planner");
    assert_eq!(
        reg["agent"]["description"],
        "Expert itineraries agent in travel domain"
    );
    assert_eq!(reg["agent"]["status"], "active");
    // seed defaults
    let d = mcp
        .ok(
            "register_agent",
            json!({"agent_id": "defaults", "agent_url": "https://x.test"}),
        )
        .await?;
    assert_eq!(d["agent"]["capabilities"], json!(["chat"]));
    assert_eq!(d["agent"]["domain"], "general");
    assert_eq!(
        d["agent"]["description"],
        "Expert general agent in general domain"
    );

    let got = mcp
        .ok("get_agent", json!({"agent_id": "travel-planner"}))
        .await?;
    assert_eq!(got["agent_url"], "http://127.0.0.1:6001/a2a");
    assert_eq!(
        got["agentFactsURL"],
        "registry://agent_facts/travel_planner"
    );

    let facts = mcp
        .ok("get_agent_facts", json!({"username": "travel_planner"}))
        .await?;
    assert_eq!(facts["agent_name"], "travel-planner");
    assert_eq!(
        facts["skills"][0]["supportedLanguages"],
        json!(["en", "es"])
    );
    assert_eq!(
        facts["skills"][1]["description"],
        "Expert booking capability"
    );

    let list = mcp.ok("list_agents", json!({})).await?;
    assert_eq!(list["count"], 2);
    assert_eq!(list["next_cursor"], Value::Null);
    let active = mcp.ok("list_agents", json!({"status": "inactive"})).await?;
    assert_eq!(active["count"], 0);

    let found = mcp
        .ok(
            "search_agents",
            json!({"capabilities": "booking, other", "domain": "travel"}),
        )
        .await?;
    assert_eq!(found["count"], 1);
    assert_eq!(found["agents"][0]["agent_id"], "travel-planner");
    let by_text = mcp.ok("search_agents", json!({"query": "ITINER"})).await?;
    assert_eq!(by_text["count"], 1);
    let none = mcp.ok("search_agents", json!({"query": ".*"})).await?;
    assert_eq!(none["count"], 0, "query must not be a regex");
    let wrong_domain = mcp
        .ok(
            "search_agents",
            json!({"capabilities": ["booking"], "domain": "cooking"}),
        )
        .await?;
    assert_eq!(wrong_domain["count"], 0);

    let upd = mcp
        .ok(
            "update_agent",
            json!({
                "agent_id": "travel-planner",
                "agent_url": "https://travel.test/a2a",
                "capabilities": ["travel", "booking", "visa"],
                "description": "Plans trips",
                "status": "inactive",
            }),
        )
        .await?;
    assert_eq!(upd["agent"]["agent_url"], "https://travel.test/a2a");
    assert!(upd["agent"]["updated_at"].is_string());
    let inactive = mcp.ok("list_agents", json!({"status": "inactive"})).await?;
    assert_eq!(inactive["count"], 1);
    let facts = mcp
        .ok("get_agent_facts", json!({"username": "travel_planner"}))
        .await?;
    assert_eq!(facts["description"], "Plans trips");
    assert_eq!(facts["skills"].as_array().unwrap().len(), 3);

    let del = mcp
        .ok("delete_agent", json!({"agent_id": "travel-planner"}))
        .await?;
    assert_eq!(del["status"], "success");
    assert_eq!(
        mcp.err("get_agent", json!({"agent_id": "travel-planner"}))
            .await?,
        "Agent not found"
    );
    assert_eq!(
        mcp.err("get_agent_facts", json!({"username": "travel_planner"}))
            .await?,
        "Agent facts not found"
    );

    let health = mcp.ok("health_check", json!({})).await?;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["store"], "sqlite");
    mcp.close().await
}

#[tokio::test]
async fn bad_arguments_get_clear_tool_errors_and_write_nothing() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &[])?;
    let mcp = Mcp::connect(&backend.url).await?;
    register(&mcp, "taken").await?;

    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "register_agent",
            json!({"agent_id": "taken", "agent_url": "http://a.test"}),
            "Agent ID already exists",
        ),
        (
            "register_agent",
            json!({"agent_id": "", "agent_url": "http://a.test"}),
            "'agent_id'",
        ),
        (
            "register_agent",
            json!({"agent_id": "x".repeat(129), "agent_url": "http://a.test"}),
            "'agent_id'",
        ),
        (
            "register_agent",
            json!({"agent_id": "bad id/../", "agent_url": "http://a.test"}),
            "'agent_id'",
        ),
        (
            "register_agent",
            json!({"agent_id": "ok-1", "agent_url": "ftp://a.test"}),
            "'agent_url'",
        ),
        (
            "register_agent",
            json!({"agent_id": "ok-2", "agent_url": "javascript:alert(1)"}),
            "'agent_url'",
        ),
        (
            "register_agent",
            json!({"agent_id": "ok-3", "agent_url": "http://a.test", "capabilities": (0..65).map(|i| format!("c{i}")).collect::<Vec<_>>()}),
            "'capabilities'",
        ),
        (
            "register_agent",
            json!({"agent_id": "ok-4", "agent_url": "http://a.test", "description": "d".repeat(4097)}),
            "'description'",
        ),
        (
            "register_agent",
            json!({"agent_id": "ok-5", "agent_url": "http://a.test", "languages": ["en", ""]}),
            "'languages'",
        ),
        (
            "get_agent",
            json!({"agent_id": "missing"}),
            "Agent not found",
        ),
        (
            "update_agent",
            json!({"agent_id": "missing", "status": "inactive"}),
            "Agent not found",
        ),
        (
            "update_agent",
            json!({"agent_id": "taken", "agent_url": "not a url"}),
            "'agent_url'",
        ),
        (
            "update_agent",
            json!({"agent_id": "taken"}),
            "nothing to update",
        ),
        (
            "delete_agent",
            json!({"agent_id": "missing"}),
            "Agent not found",
        ),
        ("list_agents", json!({"limit": 0}), "'limit'"),
        ("list_agents", json!({"limit": 1001}), "'limit'"),
        ("list_agents", json!({"cursor": "forged!"}), "'cursor'"),
        (
            "search_agents",
            json!({"query": "q".repeat(5000)}),
            "'query'",
        ),
        ("get_agent_facts", json!({"username": ""}), "'username'"),
    ];
    for (tool, args, expect) in cases {
        let msg = mcp.err(tool, args.clone()).await?;
        assert!(
            msg.contains(expect),
            "{tool} {args}: got {msg:?}, want {expect:?}"
        );
    }
    // nothing half-written: only the one good agent exists, unchanged
    let list = mcp.ok("list_agents", json!({})).await?;
    assert_eq!(list["count"], 1);
    assert_eq!(list["agents"][0]["agent_url"], "http://127.0.0.1:9/taken");

    // wrong JSON types are protocol errors, not crashes
    let bad_type = mcp
        .service
        .call_tool(
            rmcp::model::CallToolRequestParams::new("get_agent")
                .with_arguments(json!({"agent_id": 42}).as_object().unwrap().clone()),
        )
        .await;
    // A tool error saying what is wrong with the argument; a transport
    // failure or a success would both be wrong.
    let r = bad_type.expect("a tool result, not a transport failure");
    assert_eq!(
        r.is_error,
        Some(true),
        "a numeric agent_id must be rejected"
    );
    let text = r.content[0]
        .as_text()
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert!(
        text.contains("invalid type: integer `42`, expected a string"),
        "{text}"
    );
    // the session still works afterwards
    assert_eq!(
        mcp.ok("get_agent", json!({"agent_id": "taken"})).await?["agent_id"],
        "taken"
    );
    mcp.close().await
}

#[tokio::test]
async fn pagination_walks_every_agent_once() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &[])?;
    let mcp = Mcp::connect(&backend.url).await?;
    for i in 0..230 {
        mcp.ok(
            "register_agent",
            json!({"agent_id": format!("agent-{i:03}"), "agent_url": "http://a.test", "capabilities": ["paged"]}),
        )
        .await?;
    }
    for tool in ["list_agents", "search_agents"] {
        let mut seen = Vec::new();
        let mut cursor = Value::Null;
        let mut pages = 0;
        loop {
            let mut args = json!({"limit": 100, "cursor": cursor});
            if tool == "search_agents" {
                args["capabilities"] = json!("paged");
            }
            let page = mcp.ok(tool, args).await?;
            pages += 1;
            for a in page["agents"].as_array().unwrap() {
                seen.push(a["agent_id"].as_str().unwrap().to_owned());
            }
            cursor = page["next_cursor"].clone();
            if cursor.is_null() {
                break;
            }
            assert!(pages < 10);
        }
        assert_eq!(pages, 3, "{tool}");
        let expected: Vec<String> = (0..230).map(|i| format!("agent-{i:03}")).collect();
        assert_eq!(seen, expected, "{tool}");
    }
    mcp.close().await
}

#[tokio::test]
async fn two_backends_sharing_the_embedded_store_see_each_others_writes() -> Result<()> {
    let (_dir, db) = tempdb();
    let a = Backend::embedded(&db, &["--instance", "a"])?;
    let b = Backend::embedded(&db, &["--instance", "b"])?;
    let (ma, mb) = (Mcp::connect(&a.url).await?, Mcp::connect(&b.url).await?);
    register(&ma, "written-by-a").await?;
    register(&mb, "written-by-b").await?;
    assert_eq!(
        mb.ok("get_agent", json!({"agent_id": "written-by-a"}))
            .await?["agent_id"],
        "written-by-a"
    );
    assert_eq!(
        ma.ok("get_agent", json!({"agent_id": "written-by-b"}))
            .await?["agent_id"],
        "written-by-b"
    );
    // concurrent writers on both processes: all land
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = if i % 2 == 0 {
            a.url.clone()
        } else {
            b.url.clone()
        };
        tasks.push(tokio::spawn(async move {
            let m = Mcp::connect(&url).await?;
            register(&m, &format!("concurrent-{i}")).await?;
            m.close().await
        }));
    }
    for t in tasks {
        t.await??;
    }
    let found = ma
        .ok("search_agents", json!({"query": "concurrent-"}))
        .await?;
    assert_eq!(found["count"], 20);
    assert_eq!(mb.ok("health_check", json!({})).await?["instance"], "b");
    ma.close().await?;
    mb.close().await
}

#[tokio::test]
async fn mongodb_backend_serves_the_tools() -> Result<()> {
    let mongo = Mongo::start()?;
    let backend = Backend::start(&["--mongodb-uri", &mongo.uri, "--mongodb-database", "e2e"])?;
    let mcp = Mcp::connect(&backend.url).await?;
    register(&mcp, "mongo-agent").await?;
    assert_eq!(
        mcp.err(
            "register_agent",
            json!({"agent_id": "mongo-agent", "agent_url": "http://a.test"})
        )
        .await?,
        "Agent ID already exists"
    );
    assert_eq!(
        mcp.ok("search_agents", json!({"query": "MONGO"})).await?["count"],
        1
    );
    assert_eq!(
        mcp.ok("get_agent_facts", json!({"username": "mongo_agent"}))
            .await?["agent_name"],
        "mongo-agent"
    );
    assert_eq!(mcp.ok("health_check", json!({})).await?["store"], "mongodb");
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{}/health", backend.base))
            .send()
            .await?
            .status(),
        200
    );
    // the database goes away: readiness (and /health) say so, liveness does not
    drop(mongo);
    for probe in ["health", "readyz"] {
        let r = http
            .get(format!("{}/{probe}", backend.base))
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        assert_eq!(r.status(), 503, "/{probe}");
        let body: Value = r.json().await?;
        assert_eq!(body["status"], "unhealthy", "/{probe}");
    }
    let live = http
        .get(format!("{}/livez", backend.base))
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    assert_eq!(live.status(), 200, "a store outage must not fail liveness");
    assert_eq!(live.json::<Value>().await?["status"], "alive");
    Ok(())
}

const ACCEPT: &str = "application/json, text/event-stream";

#[tokio::test]
async fn http_edges_health_stateless_and_bad_requests() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &["--instance", "edge", "--max-body-bytes", "65536"])?;
    let http = reqwest::Client::new();

    let health = http.get(format!("{}/health", backend.base)).send().await?;
    assert_eq!(health.status(), 200);
    let body: Value = health.json().await?;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["instance"], "edge");

    // stateless 2026-07-28 discovery: answered without a session
    let discover = http
        .post(&backend.url)
        .header("Accept", ACCEPT)
        .header("MCP-Protocol-Version", "2026-07-28")
        .header("Mcp-Method", "server/discover")
        .json(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "1"},
                "io.modelcontextprotocol/clientCapabilities": {}
            }}}),
        )
        .send()
        .await?;
    assert_eq!(discover.status(), 200);
    assert!(discover.headers().get("mcp-session-id").is_none());
    assert_eq!(discover.headers()["x-registry-instance"], "edge");
    let text = discover.text().await?;
    assert!(text.contains("supportedVersions"), "{text}");

    // malformed JSON
    let bad = http
        .post(&backend.url)
        .header("Accept", ACCEPT)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await?;
    assert!(
        bad.status().is_client_error(),
        "malformed JSON got {}",
        bad.status()
    );
    // oversized body
    let big = http
        .post(&backend.url)
        .header("Accept", ACCEPT)
        .header("Content-Type", "application/json")
        .body(format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
            "x".repeat(100_000)
        ))
        .send()
        .await?;
    assert_eq!(big.status(), 413);
    // unknown session id
    let forged = http
        .post(&backend.url)
        .header("Accept", ACCEPT)
        .header("Mcp-Session-Id", "not-a-session")
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
        .send()
        .await?;
    assert_eq!(forged.status(), 404);
    // a Host we were not told to accept (DNS rebinding)
    let rebind = http
        .post(&backend.url)
        .header("Host", "evil.example")
        .header("Accept", ACCEPT)
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "server/discover"}))
        .send()
        .await?;
    assert_eq!(rebind.status(), 403);
    // and it still serves afterwards
    assert_eq!(
        http.get(format!("{}/health", backend.base))
            .send()
            .await?
            .status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_finishes_the_inflight_call_and_exits_zero() -> Result<()> {
    let (_dir, db) = tempdb();
    let mut backend = Backend::embedded(&db, &["--drain-timeout", "30s"])?;
    let mcp = Mcp::connect(&backend.url).await?;
    register(&mcp, "before-drain").await?;

    // Hold the store's write lock so the next write stays in flight.
    let lock = rusqlite::Connection::open(&db)?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let url = backend.url.clone();
    let (connected_tx, connected_rx) = tokio::sync::oneshot::channel();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let inflight = tokio::spawn(async move {
        let m = Mcp::connect(&url).await?;
        let _ = connected_tx.send(());
        go_rx.await?;
        let out = register(&m, "during-drain").await;
        let _ = m.close().await;
        out
    });
    connected_rx.await?;
    let http = reqwest::Client::new();
    // The server may still hold the response bodies of earlier POSTs for a
    // moment after the client has read them; wait until nothing is counted,
    // so the next count can only be the blocked write.
    wait_for_inflight(
        &http,
        &backend.base,
        |n| n == 0,
        "earlier calls never left the in-flight count",
    )
    .await?;
    go_tx
        .send(())
        .map_err(|_| anyhow::anyhow!("in-flight task ended early"))?;
    // wait until the backend counts the call as in flight (it is blocked on our lock)
    wait_for_inflight(
        &http,
        &backend.base,
        |n| n >= 1,
        "the call never became in flight",
    )
    .await?;
    assert!(
        !inflight.is_finished(),
        "the write should be blocked on our lock"
    );

    backend.proc.signal(libc::SIGTERM);
    // draining: /health 503 and new sessions refused
    let mut saw_draining = false;
    for _ in 0..200 {
        let r = http.get(format!("{}/health", backend.base)).send().await?;
        if r.status() == 503 {
            let body: Value = r.json().await?;
            assert_eq!(body["status"], "draining");
            saw_draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(saw_draining, "/health never reported draining");
    let ready = http.get(format!("{}/readyz", backend.base)).send().await?;
    assert_eq!(ready.status(), 503, "draining is not ready");
    let live = http.get(format!("{}/livez", backend.base)).send().await?;
    assert_eq!(live.status(), 200, "a draining process is still alive");
    assert_eq!(live.json::<Value>().await?["draining"], true);
    let refused = http
        .post(&backend.url)
        .header("Accept", ACCEPT)
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "late", "version": "1"}}}))
        .send()
        .await?;
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().get("retry-after").is_some());

    // release the lock: the in-flight call completes, then the process exits 0
    lock.execute_batch("COMMIT")?;
    let result = inflight.await??;
    assert_eq!(result["status"], "success");
    let status = backend.proc.wait_exit(Duration::from_secs(20))?;
    assert!(status.success(), "exit status {status}");
    drop(mcp);
    // the write really landed
    let check = rusqlite::Connection::open(&db)?;
    let n: i64 = check.query_row(
        "SELECT count(*) FROM agents WHERE agent_id = 'during-drain'",
        [],
        |r| r.get(0),
    )?;
    assert_eq!(n, 1);
    Ok(())
}

#[tokio::test]
async fn readiness_answers_while_a_write_waits_on_the_database_lock() -> Result<()> {
    let (_dir, db) = tempdb();
    let backend = Backend::embedded(&db, &[])?;
    let mcp = Mcp::connect(&backend.url).await?;
    register(&mcp, "first").await?;

    let lock = rusqlite::Connection::open(&db)?;
    lock.execute_batch("BEGIN IMMEDIATE")?;
    let writer = Mcp::connect(&backend.url).await?;
    let blocked = tokio::spawn(async move { register(&writer, "waiting").await });
    let http = reqwest::Client::new();
    wait_for_inflight(&http, &backend.base, |n| n >= 1, "the write never started").await?;
    let live: Value = http
        .get(format!("{}/livez", backend.base))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(live["status"], "alive");
    // Every pooled connection gets a turn; none may queue behind the write
    // (a queued probe would return only after the write gave up).
    for _ in 0..8 {
        let r = http.get(format!("{}/readyz", backend.base)).send().await?;
        assert_eq!(r.status(), 200);
        assert!(!blocked.is_finished(), "the write should still be waiting");
    }
    lock.execute_batch("COMMIT")?;
    let out = blocked.await??;
    assert_eq!(out["status"], "success", "{out}");
    Ok(())
}
