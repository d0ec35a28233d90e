//! Replicas as `modelship serve` child processes on loopback ports, each in
//! a process group of its own (so a Ctrl-C to the control plane does not
//! reach them) and a cgroup when the machine allows. They outlive the
//! control plane: a restarted one adopts them by process id.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use modelship_types::{Replica, ReplicaState, Target};
use tokio::process::{Child, Command};

use crate::{
    Cgroups, Liveness, Orchestrator, OrchestratorError, ReplicaSpec, now_ms, ready, serve_args,
    serve_env,
};

/// How long a readiness check may take before the replica counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Marks a replica process with the one who started it (its log path,
/// which is under the control plane's data directory), so a control plane
/// finds the replicas it has no record of ([`Orchestrator::reap`]).
const OWNER_VAR: &str = "MODELSHIP_REPLICA";

pub struct Local {
    /// The `modelship` binary replicas run.
    exe: PathBuf,
    logs: PathBuf,
    cgroups: Cgroups,
    /// Replicas this process started, kept to reap them when they exit.
    /// Adopted ones (started by an earlier control plane) are not here.
    children: Mutex<HashMap<String, Child>>,
}

impl Local {
    /// Replicas run `exe serve …` and write their output under `logs`.
    pub fn new(exe: PathBuf, logs: PathBuf, cgroups: Cgroups) -> std::io::Result<Local> {
        std::fs::create_dir_all(&logs)?;
        Ok(Local {
            exe,
            logs,
            cgroups,
            children: Mutex::new(HashMap::new()),
        })
    }

    fn children(&self) -> std::sync::MutexGuard<'_, HashMap<String, Child>> {
        self.children.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spawn(&self, spec: &ReplicaSpec, port: u16) -> std::io::Result<Child> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{}.log", spec.id)))?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(serve_args(
            &spec.artifact.to_string_lossy(),
            "127.0.0.1",
            port,
            spec,
        ))
        // The replica's key is the one the gateway sends (none when the
        // gateway has no keys), never one this process inherited.
        .env_remove("MODELSHIP_API_KEY")
        .envs(serve_env(spec))
        .env(OWNER_VAR, self.owner_mark(&spec.id))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(false);
        cmd.spawn()
    }

    /// The value of [`OWNER_VAR`] for replica `id`.
    fn owner_mark(&self, id: &str) -> String {
        self.logs.join(id).to_string_lossy().into_owned()
    }

    /// Processes marked as replicas of this data directory: (pid, id).
    fn marked() -> impl Iterator<Item = (u32, Vec<u8>)> {
        let procs = std::fs::read_dir("/proc").into_iter().flatten().flatten();
        procs.filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let prefix = format!("{OWNER_VAR}=");
            let mark = environ
                .split(|&b| b == 0)
                .find_map(|var| var.strip_prefix(prefix.as_bytes()))?;
            Some((pid, mark.to_vec()))
        })
    }

    /// Is `pid` (not our child) a live `modelship serve` on `endpoint`'s port?
    fn adopted_alive(pid: u32, endpoint: &str) -> bool {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let port = endpoint.rsplit(':').next().unwrap_or_default().as_bytes();
        // Guards against a reused pid: same command and port.
        let ours = args.contains(&b"serve".as_slice()) && args.contains(&port);
        let zombie = std::fs::read_to_string(proc.join("stat"))
            .ok()
            .and_then(|s| {
                s.rsplit(')')
                    .next()
                    .map(|rest| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(true);
        ours && !zombie
    }

    fn alive(&self, replica: &Replica) -> bool {
        let Some(pid) = replica.pid else { return false };
        let mut children = self.children();
        match children.get_mut(&replica.id) {
            Some(child) => match child.try_wait() {
                Ok(None) => true,
                _ => {
                    children.remove(&replica.id);
                    self.cgroups.remove(&replica.id);
                    false
                }
            },
            None => Self::adopted_alive(pid, &replica.endpoint),
        }
    }
}

/// A port nothing listens on now. The replica binds it a moment later; if
/// something else took it meanwhile, the replica exits and is restarted on
/// another.
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    // SAFETY: kill(2) with a pid we started (or adopted after checking its
    // command line) and a standard signal; no memory is shared.
    if unsafe { libc::kill(pid as libc::pid_t, sig) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Orchestrator for Local {
    fn start<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Replica, OrchestratorError>> {
        async move {
            let err = |source| OrchestratorError::Start {
                id: spec.id.clone(),
                source,
            };
            let port = free_port().map_err(err)?;
            let child = self.spawn(spec, port).map_err(err)?;
            // None only if it has already been reaped; never 0, which
            // kill(2) would read as "our own process group".
            let pid = child.id();
            if let Some(pid) = pid
                && let Err(e) = self.cgroups.apply(&spec.id, pid, spec.cpu, spec.memory)
            {
                tracing::warn!(replica = %spec.id, "cannot apply cgroup limits: {e}");
            }
            self.children().insert(spec.id.clone(), child);
            Ok(Replica {
                id: spec.id.clone(),
                deployment: spec.deployment.clone(),
                revision: spec.revision,
                endpoint: format!("127.0.0.1:{port}"),
                pid,
                state: ReplicaState::Starting,
                restarts,
                exited_at: None,
                started_at: now_ms(),
                target: Target::Local,
                reason: None,
                reserved: None,
            })
        }
        .boxed()
    }

    fn observe<'a>(&'a self, replica: &'a Replica) -> BoxFuture<'a, Liveness> {
        async move {
            if !self.alive(replica) {
                Liveness::Gone
            } else if ready(&replica.endpoint, PROBE_TIMEOUT).await {
                Liveness::Ready
            } else {
                Liveness::Running
            }
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        replica: &'a Replica,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), OrchestratorError>> {
        async move {
            // pid 0 would signal our own process group: never.
            let Some(pid) = replica.pid.filter(|&p| p > 0) else {
                return Ok(());
            };
            if !self.alive(replica) {
                self.cgroups.remove(&replica.id);
                return Ok(());
            }
            // SIGTERM: the replica stops accepting, drains, and exits.
            signal(pid, libc::SIGTERM).map_err(|source| OrchestratorError::Stop {
                id: replica.id.clone(),
                source,
            })?;
            let deadline = tokio::time::Instant::now() + grace;
            while self.alive(replica) {
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(replica = %replica.id, "did not drain in {grace:?}: killing it");
                    let _ = signal(pid, libc::SIGKILL);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.cgroups.remove(&replica.id);
            Ok(())
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        replica: &'a Replica,
        tail: usize,
    ) -> BoxFuture<'a, std::io::Result<Vec<String>>> {
        async move {
            let path = self.logs.join(format!("{}.log", replica.id));
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => return Err(e),
            };
            let lines: Vec<&str> = text.lines().collect();
            Ok(lines[lines.len().saturating_sub(tail)..]
                .iter()
                .map(|l| (*l).to_owned())
                .collect())
        }
        .boxed()
    }

    fn limits_note(&self) -> String {
        self.cgroups.note()
    }

    fn reap<'a>(
        &'a self,
        known: &'a std::collections::HashSet<String>,
    ) -> BoxFuture<'a, Vec<String>> {
        async move {
            let ours = self.logs.to_string_lossy().into_owned();
            let strays: Vec<(u32, String)> = Self::marked()
                .filter_map(|(pid, mark)| {
                    let mark = String::from_utf8(mark).ok()?;
                    let id = mark.strip_prefix(&ours)?.strip_prefix('/')?.to_owned();
                    (!known.contains(&id)).then_some((pid, id))
                })
                .collect();
            for (pid, id) in &strays {
                tracing::warn!(replica = %id, pid, "no record of this replica: stopping it");
                let _ = signal(*pid, libc::SIGKILL);
                self.cgroups.remove(id);
            }
            strays.into_iter().map(|(_, id)| id).collect()
        }
        .boxed()
    }
}
