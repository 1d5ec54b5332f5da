//! A TCP relay on one peer link, so the chaos run can partition a node: while cut, nothing passes either
//! way on open or new connections (a dead network: no reset, just silence); once healed, connections that
//! lived through the cut are closed and new ones pass.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port (never one handed out to a server) and relays to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let port = baton_proto::ports::free_loopback_port().context("finding a proxy port")?;
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .context("binding a proxy port")?;
        let addr = listener.local_addr()?;
        let cut = watch::Sender::new(false);
        let task = tokio::spawn(serve(listener, target, cut.subscribe()));
        Ok(Proxy { addr, cut, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn block(&self) {
        self.cut.send_replace(true);
    }

    pub fn unblock(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, target: SocketAddr, cut: watch::Receiver<bool>) {
    while let Ok((inbound, _)) = listener.accept().await {
        let mut cut = cut.clone();
        tokio::spawn(async move {
            if *cut.borrow() {
                let _ = cut.wait_for(|c| !*c).await;
                return;
            }
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::join!(relay(ri, wo, cut.clone()), relay(ro, wi, cut));
        });
    }
}

/// Copies until either side closes; a cut holds what was read, and the connection ends when it heals.
async fn relay(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut cut: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = tokio::select! {
            r = from.read(&mut buf) => Some(r),
            _ = cut.wait_for(|c| *c) => None,
        };
        let Some(read) = read else {
            let _ = cut.wait_for(|c| !*c).await;
            return;
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *cut.borrow() {
            let _ = cut.wait_for(|c| !*c).await;
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
