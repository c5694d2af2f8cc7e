//! Starting one stdio server process: the operator's command with exactly
//! the environment the configuration names (plus `PATH` and `HOME`, which
//! most commands need to start), in a process group of its own (so the
//! whole group can be ended), with `PR_SET_PDEATHSIG` (it gets SIGTERM if
//! the gateway dies), stdin/stdout/stderr piped to the host.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::config::{PROCESS_DIR, StdioConfig};

/// Variables of the gateway's environment every child gets (commands such
/// as `npx` or `uvx` do not start without them).
const START_ENV: &[&str] = &["PATH", "HOME"];

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(
        "pool {pool}: env_from {name} names {var}, which is not set in the gateway's environment"
    )]
    MissingVar {
        pool: String,
        name: String,
        var: String,
    },
}

/// How to start a pool's processes, settled once at start.
pub struct Launch {
    command: String,
    args: Vec<String>,
    /// The whole environment of a child (values from `env_from` included).
    env: Vec<(String, String)>,
    cwd: Option<PathBuf>,
    /// Where the processes' own directories go, when the command uses one.
    dirs: Option<PathBuf>,
}

/// A started process, and its own directory, if it has one.
pub struct Started {
    pub child: Child,
    pub dir: Option<PathBuf>,
}

impl Launch {
    pub fn new(pool: &str, cfg: &StdioConfig) -> Result<Self, LaunchError> {
        let mut env: Vec<(String, String)> = START_ENV
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        let mut set = |k: &str, v: String| {
            env.retain(|(name, _)| name != k);
            env.push((k.to_owned(), v));
        };
        for (k, v) in &cfg.env {
            set(k, v.clone());
        }
        for (k, var) in &cfg.env_from {
            let v = std::env::var(var).map_err(|_| LaunchError::MissingVar {
                pool: pool.to_owned(),
                name: k.clone(),
                var: var.clone(),
            })?;
            set(k, v);
        }
        let uses_dir = cfg.args.iter().any(|a| a.contains(PROCESS_DIR))
            || cfg.env.values().any(|v| v.contains(PROCESS_DIR))
            || cfg
                .cwd
                .as_ref()
                .is_some_and(|c| c.to_string_lossy().contains(PROCESS_DIR));
        let safe: String = pool
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dirs = uses_dir.then(|| {
            std::env::temp_dir()
                .join(format!("mcp-gateway-{}", std::process::id()))
                .join(safe)
        });
        Ok(Self {
            command: cfg.command.clone(),
            args: cfg.args.clone(),
            env,
            cwd: cfg.cwd.clone(),
            dirs,
        })
    }

    /// Starts process number `slot`.
    pub fn start(&self, slot: u64) -> std::io::Result<Started> {
        let dir = match &self.dirs {
            Some(root) => Some(own_dir(root, slot)?),
            None => None,
        };
        let fill = |s: &str| match &dir {
            Some(d) => s.replace(PROCESS_DIR, &d.to_string_lossy()),
            None => s.to_owned(),
        };
        let mut cmd = Command::new(&self.command);
        cmd.args(self.args.iter().map(|a| fill(a)))
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, fill(v))))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(fill(&cwd.to_string_lossy()));
        }
        // SAFETY: prctl only sets a flag on the child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => Ok(Started { child, dir }),
            Err(e) => {
                if let Some(d) = &dir {
                    let _ = std::fs::remove_dir_all(d);
                }
                Err(e)
            }
        }
    }
}

/// A fresh directory only this process's user may enter.
fn own_dir(root: &Path, slot: u64) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)?;
    let dir = root.join(slot.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> StdioConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn the_child_gets_only_what_the_config_names_and_secrets_come_from_variables() {
        // SAFETY: test-only variables no other test reads.
        unsafe {
            std::env::set_var("STDIO_SPAWN_TEST_SECRET", "s3cret");
            std::env::set_var("STDIO_SPAWN_TEST_OTHER", "not for the child");
        }
        let c = config(
            r#"command = "x"
               env = { MODE = "test", PATH = "/opt/bin" }
               env_from = { TOKEN = "STDIO_SPAWN_TEST_SECRET" }"#,
        );
        let l = Launch::new("p", &c).unwrap();
        let get = |k: &str| l.env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("TOKEN"), Some("s3cret"));
        assert_eq!(get("MODE"), Some("test"));
        assert_eq!(
            get("PATH"),
            Some("/opt/bin"),
            "the file wins over the start set"
        );
        assert_eq!(get("STDIO_SPAWN_TEST_OTHER"), None);
        let missing = config(
            r#"command = "x"
            env_from = { TOKEN = "STDIO_SPAWN_TEST_UNSET" }"#,
        );
        let err = Launch::new("p", &missing).err().unwrap().to_string();
        assert!(
            err.contains("STDIO_SPAWN_TEST_UNSET") && err.contains("pool p"),
            "{err}"
        );
    }
}
