//! A TCP proxy between two cluster members, so tests can cut a link: while blocked, open connections are
//! dropped and new ones are accepted but go nowhere (as through a dead network), until unblocked.

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
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
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
            let (mut ri, mut wi) = inbound.into_split();
            let (mut ro, mut wo) = outbound.into_split();
            tokio::select! {
                _ = tokio::io::copy(&mut ri, &mut wo) => {}
                _ = tokio::io::copy(&mut ro, &mut wi) => {}
                _ = rx.wait_for(|b| *b) => {}
            }
        });
    }
}
