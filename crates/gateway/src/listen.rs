//! The gateway's listeners: one thread per core, each with its own
//! single-threaded runtime, its own `SO_REUSEPORT` listener on the shared
//! port and its own upstream connection pool (the nginx/Envoy worker model).
//! A request and its upstream call then run on one thread: no cross-thread
//! wake-ups on the hot path, which on a shared tokio runtime cost more than
//! the proxying itself (perf: ~30% of the time in the scheduler).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::net::TcpSocket;
use tokio::sync::{oneshot, watch};

use crate::{Gateway, Tls, router};

/// Binds `addr` on `threads` listeners and serves until `shutdown` turns
/// true. Returns the bound address and a future that resolves when every
/// thread has drained.
pub fn serve(
    gateway: Gateway,
    addr: SocketAddr,
    threads: usize,
    tls: Option<Tls>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, impl Future<Output = io::Result<()>>)> {
    let socket = |at: SocketAddr| -> io::Result<TcpSocket> {
        let s = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.set_nodelay(true)?;
        s.bind(at)?;
        Ok(s)
    };
    let first = socket(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads.max(1) {
        sockets.push(socket(bound)?);
    }
    let mut done = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (gateway, mut stop, tls) = (gateway.clone(), shutdown.clone(), tls.clone());
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let result = (|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        // Each request arms its upstream timeout; when that
                        // timer is the earliest one, arming it wakes the
                        // thread's driver through an eventfd write to re-arm
                        // epoll: a system call and a spurious wake-up per
                        // request (perf). A timer that always fires within a
                        // second keeps the driver's next wake earlier than
                        // any request timeout, so arming one costs nothing.
                        tokio::spawn(async {
                            loop {
                                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            }
                        });
                        let listener = s.listen(1024)?;
                        let stopped = async move {
                            let _ = stop.wait_for(|s| *s).await;
                        };
                        match tls {
                            Some(tls) => {
                                axum::serve(tls.listen(listener)?, router(gateway))
                                    .with_graceful_shutdown(stopped)
                                    .await
                            }
                            None => {
                                axum::serve(listener, router(gateway))
                                    .with_graceful_shutdown(stopped)
                                    .await
                            }
                        }
                    })
                })();
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    Ok((bound, async move {
        for rx in done {
            rx.await
                .map_err(|_| io::Error::other("a gateway thread panicked"))??;
        }
        Ok(())
    }))
}
