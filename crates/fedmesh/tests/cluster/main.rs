//! Federations of real `fedmesh node` processes on 127.0.0.1: crashes are
//! SIGKILLs of OS processes, restarts read the data directory back.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    missing_docs
)]
// A test harness of processes and sockets: blocking and clocks are its job.

mod cli;
mod commit;
mod demo;
mod web;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fedmesh")
}

/// Runs `fedmesh args…` to completion: (exit code, stdout, stderr).
pub(crate) fn fedmesh(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub(crate) struct Node {
    pub(crate) key: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) log: PathBuf,
    child: Option<Child>,
}

impl Node {
    pub(crate) fn socket(&self) -> PathBuf {
        self.data.join("control.sock")
    }

    pub(crate) fn running(&self) -> bool {
        self.child.is_some()
    }
}

/// A federation of `n` voting members, each a `fedmesh node` process.
pub(crate) struct Cluster {
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) genesis: PathBuf,
    pub(crate) nodes: Vec<Node>,
}

impl Cluster {
    /// Keys and a genesis for `n` voters (nothing started).
    pub(crate) fn new(n: usize) -> Self {
        Self::with_members(n, 0)
    }

    /// Keys for `voters + others` nodes and a genesis whose voting members
    /// are the first `voters` (nothing started).
    pub(crate) fn with_members(voters: usize, others: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        for i in 0..voters + others {
            let key = dir.path().join(format!("n{i}.key"));
            let (code, _, err) = fedmesh(&["keygen", "--out", key.to_str().unwrap()]);
            assert_eq!(code, 0, "{err}");
            members.push(format!("{}.pub", key.display()));
            nodes.push(Node {
                key,
                data: dir.path().join(format!("d{i}")),
                log: dir.path().join(format!("n{i}.log")),
                child: None,
            });
        }
        let genesis = dir.path().join("genesis.toml");
        let mut args = vec!["init", "--out", genesis.to_str().unwrap()];
        for m in &members[..voters] {
            args.extend(["--member", m.as_str()]);
        }
        let (code, _, err) = fedmesh(&args);
        assert_eq!(code, 0, "{err}");
        Self {
            _dir: dir,
            genesis,
            nodes,
        }
    }

    /// Starts node `i`, bootstrapping to every running node, and waits until
    /// its control socket answers.
    pub(crate) fn start(&mut self, i: usize) {
        self.start_with(i, &[]);
    }

    /// [`Cluster::start`] with more flags for `fedmesh node`.
    pub(crate) fn start_with(&mut self, i: usize, extra: &[&str]) {
        let mut boot = Vec::new();
        for (j, other) in self.nodes.iter().enumerate() {
            if j != i && other.running() {
                let s = status(&other.socket());
                boot.push(s["addresses"][0].as_str().unwrap().to_string());
            }
        }
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["node", "--key"])
            .arg(&node.key)
            .arg("--genesis")
            .arg(&self.genesis)
            .arg("--data-dir")
            .arg(&node.data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "warn")
            .args(extra);
        for b in &boot {
            cmd.args(["--bootstrap", b]);
        }
        let child = cmd.spawn().unwrap();
        self.nodes[i].child = Some(child);
        let socket = self.nodes[i].socket();
        wait_for(20, "the node's control socket", || {
            self.nodes[i]
                .child
                .as_mut()
                .unwrap()
                .try_wait()
                .unwrap()
                .is_none()
                && try_call(&socket, r#"{"cmd":"status"}"#).is_some()
        });
    }

    pub(crate) fn start_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.start(i);
        }
        self.wait_connected();
    }

    /// Waits until every node has a session with every other.
    pub(crate) fn wait_connected(&mut self) {
        let n = self.nodes.len();
        for node in &self.nodes {
            let socket = node.socket();
            wait_for(20, "every member connected", || {
                status(&socket)["peers"].as_u64() == Some(n as u64 - 1)
            });
        }
    }

    /// `fedmesh node` with node `i`'s key, the genesis and its data directory,
    /// then `extra`: for runs expected to fail (nothing waits for it).
    pub(crate) fn node_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let node = &self.nodes[i];
        let mut args: Vec<String> = vec![
            "node".into(),
            "--key".into(),
            node.key.display().to_string(),
            "--genesis".into(),
            self.genesis.display().to_string(),
            "--data-dir".into(),
            node.data.display().to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// A clean stop through the control socket.
    pub(crate) fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = try_call(&self.nodes[i].socket(), r#"{"cmd":"shutdown"}"#);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            c.wait().unwrap();
        }
    }

    /// The index of the node whose replica is the primary, as node `asked` sees it.
    pub(crate) fn primary(&self, asked: usize) -> usize {
        let view = status(&self.nodes[asked].socket())["consensus"]["view"]
            .as_u64()
            .unwrap();
        (view % self.nodes.len() as u64) as usize
    }

    pub(crate) fn consensus(&self, i: usize) -> serde_json::Value {
        status(&self.nodes[i].socket())["consensus"].clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// One control request; `None` if the node cannot be reached.
pub(crate) fn try_call(socket: &Path, line: &str) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

pub(crate) fn status(socket: &Path) -> serde_json::Value {
    let v = try_call(socket, r#"{"cmd":"status"}"#).expect("the node answers");
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

/// Commits `data` through the node at `socket`: its ledger index, or the error.
pub(crate) fn commit(socket: &Path, data: &[u8]) -> Result<u64, String> {
    let line = format!(
        r#"{{"cmd":"commit","kind":"test","data":"{}"}}"#,
        hex::encode(data)
    );
    let v = try_call(socket, &line).ok_or("unreachable")?;
    if v["ok"] == true {
        Ok(v["result"]["index"].as_u64().unwrap())
    } else {
        Err(v["error"].to_string())
    }
}

pub(crate) fn wait_for(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for: {what}");
}
