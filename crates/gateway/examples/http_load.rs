//! A closed-loop HTTP load generator for the proxy benchmark
//! (scripts/bench/gateway.py): CONCURRENCY clients each send the same
//! request back to back over a kept-alive connection for SECONDS; prints
//! one JSON line with the count, errors, rate and latency percentiles.
//!
//! usage: http_load URL CONCURRENCY SECONDS [JSON_BODY]   (a body means POST)

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (url, concurrency, seconds, body) = match args.as_slice() {
        [_, url, c, s] => (url.clone(), c.parse::<usize>()?, s.parse::<f64>()?, None),
        [_, url, c, s, b] => (url.clone(), c.parse()?, s.parse()?, Some(b.clone())),
        _ => return Err("usage: http_load URL CONCURRENCY SECONDS [JSON_BODY]".into()),
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    // Warm the connections and the upstream.
    for _ in 0..concurrency * 4 {
        send(&client, &url, body.as_deref()).await;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, url, body) = (client.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                let (mut lat, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if send(&client, &url, body.as_deref()).await {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let started = Instant::now();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        let (lat, e) = t.await?;
        all.extend(lat);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64().max(seconds);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"requests\": {}, \"errors\": {errors}, \"rps\": {:.1}, \"p50_us\": {}, \"p99_us\": {}}}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

async fn send(client: &reqwest::Client, url: &str, body: Option<&str>) -> bool {
    let req = match body {
        Some(b) => client
            .post(url)
            .header("content-type", "application/json")
            .body(b.to_owned()),
        None => client.get(url),
    };
    match req.send().await {
        Ok(r) => {
            let ok = r.status().is_success();
            ok && r.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}
