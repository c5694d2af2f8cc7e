//! Helpers for end-to-end tests: start real processes on 127.0.0.1 (the
//! registry backend, a MongoDB wire-protocol server) and talk to them with
//! real MCP clients. Every process is killed when its handle drops.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

/// Where the workspace's binaries are: `E2E_BIN_DIR`, else the profile
/// directory this test binary was built into (target/<profile>).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("E2E_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --release --workspace` first (or set E2E_BIN_DIR)",
        path.display()
    );
    path
}

/// A free TCP port on 127.0.0.1 (for servers that cannot report their own).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{addr} did not start listening within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (e.g. `libc::SIGTERM`).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a pid we own; no memory is touched.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `registry-backend`.
pub struct Backend {
    pub proc: Proc,
    /// e.g. http://127.0.0.1:40123/mcp
    pub url: String,
    pub base: String,
}

impl Backend {
    /// Starts a backend on a free port with the given extra flags and waits
    /// for the line that says where it listens.
    pub fn start(extra: &[&str]) -> Result<Self> {
        let mut child = Command::new(bin("registry-backend"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("MONGODB_URI")
            .env_remove("ATLAS_URL")
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning registry-backend")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("registry-backend listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let proc = Proc {
            child,
            name: "registry-backend".into(),
        };
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("registry-backend did not report its address"))?;
        let base = url.trim_end_matches("/mcp").to_owned();
        Ok(Self { proc, url, base })
    }

    pub fn embedded(db: &Path, extra: &[&str]) -> Result<Self> {
        let db = db.to_str().context("utf-8 path")?;
        let mut args = vec!["--db", db];
        args.extend_from_slice(extra);
        Self::start(&args)
    }
}

/// A real MongoDB wire-protocol server (SecantusDB) in memory.
pub struct Mongo {
    pub proc: Proc,
    pub uri: String,
}

/// The `secantusd-py` launcher: `SECANTUSD`, the repo's `.venv`, or PATH.
pub fn secantusd() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("SECANTUSD") {
        return Ok(PathBuf::from(p));
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let venv = repo.join(".venv/bin/secantusd-py");
    if venv.exists() {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("secantusd-py"))
                .find(|p| p.exists())
        })
        .ok_or_else(|| {
            anyhow!("secantusd-py not found: run the README test command, which installs SecantusDB into .venv")
        })
}

impl Mongo {
    /// Starts SecantusDB on a free port and waits until it answers a real
    /// `hello` over the wire protocol. A lost race for the port (another
    /// process took it first: ours exits, or someone else answers wrongly)
    /// starts again on another port.
    pub fn start() -> Result<Self> {
        let mut last = anyhow!("not started");
        for _ in 0..4 {
            let port = free_port();
            let child = Command::new(secantusd()?)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--storage-path", ":memory:", "--log-level", "WARNING"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .context("spawning secantusd-py")?;
            let mut proc = Proc {
                child,
                name: "secantusd".into(),
            };
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(status) = proc.child.try_wait()? {
                    last = anyhow!("secantusd exited with {status} (port {port} taken?)");
                    break;
                }
                match mongo_hello(addr) {
                    Ok(true) => {
                        return Ok(Self {
                            proc,
                            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
                        });
                    }
                    Ok(false) => {
                        last = anyhow!("something else answers on {addr}");
                        break;
                    }
                    Err(e) => last = e,
                }
                if Instant::now() > deadline {
                    bail!("secantusd did not answer on {addr}: {last}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = proc.wait_exit(Duration::from_millis(1));
        }
        Err(last)
    }
}

/// One `hello` over the MongoDB wire protocol (OP_MSG): `Ok(true)` when a
/// MongoDB server answers `ok: 1`, `Ok(false)` when something else answers,
/// `Err` when nothing does yet.
pub fn mongo_hello(addr: SocketAddr) -> Result<bool> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let body = bson::to_vec(&bson::doc! { "hello": 1, "$db": "admin" })?;
    const OP_MSG: i32 = 2013;
    let len = (16 + 4 + 1 + body.len()) as i32;
    let mut msg = Vec::with_capacity(len as usize);
    for v in [len, 1, 0, OP_MSG] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    msg.extend_from_slice(&0u32.to_le_bytes()); // flag bits
    msg.push(0); // section kind 0: the body document
    msg.extend_from_slice(&body);
    stream.write_all(&msg)?;
    let mut header = [0u8; 16];
    if stream.read_exact(&mut header).is_err() {
        return Ok(false);
    }
    let total = i32::from_le_bytes(header[0..4].try_into()?) as usize;
    let op = i32::from_le_bytes(header[12..16].try_into()?);
    if op != OP_MSG || !(21..16 * 1024 * 1024).contains(&total) {
        return Ok(false);
    }
    let mut rest = vec![0u8; total - 16];
    stream.read_exact(&mut rest)?;
    let reply = bson::from_slice::<bson::Document>(&rest[5..]).map_err(|e| anyhow!("{e}"))?;
    Ok(reply.get_f64("ok") == Ok(1.0) || reply.get_i32("ok") == Ok(1))
}

/// An MCP client session over Streamable HTTP (rmcp's own client).
pub struct Mcp {
    pub service: RunningService<RoleClient, ()>,
}

/// What a tool call returned: its JSON and whether it was an error.
#[derive(Debug)]
pub struct ToolOutcome {
    pub is_error: bool,
    pub json: Value,
}

impl ToolOutcome {
    pub fn message(&self) -> &str {
        self.json["message"].as_str().unwrap_or_default()
    }
}

pub fn outcome(result: CallToolResult) -> ToolOutcome {
    let json = result.structured_content.clone().unwrap_or_else(|| {
        result
            .content
            .first()
            .and_then(|c| c.as_text())
            .and_then(|t| serde_json::from_str(&t.text).ok())
            .unwrap_or(Value::Null)
    });
    ToolOutcome {
        is_error: result.is_error.unwrap_or(false),
        json,
    }
}

impl Mcp {
    pub async fn connect(url: &str) -> Result<Self> {
        let transport = StreamableHttpClientTransport::from_uri(url.to_owned());
        let service = ().serve(transport).await.context("MCP initialize")?;
        Ok(Self { service })
    }

    pub async fn call(&self, tool: &str, args: Value) -> Result<ToolOutcome> {
        let arguments = match args {
            Value::Object(map) => map,
            Value::Null => Default::default(),
            other => bail!("arguments must be an object, got {other}"),
        };
        let result = self
            .service
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments))
            .await
            .with_context(|| format!("calling {tool}"))?;
        Ok(outcome(result))
    }

    /// Calls a tool that must succeed and returns its JSON.
    pub async fn ok(&self, tool: &str, args: Value) -> Result<Value> {
        let out = self.call(tool, args).await?;
        if out.is_error {
            bail!("{tool} failed: {}", out.json);
        }
        Ok(out.json)
    }

    /// Calls a tool that must fail and returns its error message.
    pub async fn err(&self, tool: &str, args: Value) -> Result<String> {
        let out = self.call(tool, args).await?;
        if !out.is_error {
            bail!("{tool} unexpectedly succeeded: {}", out.json);
        }
        Ok(out.message().to_owned())
    }

    pub async fn close(self) -> Result<()> {
        self.service.cancel().await?;
        Ok(())
    }
}
