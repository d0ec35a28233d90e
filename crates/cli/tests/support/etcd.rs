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
    pub fn start(dir: &Path) -> EtcdServer {
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        };
        let (client, peer) = (free(), free());
        let client_url = format!("http://127.0.0.1:{client}");
        let child = std::process::Command::new("etcd")
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
        let url = format!("etcd://127.0.0.1:{client}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", client)).is_err() {
            assert!(Instant::now() < deadline, "etcd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        EtcdServer { child, url }
    }
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
