//! A `modelship up` on free ports for tests, and spec files for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::modelship;

/// A running `modelship up` on free ports.
pub struct ControlPlane {
    child: Child,
    pub api: String,
    pub gateway: String,
    /// The first key of `--api-keys`, which the CLI then sends.
    pub key: Option<String>,
}

impl ControlPlane {
    pub fn start(data: &Path) -> ControlPlane {
        Self::start_with(data, &[])
    }

    pub fn start_with(data: &Path, flags: &[&str]) -> ControlPlane {
        Self::start_env(data, flags, &[])
    }

    /// Starts with extra environment variables (`KUBECONFIG`, …).
    pub fn start_env(data: &Path, flags: &[&str], env: &[(&str, &Path)]) -> ControlPlane {
        Self::launch(data, 0, flags, env)
    }

    /// Starts on API port `api_port` (where an earlier one listened: a CLI
    /// following a run finds this one there).
    pub fn start_on(data: &Path, api_port: u16, flags: &[&str]) -> ControlPlane {
        Self::launch(data, api_port, flags, &[])
    }

    /// The port its API listens on.
    pub fn api_port(&self) -> u16 {
        self.api.rsplit(':').next().unwrap().parse().unwrap()
    }

    fn launch(data: &Path, api_port: u16, flags: &[&str], env: &[(&str, &Path)]) -> ControlPlane {
        let mut child = modelship()
            .args([
                "up",
                "--api-port",
                &api_port.to_string(),
                "--gateway-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(data)
            .args(flags)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let banner = super::first_line_starting(&mut child, "modelship control plane:");
        // "modelship control plane: API http://A, gateway http://G, data …"
        let url = |after: &str| {
            let rest = &banner[banner.find(after).expect(&banner) + after.len()..];
            rest[..rest.find(',').unwrap()].to_owned()
        };
        let key = flags
            .iter()
            .position(|f| *f == "--api-keys")
            .and_then(|i| std::fs::read_to_string(flags[i + 1]).ok())
            .and_then(|text| {
                text.lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
            });
        ControlPlane {
            api: url("API "),
            gateway: url("gateway "),
            child,
            key,
        }
    }

    /// `modelship ARGS --api API`, sending the control plane's key.
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = modelship();
        cmd.args(args).args(["--api", &self.api]);
        match &self.key {
            Some(key) => cmd.env("MODELSHIP_API_KEY", key),
            None => cmd.env_remove("MODELSHIP_API_KEY"),
        };
        cmd
    }

    /// `modelship ARGS` started in the background against this control
    /// plane (it outlives this one when the next listens on the same port).
    pub fn spawn_cli(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let out = self.command(args).output().unwrap();
        if !out.status.success() {
            eprintln!(
                "modelship {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[args, &["-o", "json"]].concat());
        assert!(out.status.success(), "{args:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn replicas(&self) -> Vec<Value> {
        self.json(&["get", "replicas"]).as_array().unwrap().clone()
    }

    /// Waits until `n` replicas of `revision` are ready and no other runs.
    pub fn wait_ready(&self, n: usize, revision: u64, within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let rs = self.replicas();
            if rs.len() == n
                && rs
                    .iter()
                    .all(|r| r["state"] == "ready" && r["revision"] == revision)
            {
                return rs;
            }
            assert!(
                Instant::now() < deadline,
                "not {n} ready replicas of revision {revision}: {rs:#?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Deletes `deployment`, waits until its replicas are gone, and stops
    /// the control plane: a test leaves no process behind.
    pub fn delete_and_stop(self, deployment: &str) {
        assert!(self.cli(&["delete", deployment]).status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.replicas().is_empty() {
            assert!(Instant::now() < deadline, "replicas left after delete");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill();
    }

    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ControlPlane {
    /// A test that fails midway leaves no process behind either: its
    /// replicas (which outlive the control plane by design) are killed
    /// first, while the API can still name them.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let out = self.command(&["get", "replicas", "-o", "json"]).output();
            if let Ok(out) = out
                && let Ok(replicas) = serde_json::from_slice::<Vec<Value>>(&out.stdout)
            {
                for pid in replicas.iter().filter_map(|r| r["pid"].as_u64()) {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .stderr(Stdio::null())
                        .status();
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn spec(dir: &Path, file: &str, source: &Path, replicas: u32, extra: &str) -> PathBuf {
    named_spec(dir, file, "minilm", source, replicas, extra)
}

/// A spec of `replicas` of `source` named `name`, with a memory limit and
/// no CPU: on this machine its replicas share the cores.
pub fn named_spec(
    dir: &Path,
    file: &str,
    name: &str,
    source: &Path,
    replicas: u32,
    extra: &str,
) -> PathBuf {
    spec_with_resources(dir, file, name, source, replicas, "{ memory: 1Gi }", extra)
}

pub fn spec_with_resources(
    dir: &Path,
    file: &str,
    name: &str,
    source: &Path,
    replicas: u32,
    resources: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(
        &path,
        format!(
            "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\n\
             spec:\n  model:\n    source: {}\n  resources: {resources}\n  replicas: {replicas}\n{extra}",
            source.display()
        ),
    )
    .unwrap();
    path
}
