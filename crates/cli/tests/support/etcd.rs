//! A real etcd for tests.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A real etcd (Debian's etcd-server, installed by scripts/test.sh) on free
/// loopback ports, its data in `dir`.
pub struct EtcdServer {
    child: Child,
    pub url: String,
}

impl EtcdServer {
    /// Starts etcd and waits until it answers as etcd. Its ports are picked
    /// free a moment before it binds them; when another process took one
    /// meanwhile (a replica of a test running beside), it starts again on
    /// others.
    pub fn start(dir: &Path) -> EtcdServer {
        for _ in 0..5 {
            if let Some(etcd) = Self::try_start(dir) {
                return etcd;
            }
        }
        panic!("etcd did not start on free ports in 5 tries");
    }

    fn try_start(dir: &Path) -> Option<EtcdServer> {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (free(), free());
        let client_url = format!("http://127.0.0.1:{client}");
        let _ = std::fs::remove_dir_all(dir);
        let mut child = std::process::Command::new("etcd")
            .args([
                "--data-dir",
                dir.to_str().unwrap(),
                "--listen-client-urls",
                &client_url,
            ])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd is missing: scripts/test.sh installs Debian's etcd-server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !answers_as_etcd(client) {
            // Exited: a port was taken. Still running: not up yet.
            if child.try_wait().ok().flatten().is_some() || Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(EtcdServer {
            child,
            url: format!("etcd://127.0.0.1:{client}"),
        })
    }
}

/// Whether what listens on `port` is etcd (its `/version` names it).
fn answers_as_etcd(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    if conn
        .write_all(b"GET /version HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.contains("etcdserver")
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `modelship gateway` fed only by `etcd`, on a free port; returns it and
/// its URL.
pub fn gateway(etcd: &str) -> (Child, String) {
    let mut child = super::modelship()
        .args(["gateway", "--discovery", etcd, "--port", "0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let banner = super::first_line_starting(&mut child, "modelship gateway:");
    let url = banner
        .split_whitespace()
        .nth(2)
        .unwrap()
        .trim_end_matches(',')
        .to_owned();
    (child, url)
}
