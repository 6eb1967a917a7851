//! A federation of `fedmesh node` processes on 127.0.0.1, for the demo and the
//! commit benchmark: keys, a genesis, temporary data directories, processes
//! started with bootstrap addresses and killed on drop. The nodes divide the
//! machine's cores between them (`--worker-threads`, at least one each)
//! unless told otherwise (DECISIONS.md).

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use fed_mesh::genesis::{ConsensusParameters, Genesis, GenesisMember};

use crate::{Failure, control, keys};

pub(crate) struct LocalNode {
    pub(crate) key: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) socket: PathBuf,
    child: Option<Child>,
}

pub(crate) struct LocalFederation {
    /// Removed on drop, after the processes are killed.
    pub(crate) dir: tempfile::TempDir,
    pub(crate) genesis: Genesis,
    pub(crate) genesis_path: PathBuf,
    pub(crate) nodes: Vec<LocalNode>,
    extra_args: Vec<String>,
}

impl LocalFederation {
    /// Keys for `voters + others` nodes and a genesis listing the voters; nothing started.
    pub(crate) fn create(
        voters: usize,
        others: usize,
        extra_args: &[&str],
    ) -> Result<Self, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("fedmesh-local-")
            .tempdir()
            .map_err(|e| Failure::runtime(format!("temporary directory: {e}")))?;
        let mut nodes = Vec::new();
        let mut members = Vec::new();
        for i in 0..voters + others {
            let key = dir.path().join(format!("node{i}.key"));
            let identity = keys::generate(&key, false)?;
            if i < voters {
                members.push(GenesisMember {
                    identity: identity.public().clone(),
                    addresses: Vec::new(),
                });
            }
            let data = dir.path().join(format!("node{i}"));
            nodes.push(LocalNode {
                key,
                socket: data.join("control.sock"),
                data,
                child: None,
            });
        }
        let mut federation = [0u8; 32];
        getrandom::fill(&mut federation)
            .map_err(|e| Failure::runtime(format!("no OS randomness: {e}")))?;
        let genesis = Genesis {
            federation: fed_mesh::handshake::FederationId(federation),
            created_ms: 1,
            consensus: ConsensusParameters::default(),
            members,
        };
        let genesis_path = dir.path().join("genesis.toml");
        std::fs::write(&genesis_path, genesis.to_toml())
            .map_err(|e| Failure::runtime(format!("{}: {e}", genesis_path.display())))?;
        Ok(Self {
            dir,
            genesis,
            genesis_path,
            nodes,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        })
    }

    /// Starts node `i`, bootstrapping to every running node, and waits until
    /// its control socket answers.
    pub(crate) async fn start(&mut self, i: usize) -> Result<(), Failure> {
        let mut boot = Vec::new();
        for (j, n) in self.nodes.iter().enumerate() {
            if j != i && n.child.is_some() {
                let s = control::call(&n.socket, &control::ControlRequest::Status).await?;
                if let Some(a) = s["addresses"][0].as_str() {
                    boot.push(a.to_string());
                }
            }
        }
        let exe = std::env::current_exe().map_err(|e| Failure::runtime(e.to_string()))?;
        let workers = self.worker_threads();
        let node = &mut self.nodes[i];
        let log = std::fs::File::create(node.data.with_extension("log"))
            .map_err(|e| Failure::runtime(e.to_string()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("node")
            .arg("--key")
            .arg(&node.key)
            .arg("--genesis")
            .arg(&self.genesis_path)
            .arg("--data-dir")
            .arg(&node.data)
            .args(["--listen", "/ip4/127.0.0.1/tcp/0"])
            .args(&self.extra_args)
            .args(workers.map(|n| format!("--worker-threads={n}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for b in &boot {
            cmd.args(["--bootstrap", b]);
        }
        node.child = Some(
            cmd.spawn()
                .map_err(|e| Failure::runtime(format!("starting a node: {e}")))?,
        );
        for _ in 0..400 {
            if let Some(Ok(Some(status))) = node.child.as_mut().map(Child::try_wait) {
                return Err(Failure::runtime(format!(
                    "node {i} exited at start ({status}); see {}",
                    node.data.with_extension("log").display()
                )));
            }
            if control::call(&node.socket, &control::ControlRequest::Status)
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Failure::runtime(format!("node {i} did not start")))
    }

    /// Each node's share of the machine's cores (at least one), unless the
    /// extra arguments or `TOKIO_WORKER_THREADS` choose.
    fn worker_threads(&self) -> Option<usize> {
        let chosen = std::env::var_os("TOKIO_WORKER_THREADS").is_some()
            || self
                .extra_args
                .iter()
                .any(|a| a.starts_with("--worker-threads"));
        if chosen {
            return None;
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Some((cores / self.nodes.len().max(1)).clamp(1, 1024))
    }

    /// Node `i`'s process id, while it runs.
    pub(crate) fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) async fn call(
        &self,
        i: usize,
        request: &control::ControlRequest,
    ) -> Result<serde_json::Value, Failure> {
        control::call(&self.nodes[i].socket, request).await
    }

    pub(crate) async fn status(&self, i: usize) -> Result<serde_json::Value, Failure> {
        self.call(i, &control::ControlRequest::Status).await
    }

    /// The node whose replica is the primary, as running voter `asked` sees it.
    pub(crate) async fn primary(&self, asked: usize) -> Result<usize, Failure> {
        let view = self.status(asked).await?["consensus"]["view"]
            .as_u64()
            .unwrap_or(0);
        Ok((view % self.genesis.members.len() as u64) as usize)
    }
}

impl Drop for LocalFederation {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_nodes_divide_the_cores_unless_told() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let f = LocalFederation::create(4, 1, &[]).unwrap();
        if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
            assert_eq!(f.worker_threads(), Some((cores / 5).max(1)));
        }
        let f = LocalFederation::create(2, 0, &["--worker-threads=3"]).unwrap();
        assert_eq!(f.worker_threads(), None);
    }
}
