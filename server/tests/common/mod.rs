//! Shared fixtures for the integration tests: a real `baton-server` child process ([`Server`]), request
//! helpers, and small waiting helpers with deadlines.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;
pub mod raw;

use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_proto::AUTHORIZATION;
use baton_proto::v1 as pb;
use baton_proto::v1::chat_client::ChatClient;
use diesel::prelude::*;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

pub type Client = ChatClient<Channel>;

/// How long a server may take to print its address after being started.
pub const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a server may take to exit after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Default deadline for conditions the tests wait for.
pub const WAIT: Duration = Duration::from_secs(10);

/// One `baton-server` process, started from the binary cargo built for this package. Its data directory is
/// a temporary directory kept for the life of this value (across restarts) and shared by `Arc`, so several
/// nodes of a future cluster test can live under one directory. The child's stderr goes to
/// `server_<id>.stderr.log` in that directory (appended across restarts) and is printed when a test
/// panics while the server value is alive.
pub struct Server {
    dir: Arc<TempDir>,
    id: u64,
    args: Vec<String>,
    /// `--listen`: `127.0.0.1:0` (a new port each start) or a fixed address (cluster nodes).
    listen: String,
    child: Option<Child>,
    addr: SocketAddr,
}

impl Server {
    /// A node with id 1 in a fresh temporary directory, with default settings.
    pub async fn start() -> Server {
        Server::start_with(&[]).await
    }

    /// A node with id 1 in a fresh temporary directory, with extra flags such as `--session-ttl-secs 1`.
    pub async fn start_with(args: &[&str]) -> Server {
        let dir = Arc::new(
            tempfile::Builder::new()
                .prefix("baton-test-")
                .tempdir()
                .expect("creating a temporary directory"),
        );
        Server::start_node(dir, 1, args.iter().map(|s| s.to_string()).collect()).await
    }

    /// A node with the given id whose database lives in `dir` (shared with other nodes, if any).
    pub async fn start_node(dir: Arc<TempDir>, id: u64, args: Vec<String>) -> Server {
        Server::start_node_at(dir, id, "127.0.0.1:0".into(), args).await
    }

    /// A node listening on a fixed address (kept across restarts), as cluster members are.
    pub async fn start_node_at(
        dir: Arc<TempDir>,
        id: u64,
        listen: String,
        args: Vec<String>,
    ) -> Server {
        let (child, addr) = spawn(dir.path(), id, &listen, &args).await;
        Server {
            dir,
            id,
            args,
            listen,
            child: Some(child),
            addr,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the server is listening on (changes on restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The shared temporary directory, for starting more nodes beside this one.
    pub fn dir(&self) -> Arc<TempDir> {
        self.dir.clone()
    }

    /// The SQLite database of this node.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join(format!("chat_{}.db", self.id))
    }

    pub fn log_path(&self) -> PathBuf {
        log_path(self.dir.path(), self.id)
    }

    /// Everything the server has written to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is not running").id()
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().expect("polling the server").is_none(),
            None => false,
        }
    }

    /// A new connection to the server.
    pub async fn client(&self) -> Client {
        connect(self.addr).await
    }

    /// Stops the server with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server is not running");
        child.kill().expect("sending SIGKILL");
        child.wait().expect("waiting for the killed server")
    }

    /// Sends the server a signal by name (`"STOP"`, `"CONT"`, `"TERM"`, …).
    pub fn signal(&self, name: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("running kill -{name}: {e}"));
        assert!(status.success(), "kill -{name} {pid} failed: {status}");
    }

    /// Asks the server to stop with SIGTERM and waits (with a deadline) for it to exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + STOP_DEADLINE;
        let child = self.child.as_mut().expect("server is not running");
        loop {
            if let Some(exit) = child.try_wait().expect("polling the server") {
                self.child = None;
                return exit;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.child = None;
                panic!(
                    "server did not exit within {STOP_DEADLINE:?} of SIGTERM; stderr:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same data directory and flags (on a new port). A server still
    /// running is first stopped with SIGTERM.
    pub async fn restart(&mut self) {
        if self.is_running() {
            let exit = self.terminate().await;
            assert!(exit.success(), "server exited with {exit} on SIGTERM");
        }
        self.child = None;
        let (child, addr) = spawn(self.dir.path(), self.id, &self.listen, &self.args).await;
        self.child = Some(child);
        self.addr = addr;
    }

    /// A read-only connection to this node's database, usable while the server runs.
    pub fn open_db(&self) -> SqliteConnection {
        let url = format!("file:{}?mode=ro", self.db_path().display());
        SqliteConnection::establish(&url).expect("opening the database read-only")
    }

    /// The raw bytes of the database and its `-wal` and `-shm` files (those that exist), by file name.
    pub fn db_files(&self) -> Vec<(String, Vec<u8>)> {
        let base = self.db_path();
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let path = PathBuf::from(format!("{}{suffix}", base.display()));
                let bytes = std::fs::read(&path).ok()?;
                Some((path.file_name()?.to_string_lossy().into_owned(), bytes))
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- stderr of baton-server {} ({}) ---\n{}--- end of stderr ---",
                self.id,
                self.log_path().display(),
                self.log()
            );
        }
    }
}

fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("server_{id}.stderr.log"))
}

/// Starts the binary, waits for its `listening on ADDR` line and returns the child and the address.
async fn spawn(dir: &Path, id: u64, listen: &str, args: &[String]) -> (Child, SocketAddr) {
    let log = log_path(dir, id);
    let stderr: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("opening the server's stderr log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-server"))
        .arg("--listen")
        .arg(listen)
        .arg("--print-address")
        .arg("--data-dir")
        .arg(dir)
        .arg("--id")
        .arg(id.to_string())
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("starting baton-server");

    // A thread reads stdout for the whole life of the child (so it never writes into a closed pipe) and
    // hands over the first line.
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = oneshot::channel::<String>();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        while let Some(Ok(line)) = lines.next() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(line);
            }
        }
    });

    let fail = |child: &mut Child, why: String| -> ! {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        panic!("baton-server did not start: {why}; stderr:\n{text}");
    };
    let line = match tokio::time::timeout(START_DEADLINE, rx).await {
        Ok(Ok(line)) => line,
        Ok(Err(_)) => fail(
            &mut child,
            "it closed stdout before printing its address".into(),
        ),
        Err(_) => fail(
            &mut child,
            format!("no address printed within {START_DEADLINE:?}"),
        ),
    };
    let addr = match line
        .strip_prefix("listening on ")
        .and_then(|a| a.trim().parse::<SocketAddr>().ok())
    {
        Some(addr) => addr,
        None => fail(&mut child, format!("unexpected first line {line:?}")),
    };
    (child, addr)
}

pub async fn connect(addr: SocketAddr) -> Client {
    connect_with(Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint")).await
}

/// A connection through `endpoint` (plain or TLS), which must succeed.
pub async fn connect_with(endpoint: Endpoint) -> Client {
    let uri = endpoint.uri().clone();
    let channel = endpoint
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {uri}: {e}"));
    ChatClient::new(channel)
}

/// `baton-server certs --out dir --nodes n`: a CA and certificates for nodes 1..=n, valid for
/// 127.0.0.1 and localhost.
pub fn make_certs(dir: &Path, nodes: u64) {
    let out = Command::new(env!("CARGO_BIN_EXE_baton-server"))
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .args(["--nodes", &nodes.to_string()])
        .output()
        .expect("running baton-server certs");
    assert!(
        out.status.success(),
        "baton-server certs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `msg` with the metadata `authorization: Bearer <token>`.
pub fn authed<T>(msg: T, token: &str) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .expect("valid metadata value"),
    );
    req
}

/// `msg` with a bearer token if one is given, bare otherwise.
pub fn maybe_authed<T>(msg: T, token: Option<&str>) -> Request<T> {
    match token {
        Some(t) => authed(msg, t),
        None => Request::new(msg),
    }
}

pub async fn create_account(client: &mut Client, name: &str, password: &str) -> pb::Account {
    client
        .create_account(pb::CreateAccountRequest {
            username: name.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("creating {name:?}: {e:?}"))
        .into_inner()
}

pub async fn login(client: &mut Client, name: &str, password: &str) -> pb::LoginResponse {
    client
        .login(pb::LoginRequest {
            username: name.into(),
            password: password.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("logging in {name:?}: {e:?}"))
        .into_inner()
}

/// Creates the account and logs it in; returns the session token.
pub async fn create_and_login(client: &mut Client, name: &str, password: &str) -> String {
    create_account(client, name, password).await;
    login(client, name, password).await.session_token
}

pub async fn send(client: &mut Client, token: &str, to: &str, body: &str) -> pb::Message {
    client
        .send_message(authed(
            pb::SendMessageRequest {
                recipient: to.into(),
                body: body.into(),
                client_message_id: String::new(),
            },
            token,
        ))
        .await
        .unwrap_or_else(|e| panic!("sending to {to:?}: {e:?}"))
        .into_inner()
}

/// The whole history with `peer` (at most one page of 200), ascending.
pub async fn history(client: &mut Client, token: &str, peer: &str) -> Vec<pb::Message> {
    let r = client
        .get_history(authed(
            pb::GetHistoryRequest {
                peer: peer.into(),
                before_id: 0,
                limit: 200,
            },
            token,
        ))
        .await
        .unwrap_or_else(|e| panic!("history with {peer:?}: {e:?}"))
        .into_inner();
    assert!(!r.has_more, "history with {peer:?} has more than 200");
    r.messages
}

pub async fn conversations(client: &mut Client, token: &str) -> Vec<pb::Conversation> {
    client
        .list_conversations(authed(pb::ListConversationsRequest {}, token))
        .await
        .expect("listing conversations")
        .into_inner()
        .conversations
}

pub async fn subscribe(
    client: &mut Client,
    token: &str,
    since_message_id: u64,
) -> tonic::Streaming<pb::Event> {
    client
        .subscribe(authed(
            pb::SubscribeRequest {
                since_message_id,
                since_deletion_id: None,
            },
            token,
        ))
        .await
        .expect("subscribing")
        .into_inner()
}

/// The next event of a stream, within `within`; panics on timeout, error or end of stream.
pub async fn next_event(stream: &mut tonic::Streaming<pb::Event>, within: Duration) -> pb::Event {
    match tokio::time::timeout(within, stream.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("the event stream ended"),
        Ok(Err(status)) => panic!("the event stream failed: {status:?}"),
        Err(_) => panic!("no event within {within:?}"),
    }
}

/// The next event's kind, which must be present.
pub async fn next_kind(
    stream: &mut tonic::Streaming<pb::Event>,
    within: Duration,
) -> pb::event::Kind {
    next_event(stream, within)
        .await
        .kind
        .expect("event without a kind")
}

/// Reads events until CaughtUp (within `WAIT`), returning the events before it and the CaughtUp.
pub async fn until_caught_up(
    stream: &mut tonic::Streaming<pb::Event>,
) -> (Vec<pb::event::Kind>, pb::CaughtUp) {
    let deadline = Instant::now() + WAIT;
    let mut before = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match next_kind(stream, left).await {
            pb::event::Kind::CaughtUp(c) => return (before, c),
            other => before.push(other),
        }
    }
}

/// The status code of a call's result (`Code::Ok` for success).
pub fn code_of<T>(r: &Result<T, Status>) -> Code {
    match r {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// Asserts that a call failed with exactly `code`, and returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(r: Result<T, Status>, code: Code) -> Status {
    match r {
        Ok(v) => panic!("expected {code:?}, got OK: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "expected {code:?}, got {s:?}");
            s
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Milliseconds since the Unix epoch, as the server counts them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Whether `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
