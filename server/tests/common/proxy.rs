//! A TCP proxy between two cluster members, so tests can cut a link: while blocked, nothing passes in
//! either direction on open or new connections (as through a dead network: no reset, just silence); when
//! unblocked, the connections cut meanwhile are closed and new ones pass again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    blocked: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port (never one handed out to a server) and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let port = baton_proto::ports::free_loopback_port().expect("a free loopback port");
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("binding the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let blocked = watch::Sender::new(false);
        let rx = blocked.subscribe();
        let task = tokio::spawn(accept_loop(listener, target, rx));
        Proxy {
            addr,
            blocked,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn block(&self) {
        self.blocked.send_replace(true);
    }

    pub fn unblock(&self) {
        self.blocked.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, blocked: watch::Receiver<bool>) {
    let blocked = Arc::new(blocked);
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            return;
        };
        let mut rx = (*blocked).clone();
        tokio::spawn(async move {
            if *rx.borrow() {
                // Hold the connection without answering until the link heals, then drop it.
                let _ = rx.wait_for(|b| !*b).await;
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let up = tokio::spawn(pump(ri, wo, rx.clone()));
            let down = tokio::spawn(pump(ro, wi, rx.clone()));
            let _ = tokio::join!(up, down);
        });
    }
}

/// Copies `from` to `to` until either side closes; while blocked, holds what it read and sends nothing,
/// and once the block lifts the connection is dropped (it did not survive the outage).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut blocked: watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            n = from.read(&mut buf) => Some(n),
            _ = blocked.wait_for(|b| *b) => None,
        };
        let Some(n) = n else {
            let _ = blocked.wait_for(|b| !*b).await;
            return;
        };
        let n = match n {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *blocked.borrow() {
            let _ = blocked.wait_for(|b| !*b).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
