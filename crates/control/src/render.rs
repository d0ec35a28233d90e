//! `modelship render haproxy|nginx NAME`: the upstream configuration that
//! does what the gateway does for one deployment — least-connections
//! balancing over its ready replicas with their traffic weights, active
//! health checks on the readiness route, retries on connection failures,
//! unbuffered streaming — for users who front replicas with their own proxy.
//! Pure: a function of the replicas and weights.

use std::fmt::Write as _;

/// One ready replica and its share of the deployment's traffic.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub replica: String,
    pub endpoint: String,
    /// Relative weight (1–256 for HAProxy, any positive for nginx).
    pub weight: u32,
}

/// Per-replica weights from each revision's traffic percent: a revision's
/// share is divided among its replicas, scaled so the smallest is 1.
pub fn weights(
    replicas: &[(String, String, u32)],
    percent_of: impl Fn(u32) -> u32,
) -> Vec<Upstream> {
    let count = |rev: u32| replicas.iter().filter(|r| r.2 == rev).count() as f64;
    let raw: Vec<f64> = replicas
        .iter()
        .map(|r| percent_of(r.2) as f64 / count(r.2))
        .collect();
    let smallest = raw
        .iter()
        .copied()
        .filter(|w| *w > 0.0)
        .fold(f64::INFINITY, f64::min);
    replicas
        .iter()
        .zip(raw)
        .map(|((id, endpoint, _), w)| Upstream {
            replica: id.clone(),
            endpoint: endpoint.clone(),
            weight: if w > 0.0 {
                ((w / smallest).round() as u32).clamp(1, 256)
            } else {
                0
            },
        })
        .collect()
}

/// A value written into a proxy's configuration: letters, digits and
/// `. : _ - [ ]` only (names, `host:port`, IPv6 brackets), so none can end
/// a line or a block and add directives of its own.
fn checked<'a>(what: &str, v: &'a str) -> Result<&'a str, String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || ".:_-[]".contains(c);
    if v.is_empty() || !v.chars().all(fine) {
        return Err(format!(
            "{what} {v:?} cannot go into a proxy configuration (letters, digits and . : _ - [ ] only)"
        ));
    }
    Ok(v)
}

/// Every value the configurations write, checked.
fn check_all(deployment: &str, bind: &str, upstreams: &[Upstream]) -> Result<(), String> {
    checked("the deployment name", deployment)?;
    checked("--bind", bind)?;
    for u in upstreams {
        checked("the replica id", &u.replica)?;
        checked("the replica endpoint", &u.endpoint)?;
    }
    Ok(())
}

pub fn haproxy(deployment: &str, bind: &str, upstreams: &[Upstream]) -> Result<String, String> {
    check_all(deployment, bind, upstreams)?;
    let mut s = format!(
        "# modelship: upstreams of deployment `{deployment}` (regenerate after each rollout)\n\
         global\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 5s\n    timeout client 300s\n    timeout server 300s\n\
         \x20   option http-keep-alive\n\n\
         frontend modelship_{deployment}\n    bind {bind}\n    default_backend modelship_{deployment}\n\n\
         backend modelship_{deployment}\n    balance leastconn\n\
         \x20   option httpchk GET /v2/health/ready\n    http-check expect status 200\n\
         \x20   retries 2\n    retry-on conn-failure empty-response\n    option redispatch\n\
         \x20   http-reuse safe\n"
    );
    for u in upstreams {
        let _ = writeln!(
            s,
            "    server {} {} check inter 1s fall 3 rise 1 weight {}{}",
            u.replica,
            u.endpoint,
            u.weight,
            if u.weight == 0 { " disabled" } else { "" }
        );
    }
    Ok(s)
}

pub fn nginx(deployment: &str, bind: &str, upstreams: &[Upstream]) -> Result<String, String> {
    check_all(deployment, bind, upstreams)?;
    let mut s = format!(
        "# modelship: upstreams of deployment `{deployment}` (regenerate after each rollout)\n\
         # open-source nginx checks health passively (max_fails); the gateway and\n\
         # HAProxy also probe /v2/health/ready.\n\
         upstream modelship_{deployment} {{\n    least_conn;\n    keepalive 32;\n"
    );
    for u in upstreams.iter().filter(|u| u.weight > 0) {
        let _ = writeln!(
            s,
            "    server {} weight={} max_fails=3 fail_timeout=10s;  # {}",
            u.endpoint, u.weight, u.replica
        );
    }
    let _ = write!(
        s,
        "}}\n\nserver {{\n    listen {bind};\n    location / {{\n\
         \x20       proxy_pass http://modelship_{deployment};\n\
         \x20       proxy_http_version 1.1;\n        proxy_set_header Connection \"\";\n\
         \x20       proxy_buffering off;  # server-sent events pass through as they come\n\
         \x20       proxy_read_timeout 300s;\n\
         \x20       proxy_next_upstream error timeout non_idempotent;\n\
         \x20       proxy_next_upstream_tries 3;\n    }}\n}}\n"
    );
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary() -> Vec<Upstream> {
        let replicas = vec![
            ("m-1-a".to_owned(), "127.0.0.1:9001".to_owned(), 1),
            ("m-1-b".to_owned(), "127.0.0.1:9002".to_owned(), 1),
            ("m-2-c".to_owned(), "127.0.0.1:9003".to_owned(), 2),
        ];
        weights(&replicas, |rev| if rev == 2 { 20 } else { 80 })
    }

    #[test]
    fn weights_follow_the_traffic_split() {
        let w: Vec<u32> = canary().iter().map(|u| u.weight).collect();
        // 80% over two replicas, 20% over one: 40:40:20.
        assert_eq!(w, [2, 2, 1]);
        let even = weights(
            &[("a".into(), "x:1".into(), 1), ("b".into(), "x:2".into(), 1)],
            |_| 100,
        );
        assert!(even.iter().all(|u| u.weight == 1));
        let off = weights(
            &[("a".into(), "x:1".into(), 1), ("b".into(), "x:2".into(), 2)],
            |r| if r == 1 { 100 } else { 0 },
        );
        assert_eq!(off[1].weight, 0);
    }

    #[test]
    fn configs_name_every_replica_with_checks_and_retries() {
        let h = haproxy("m", "127.0.0.1:8081", &canary()).unwrap();
        for want in [
            "bind 127.0.0.1:8081",
            "balance leastconn",
            "option httpchk GET /v2/health/ready",
            "retry-on conn-failure",
            "server m-1-a 127.0.0.1:9001 check inter 1s fall 3 rise 1 weight 2",
            "server m-2-c 127.0.0.1:9003 check inter 1s fall 3 rise 1 weight 1",
        ] {
            assert!(h.contains(want), "{want}\n{h}");
        }
        let n = nginx("m", "8081", &canary()).unwrap();
        for want in [
            "least_conn;",
            "server 127.0.0.1:9001 weight=2 max_fails=3",
            "proxy_buffering off;",
            "listen 8081;",
        ] {
            assert!(n.contains(want), "{want}\n{n}");
        }
    }

    #[test]
    fn values_that_could_add_directives_are_refused() {
        let err =
            haproxy("m", "127.0.0.1:8081\n    server evil 6.6.6.6:80", &canary()).unwrap_err();
        assert!(err.contains("--bind"), "{err}");
        let mut bad = canary();
        bad[0].endpoint = "127.0.0.1:9001; } server { listen 80".into();
        assert!(nginx("m", "8081", &bad).unwrap_err().contains("endpoint"));
        assert!(nginx("m{", "8081", &canary()).is_err());
        assert!(haproxy("m", "[::1]:8081", &canary()).is_ok());
    }
}
