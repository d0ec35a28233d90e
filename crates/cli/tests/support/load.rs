//! A steady load of embedding requests through a gateway, counting what
//! failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::{Value, json};

/// Embedding requests through the gateway from a few clients, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(gateway: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let client = reqwest::Client::new();
        let tasks = (0..clients)
            .map(|i| {
                let (stop, ok, failures, client) =
                    (stop.clone(), ok.clone(), failures.clone(), client.clone());
                let url = format!("{gateway}/v1/embeddings");
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // Varied inputs: a comparison of answers sees more
                        // than one sentence.
                        let body = json!({"model": "minilm",
                            "input": format!("request {n} from client {i}: the {} sat on the mat", ["cat", "dog", "committee", "river"][n as usize % 4])});
                        match client.post(&url).json(&body).send().await {
                            Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                                Ok(v)
                                    if v["data"][0]["embedding"]
                                        .as_array()
                                        .is_some_and(|e| e.len() == 384) =>
                                {
                                    ok.fetch_add(1, Ordering::Relaxed);
                                }
                                other => failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("bad body: {other:?}")),
                            },
                            Ok(r) => {
                                let line = format!("{}: {:?}", r.status(), r.text().await);
                                failures.lock().unwrap().push(line);
                            }
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    /// Stops the clients; returns (successes, failures).
    pub async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failures.lock().unwrap().clone(),
        )
    }
}

impl Load {
    /// Requests answered so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}
