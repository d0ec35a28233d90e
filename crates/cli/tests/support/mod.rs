//! Running the `modelship` binary from tests.
#![allow(dead_code)] // each test file uses part of it

pub mod browser;
pub mod control_plane;
pub mod etcd;
pub mod load;
pub mod registry;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn modelship() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modelship"))
}

/// Runs `cmd` to success and returns its stdout; a failure shows its stderr.
pub fn succeed(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().expect("run modelship");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `modelship inspect --json MODEL`.
pub fn inspect_json(model: &std::path::Path) -> serde_json::Value {
    let out = succeed(modelship().args(["inspect", "--json"]).arg(model));
    serde_json::from_slice(&out).expect("inspect prints JSON")
}

/// Starts `modelship serve` on a free port; returns the child and its base URL.
pub fn serve(model: &std::path::Path) -> (Child, String) {
    serve_with(model, &[])
}

/// `serve` with more flags.
pub fn serve_with(model: &std::path::Path, flags: &[&str]) -> (Child, String) {
    let mut child = modelship()
        .arg("serve")
        .arg(model)
        .args(["--port", "0", "--threads", "2"])
        .args(flags)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line
                .split(" on ")
                .nth(1)
                .filter(|_| line.starts_with("modelship: serving"))
            {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server announces its address");
    (child, url)
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Reads the child's stderr until a line starting with `prefix`; returns it.
/// The rest of stderr keeps draining in the background.
pub fn first_line_starting(child: &mut Child, prefix: &str) -> String {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.starts_with(&prefix) {
                let _ = tx.send(line);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the process announces itself")
}

/// Is process `pid` alive (and not a zombie)?
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}
