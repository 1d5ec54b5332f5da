//! Free loopback ports for clusters started on one machine (the tests' and `baton-bench`'s). A port the
//! kernel offers for a listener bound to port 0 is free at that moment; once the listener closes the
//! kernel may offer the same port again, so two servers of one cluster could be given the same one. Each
//! port is therefore handed out at most once per process.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port that is free now and that this process has not handed out before.
pub fn free_loopback_port() -> std::io::Result<u16> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed = handed.get_or_insert_with(HashSet::new);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if handed.insert(port) {
            return Ok(port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..500).map(|_| free_loopback_port().unwrap()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        assert!(ports.iter().all(|p| *p != 0));
    }
}
