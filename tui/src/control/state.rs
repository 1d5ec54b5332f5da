//! The control pane's state and its one entry point, `Control::update(Event) -> Vec<Cmd>`: keys, each
//! server's ClusterStatus answers and process news go in; kills and starts come out, and the event log
//! ("killed leader 1", "node 2 leads (epoch 2002)", "node 1 restarted, following 2") is written from
//! what changed. No I/O and no clock, like `App`.

use std::collections::BTreeSet;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::client::{NodeStatus, Role};

/// How many event lines are kept.
const LOG_LINES: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Key(KeyEvent),
    Resize(u16, u16),
    /// The wall-clock time (ms since the epoch).
    Tick(i64),
    /// One poll of one server's ClusterStatus.
    Status {
        id: u64,
        result: Result<NodeStatus, String>,
    },
    /// A server process is running: started (a restart, if `restart`) or adopted.
    Running {
        id: u64,
        pid: u32,
        restart: bool,
    },
    /// A server process ended, however (killed by us, crashed, stopped by someone else).
    Exited {
        id: u64,
        how: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    /// SIGKILL the node's process.
    Kill(u64),
    /// Start the node's process again.
    Start(u64),
    /// Stop every server this pane started, then exit.
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    pub id: u64,
    pub address: String,
    pub pid: Option<u32>,
    /// Its last answer; None while it does not answer.
    pub status: Option<NodeStatus>,
}

#[derive(Debug)]
pub struct Control {
    pub nodes: Vec<NodeRow>,
    /// (time in ms, text), oldest first.
    pub log: Vec<(i64, String)>,
    pub now_ms: i64,
    pub utc_offset_s: i32,
    pub width: u16,
    pub height: u16,
    /// Shown in the title: where the cluster's data lives.
    pub data_dir: String,
    /// `r` was pressed: the next digit restarts that node.
    pub restart_armed: bool,
    /// The leader last logged, as (id, epoch).
    announced: Option<(u64, u64)>,
    /// Killed from here: their silence is expected, not news.
    killed: BTreeSet<u64>,
    /// Restarted, waiting to say whom they follow.
    rejoining: BTreeSet<u64>,
    /// Stopped answering without being killed from here (logged once).
    silent: BTreeSet<u64>,
}

impl Control {
    pub fn new(
        nodes: Vec<(u64, String)>,
        data_dir: String,
        now_ms: i64,
        utc_offset_s: i32,
    ) -> Self {
        Control {
            nodes: nodes
                .into_iter()
                .map(|(id, address)| NodeRow {
                    id,
                    address,
                    pid: None,
                    status: None,
                })
                .collect(),
            log: Vec::new(),
            now_ms,
            utc_offset_s,
            width: 80,
            height: 24,
            data_dir,
            restart_armed: false,
            announced: None,
            killed: BTreeSet::new(),
            rejoining: BTreeSet::new(),
            silent: BTreeSet::new(),
        }
    }

    /// The node that says it leads; if several do (a partition), the one with the highest epoch.
    pub fn leader(&self) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter_map(|n| n.status.as_ref())
            .filter(|s| s.role == Role::Leader)
            .map(|s| (s.node_id, s.epoch))
            .max_by_key(|&(_, epoch)| epoch)
    }

    /// Whether the leader counts `id` in its in-sync set (None: no leader answers).
    pub fn in_sync(&self, id: u64) -> Option<bool> {
        let (leader, _) = self.leader()?;
        let status = self.row(leader)?.status.as_ref()?;
        Some(
            status
                .members
                .iter()
                .any(|m| m.id == id && m.in_sync && m.up),
        )
    }

    /// The node's own applied position, as it reports it.
    pub fn applied_seq(&self, id: u64) -> Option<u64> {
        let s = self.row(id)?.status.as_ref()?;
        s.members
            .iter()
            .find(|m| m.id == s.node_id)
            .map(|m| m.applied_seq)
    }

    pub fn row(&self, id: u64) -> Option<&NodeRow> {
        self.nodes.iter().find(|n| n.id == id)
    }

    fn row_mut(&mut self, id: u64) -> Option<&mut NodeRow> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.log.push((self.now_ms, text.into()));
        if self.log.len() > LOG_LINES {
            self.log.remove(0);
        }
    }

    pub fn update(&mut self, event: Event) -> Vec<Cmd> {
        match event {
            Event::Key(k) if k.kind == KeyEventKind::Release => Vec::new(),
            Event::Key(k) => self.on_key(k),
            Event::Resize(w, h) => {
                self.width = w;
                self.height = h;
                Vec::new()
            }
            Event::Tick(now) => {
                self.now_ms = now;
                Vec::new()
            }
            Event::Status { id, result } => {
                self.on_status(id, result);
                Vec::new()
            }
            Event::Running { id, pid, restart } => {
                if let Some(row) = self.row_mut(id) {
                    row.pid = Some(pid);
                }
                self.killed.remove(&id);
                self.silent.remove(&id);
                if restart {
                    self.rejoining.insert(id);
                    self.note(format!("restarting node {id} (pid {pid})"));
                }
                Vec::new()
            }
            Event::Exited { id, how } => {
                if let Some(row) = self.row_mut(id) {
                    row.pid = None;
                }
                self.rejoining.remove(&id);
                if !self.killed.contains(&id) {
                    self.note(format!("node {id} exited ({how})"));
                }
                Vec::new()
            }
        }
    }

    fn on_status(&mut self, id: u64, result: Result<NodeStatus, String>) {
        let was_up = self.row(id).is_some_and(|r| r.status.is_some());
        match result {
            Ok(status) => {
                let (role, leader) = (status.role, status.leader_id);
                if let Some(row) = self.row_mut(id) {
                    row.status = Some(status);
                }
                if self.silent.remove(&id) && !self.rejoining.contains(&id) {
                    self.note(format!("node {id} answers again"));
                }
                if self.rejoining.contains(&id) {
                    match role {
                        Role::Follower if leader != 0 && leader != id => {
                            self.rejoining.remove(&id);
                            self.note(format!("node {id} restarted, following {leader}"));
                        }
                        Role::Leader => {
                            self.rejoining.remove(&id);
                            self.note(format!("node {id} restarted"));
                        }
                        _ => {}
                    }
                }
            }
            Err(_) => {
                if let Some(row) = self.row_mut(id) {
                    row.status = None;
                }
                if was_up && !self.killed.contains(&id) && self.silent.insert(id) {
                    self.note(format!("node {id} stopped answering"));
                }
            }
        }
        let now = self.leader();
        if now.is_some() && now != self.announced {
            self.announced = now;
            if let Some((leader, epoch)) = now {
                self.note(format!("node {leader} leads (epoch {epoch})"));
            }
        }
    }

    fn on_key(&mut self, k: KeyEvent) -> Vec<Cmd> {
        let armed = std::mem::take(&mut self.restart_armed);
        match k.code {
            KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => self.quit(),
            KeyCode::Char('q') => self.quit(),
            KeyCode::Char('k') => match self.leader() {
                Some((leader, _)) => self.kill(leader),
                None => {
                    self.note("no leader to kill");
                    Vec::new()
                }
            },
            KeyCode::Char('r') => {
                self.restart_armed = true;
                Vec::new()
            }
            KeyCode::Esc => Vec::new(),
            KeyCode::Char(c) => match (digit(c), shifted_digit(c)) {
                (Some(id), _) if armed => self.restart(id),
                (Some(id), _) => self.kill(id),
                (None, Some(id)) => self.restart(id),
                (None, None) => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    fn quit(&mut self) -> Vec<Cmd> {
        self.note("stopping the servers started here…");
        vec![Cmd::Quit]
    }

    fn kill(&mut self, id: u64) -> Vec<Cmd> {
        let Some(row) = self.row(id) else {
            self.note(format!("there is no node {id}"));
            return Vec::new();
        };
        if row.pid.is_none() {
            self.note(format!("node {id} is not running"));
            return Vec::new();
        }
        let what = if self.leader().is_some_and(|(l, _)| l == id) {
            "leader"
        } else {
            "node"
        };
        self.killed.insert(id);
        self.rejoining.remove(&id);
        self.note(format!("killed {what} {id}"));
        vec![Cmd::Kill(id)]
    }

    fn restart(&mut self, id: u64) -> Vec<Cmd> {
        match self.row(id) {
            None => {
                self.note(format!("there is no node {id}"));
                Vec::new()
            }
            Some(row) if row.pid.is_some() => {
                self.note(format!("node {id} is running already"));
                Vec::new()
            }
            Some(_) => vec![Cmd::Start(id)],
        }
    }
}

fn digit(c: char) -> Option<u64> {
    c.to_digit(10).filter(|&d| d > 0).map(u64::from)
}

/// Shift+1..9 on a US layout, which is what terminals send for them.
fn shifted_digit(c: char) -> Option<u64> {
    "!@#$%^&*(".find(c).map(|i| i as u64 + 1)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::client::MemberView;

    fn key(c: char) -> Event {
        Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE))
    }

    pub fn status(id: u64, role: Role, leader: u64, epoch: u64, in_sync: &[u64]) -> NodeStatus {
        NodeStatus {
            node_id: id,
            role,
            leader_id: leader,
            leader_address: format!("127.0.0.1:740{leader}"),
            epoch,
            members: (1..=3)
                .map(|m| MemberView {
                    id: m,
                    address: format!("127.0.0.1:740{m}"),
                    role: if m == leader {
                        Role::Leader
                    } else {
                        Role::Follower
                    },
                    up: in_sync.contains(&m),
                    in_sync: in_sync.contains(&m),
                    applied_seq: 7,
                    lag: 0,
                })
                .collect(),
        }
    }

    fn control() -> Control {
        let mut c = Control::new(
            (1..=3).map(|i| (i, format!("127.0.0.1:740{i}"))).collect(),
            "/tmp/demo".into(),
            0,
            0,
        );
        for id in 1..=3 {
            c.update(Event::Running {
                id,
                pid: 100 + id as u32,
                restart: false,
            });
            c.update(Event::Status {
                id,
                result: Ok(status(
                    id,
                    if id == 1 {
                        Role::Leader
                    } else {
                        Role::Follower
                    },
                    1,
                    1001,
                    &[1, 2, 3],
                )),
            });
        }
        c
    }

    fn log(c: &Control) -> Vec<&str> {
        c.log.iter().map(|(_, t)| t.as_str()).collect()
    }

    #[test]
    fn k_kills_the_leader_and_the_new_one_is_logged() {
        let mut c = control();
        assert_eq!(log(&c), ["node 1 leads (epoch 1001)"]);
        assert_eq!(c.update(key('k')), [Cmd::Kill(1)]);
        c.update(Event::Exited {
            id: 1,
            how: "signal: 9 (SIGKILL)".into(),
        });
        c.update(Event::Status {
            id: 1,
            result: Err("connection refused".into()),
        });
        c.update(Event::Status {
            id: 2,
            result: Ok(status(2, Role::Leader, 2, 2002, &[2, 3])),
        });
        assert_eq!(
            log(&c),
            [
                "node 1 leads (epoch 1001)",
                "killed leader 1",
                "node 2 leads (epoch 2002)"
            ]
        );
        assert_eq!(c.in_sync(3), Some(true));
        assert_eq!(c.in_sync(1), Some(false));
        assert_eq!(c.update(key('k')), [Cmd::Kill(2)]);
    }

    #[test]
    fn a_restarted_node_says_whom_it_follows() {
        let mut c = control();
        c.update(key('3'));
        c.update(Event::Exited {
            id: 3,
            how: "killed".into(),
        });
        assert_eq!(c.update(key('3')), [], "not running: nothing to kill");
        c.update(key('r'));
        assert!(c.restart_armed);
        assert_eq!(c.update(key('3')), [Cmd::Start(3)]);
        c.update(Event::Running {
            id: 3,
            pid: 200,
            restart: true,
        });
        c.update(Event::Status {
            id: 3,
            result: Ok(status(3, Role::Follower, 1, 1001, &[1, 2])),
        });
        assert_eq!(
            &log(&c)[1..],
            [
                "killed node 3",
                "node 3 is not running",
                "restarting node 3 (pid 200)",
                "node 3 restarted, following 1"
            ]
        );
        assert_eq!(c.update(key('#')), [], "running already");
    }

    #[test]
    fn shift_digit_restarts_and_q_quits() {
        let mut c = control();
        c.update(key('2'));
        c.update(Event::Exited {
            id: 2,
            how: "killed".into(),
        });
        assert_eq!(c.update(key('@')), [Cmd::Start(2)]);
        assert_eq!(c.update(key('q')), [Cmd::Quit]);
    }

    #[test]
    fn silence_that_was_not_ordered_is_news_once() {
        let mut c = control();
        for _ in 0..2 {
            c.update(Event::Status {
                id: 2,
                result: Err("refused".into()),
            });
        }
        c.update(Event::Status {
            id: 2,
            result: Ok(status(2, Role::Follower, 1, 1001, &[1, 2, 3])),
        });
        assert_eq!(
            &log(&c)[1..],
            ["node 2 stopped answering", "node 2 answers again"]
        );
    }
}
