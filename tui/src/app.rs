//! The client's state and its one entry point, `App::update(Action) -> Vec<Command>`: keys, pastes, resizes,
//! ticks and client events go in; plain `Command`s (what to ask of the network client) come out. Nothing here
//! does I/O or reads the clock, so every behaviour can be driven and checked by tests.

use std::collections::{BTreeMap, BTreeSet};

use baton_proto::limits;
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::client::{
    Account, ClientEvent, ClusterView, Conversation, Failover, LocalId, Message, Outgoing,
};
use crate::composer::Composer;
use crate::ui;

/// How many failovers the status panel remembers.
const FAILOVER_LOG: usize = 50;
/// How long a notice stays in the status line.
pub const NOTICE_MS: i64 = 15_000;

/// Everything that can happen to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Key(KeyEvent),
    /// A bracketed paste: arrives whole, so a multi-line paste stays in the composer until Enter.
    Paste(String),
    Resize(u16, u16),
    Client(ClientEvent),
    /// The slow tick with the current wall-clock time (ms since the epoch), for "5s ago" texts.
    Tick(i64),
}

/// What the app wants done; main.rs maps each one to a `Client` call (or a terminal operation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    CreateAccount {
        username: String,
        password: String,
    },
    Login {
        username: String,
        password: String,
    },
    Logout,
    DeleteAccount {
        password: String,
    },
    Send {
        to: String,
        body: String,
    },
    Retry {
        local_id: LocalId,
    },
    LoadConversations,
    LoadHistory {
        peer: String,
        before_id: u64,
    },
    SearchAccounts {
        pattern: String,
        page_token: String,
    },
    MarkRead {
        peer: String,
        up_to_id: u64,
    },
    DeleteMessages {
        ids: Vec<u64>,
    },
    /// Ctrl-L: clear the terminal and draw everything again.
    Redraw,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    SignIn,
    Main,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    SignIn,
    Create,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Username,
    Password,
    Repeat,
}

#[derive(Debug, Clone)]
pub struct SignIn {
    pub mode: AuthMode,
    pub focus: Field,
    pub username: Composer,
    pub password: Composer,
    pub repeat: Composer,
    pub error: Option<String>,
    /// What to do about a refusal from the server (local checks explain themselves).
    pub hint: Option<String>,
    /// A request is out and no answer has come yet.
    pub waiting: bool,
}

#[derive(Debug, Clone)]
pub struct Search {
    pub input: Composer,
    /// The glob last sent (what results must match to be shown).
    pub pattern: String,
    pub results: Vec<Account>,
    pub selected: usize,
    /// Page tokens of the pages shown so far; the last one is the current page's.
    pub pages: Vec<String>,
    pub next_page_token: String,
    pub loading: bool,
}

#[derive(Debug, Clone)]
pub enum Popup {
    Help {
        scroll: usize,
    },
    ConfirmQuit,
    Search(Search),
    /// Ctrl-O: log out or delete the account.
    AccountMenu,
    DeleteAccount {
        password: Composer,
        error: Option<String>,
        /// Sent, no answer yet: the dialog stays ("checking…") until the account is gone or refused.
        checking: bool,
    },
    ConfirmDelete {
        ids: Vec<u64>,
    },
}

/// Selecting messages to delete.
#[derive(Debug, Clone, Default)]
pub struct DeleteMode {
    /// Id of the message under the cursor.
    pub cursor: u64,
    pub selected: BTreeSet<u64>,
}

/// One conversation in the list, with when it last saw activity (for ordering; a conversation just started
/// from the search has no message yet but belongs at the top).
#[derive(Debug, Clone)]
pub struct ConvEntry {
    pub conv: Conversation,
    pub activity_ms: i64,
}

/// The messages held for one peer.
#[derive(Debug, Clone, Default)]
pub struct Thread {
    pub messages: BTreeMap<u64, Message>,
    /// At least the newest page was loaded.
    pub loaded: bool,
    pub loading: bool,
    pub has_more: bool,
    /// Where the unread messages started when the conversation was opened (the "new" marker line).
    pub unread_from: Option<u64>,
}

/// A message I typed that the cluster has not acknowledged (yet, or ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub local_id: LocalId,
    pub to: String,
    pub body: String,
    /// `None` while pending; the reason once refused.
    pub failed: Option<String>,
    pub since_ms: i64,
}

#[derive(Debug, Clone)]
pub struct App {
    pub now_ms: i64,
    /// Local time zone, in seconds east of UTC, for timestamps.
    pub utc_offset_s: i32,
    pub width: u16,
    pub height: u16,
    pub servers: Vec<String>,
    pub screen: Screen,
    pub signin: SignIn,
    pub me: Option<String>,
    pub conversations: Vec<ConvEntry>,
    pub selected: Option<String>,
    pub threads: BTreeMap<String, Thread>,
    pub outbox: Vec<OutboxEntry>,
    pub composer: Composer,
    /// Lines scrolled up from the bottom of the message pane (0 = following new messages).
    pub scroll: usize,
    pub popup: Option<Popup>,
    pub delete_mode: Option<DeleteMode>,
    pub status_panel: bool,
    pub cluster: ClusterView,
    /// When `cluster` arrived, so that "last heartbeat" keeps ageing between updates.
    pub cluster_at_ms: i64,
    pub failovers: Vec<Failover>,
    pub notice: Option<(String, i64)>,
    /// The highest `up_to_id` asked to be marked read, per peer: a MarkRead goes out only when it grows.
    pub marked_up_to: BTreeMap<String, u64>,
}

impl App {
    pub fn new(servers: Vec<String>, user: Option<String>, now_ms: i64, utc_offset_s: i32) -> App {
        let mut username = Composer::default();
        let focus = match user {
            Some(u) => {
                username.insert_single_line(&u);
                Field::Password
            }
            None => Field::Username,
        };
        App {
            now_ms,
            utc_offset_s,
            width: 80,
            height: 24,
            servers,
            screen: Screen::SignIn,
            signin: SignIn {
                mode: AuthMode::SignIn,
                focus,
                username,
                password: Composer::default(),
                repeat: Composer::default(),
                error: None,
                hint: None,
                waiting: false,
            },
            me: None,
            conversations: Vec::new(),
            selected: None,
            threads: BTreeMap::new(),
            outbox: Vec::new(),
            composer: Composer::default(),
            scroll: 0,
            popup: None,
            delete_mode: None,
            status_panel: false,
            cluster: ClusterView::default(),
            cluster_at_ms: now_ms,
            failovers: Vec::new(),
            notice: None,
            marked_up_to: BTreeMap::new(),
        }
    }

    pub fn update(&mut self, action: Action) -> Vec<Command> {
        match action {
            Action::Key(k) if k.kind == KeyEventKind::Release => Vec::new(),
            Action::Key(k) => {
                let mut cmds = self.on_key(k);
                // Scrolled back down to the newest messages (End, PgDn, Esc, sending): now they are seen.
                cmds.extend(self.mark_current_read());
                cmds
            }
            Action::Paste(text) => self.on_paste(&text),
            Action::Resize(w, h) => {
                self.width = w;
                self.height = h;
                self.clamp_scroll();
                self.mark_current_read()
            }
            Action::Tick(now) => {
                self.now_ms = now;
                Vec::new()
            }
            Action::Client(ev) => self.on_client(ev),
        }
    }

    // ----- queries used by the renderer -----

    pub fn notice_text(&self) -> Option<&str> {
        self.notice
            .as_ref()
            .filter(|(_, at)| self.now_ms - at < NOTICE_MS)
            .map(|(s, _)| s.as_str())
    }

    pub fn current(&self) -> Option<&ConvEntry> {
        let peer = self.selected.as_ref()?;
        self.conversations.iter().find(|c| &c.conv.peer == peer)
    }

    pub fn current_thread(&self) -> Option<&Thread> {
        self.threads.get(self.selected.as_ref()?)
    }

    /// Outgoing messages to `peer` not yet acknowledged, oldest first.
    pub fn outbox_for<'a>(&'a self, peer: &'a str) -> impl Iterator<Item = &'a OutboxEntry> + 'a {
        self.outbox.iter().filter(move |o| o.to == peer)
    }

    pub fn pending_count(&self) -> usize {
        self.outbox.iter().filter(|o| o.failed.is_none()).count()
    }

    /// "Last heartbeat" as of now: the client's figure plus the time since it told us.
    pub fn heartbeat_age(&self) -> Option<std::time::Duration> {
        let extra = (self.now_ms - self.cluster_at_ms).max(0) as u64;
        self.cluster
            .last_heartbeat_ago
            .map(|d| d + std::time::Duration::from_millis(extra))
    }

    // ----- events from the client -----

    fn on_client(&mut self, ev: ClientEvent) -> Vec<Command> {
        match ev {
            ClientEvent::Cluster(view) => {
                self.cluster = view;
                self.cluster_at_ms = self.now_ms;
                Vec::new()
            }
            ClientEvent::Failover(f) => {
                self.failovers.push(f);
                if self.failovers.len() > FAILOVER_LOG {
                    self.failovers.remove(0);
                }
                // The new stream resumes after the newest message seen, so receipts for older ones that
                // fell into the gap come back only with a fresh list and page.
                self.refresh()
            }
            ClientEvent::LoggedIn { username, unread } => {
                let unread_text = match unread {
                    0 => "no unread messages".to_string(),
                    1 => "1 unread message".to_string(),
                    n => format!("{n} unread messages"),
                };
                self.set_notice(format!("Signed in as {username} · {unread_text}"));
                self.me = Some(username);
                self.screen = Screen::Main;
                self.signin.waiting = false;
                self.signin.error = None;
                self.signin.password.clear();
                self.signin.repeat.clear();
                vec![Command::LoadConversations]
            }
            ClientEvent::AuthFailed(msg) => {
                self.signin.waiting = false;
                self.signin.error = Some(crate::sanitize::sanitize_line(&msg));
                self.signin.hint = hint_for(&msg, &self.servers);
                // A refused name says nothing against the password: keep it (and its repetition).
                let about_name = msg.to_lowercase().contains("name");
                if !about_name {
                    self.signin.password.clear();
                    self.signin.repeat.clear();
                }
                self.signin.focus = if about_name {
                    Field::Username
                } else {
                    Field::Password
                };
                Vec::new()
            }
            ClientEvent::LoggedOut => {
                self.reset_session();
                self.set_notice("Signed out".into());
                Vec::new()
            }
            ClientEvent::AccountDeleted => {
                self.reset_session();
                self.signin.username.clear();
                self.signin.focus = Field::Username;
                self.set_notice("Account deleted".into());
                Vec::new()
            }
            ClientEvent::Conversations(list) => {
                let mut entries: Vec<ConvEntry> = list
                    .into_iter()
                    .map(|conv| ConvEntry {
                        activity_ms: conv.last.as_ref().map_or(0, |m| m.sent_at_ms),
                        conv,
                    })
                    .collect();
                // Keep conversations started here that the server does not know yet (no message sent).
                for old in &self.conversations {
                    if !entries.iter().any(|e| e.conv.peer == old.conv.peer) {
                        entries.push(old.clone());
                    }
                }
                self.conversations = entries;
                for e in &self.conversations {
                    if let Some(m) = &e.conv.last {
                        self.threads
                            .entry(e.conv.peer.clone())
                            .or_default()
                            .messages
                            .entry(m.id)
                            .or_insert_with(|| m.clone());
                    }
                }
                self.sort_conversations();
                if self.selected.is_none() {
                    if let Some(first) = self.conversations.first() {
                        let peer = first.conv.peer.clone();
                        return self.select(peer);
                    }
                    Vec::new()
                } else {
                    self.open_current()
                }
            }
            ClientEvent::History {
                peer,
                before_id,
                messages,
                has_more,
            } => {
                let t = self.threads.entry(peer.clone()).or_default();
                if before_id == 0 {
                    if !t.loaded {
                        t.has_more = has_more;
                    }
                    t.loaded = true;
                } else {
                    t.has_more = has_more;
                }
                t.loading = false;
                for mut m in messages {
                    // A read mark made here may not have reached the server when it answered.
                    if t.messages.get(&m.id).is_some_and(|old| old.read) {
                        m.read = true;
                    }
                    t.messages.insert(m.id, m);
                }
                if self.selected.as_deref() == Some(peer.as_str()) {
                    self.open_current()
                } else {
                    Vec::new()
                }
            }
            ClientEvent::Message(m) => self.on_message(m),
            ClientEvent::Deleted(ids) => {
                let ids: BTreeSet<u64> = ids.into_iter().collect();
                for t in self.threads.values_mut() {
                    t.messages.retain(|id, _| !ids.contains(id));
                }
                for e in &mut self.conversations {
                    if e.conv.last.as_ref().is_some_and(|m| ids.contains(&m.id)) {
                        e.conv.last = self
                            .threads
                            .get(&e.conv.peer)
                            .and_then(|t| t.messages.values().next_back().cloned());
                    }
                }
                if let Some(d) = &mut self.delete_mode {
                    d.selected.retain(|id| !ids.contains(id));
                    if ids.contains(&d.cursor) {
                        self.delete_mode = None;
                    }
                }
                self.clamp_scroll();
                Vec::new()
            }
            ClientEvent::Read(ids) => {
                let ids: BTreeSet<u64> = ids.into_iter().collect();
                for t in self.threads.values_mut() {
                    for (id, m) in t.messages.iter_mut() {
                        if ids.contains(id) {
                            m.read = true;
                        }
                    }
                }
                Vec::new()
            }
            ClientEvent::Outgoing {
                local_id,
                to,
                body,
                state,
            } => match state {
                Outgoing::Pending | Outgoing::Failed(_) => {
                    let failed = match state {
                        Outgoing::Failed(why) => Some(why),
                        _ => None,
                    };
                    if let Some(o) = self.outbox.iter_mut().find(|o| o.local_id == local_id) {
                        o.failed = failed;
                    } else {
                        self.outbox.push(OutboxEntry {
                            local_id,
                            to: to.clone(),
                            body,
                            failed,
                            since_ms: self.now_ms,
                        });
                    }
                    self.touch_conversation(&to);
                    Vec::new()
                }
                Outgoing::Sent(m) => {
                    self.outbox.retain(|o| o.local_id != local_id);
                    self.on_message(m)
                }
            },
            ClientEvent::Accounts {
                pattern,
                accounts,
                next_page_token,
            } => {
                if let Some(Popup::Search(s)) = &mut self.popup
                    && s.pattern == pattern
                {
                    s.results = accounts;
                    s.next_page_token = next_page_token;
                    s.selected = 0;
                    s.loading = false;
                }
                Vec::new()
            }
            ClientEvent::DeleteAccountFailed(why) => {
                let why = capitalise(&crate::sanitize::sanitize_line(&why));
                match &mut self.popup {
                    Some(Popup::DeleteAccount {
                        error, checking, ..
                    }) => {
                        *checking = false;
                        *error = Some(why);
                    }
                    _ => self.set_notice(format!("Account not deleted: {why}")),
                }
                Vec::new()
            }
            ClientEvent::Notice(text) => {
                let text = crate::sanitize::sanitize_line(&text);
                self.set_notice(text);
                Vec::new()
            }
        }
    }

    fn on_message(&mut self, m: Message) -> Vec<Command> {
        let Some(me) = self.me.clone() else {
            return Vec::new();
        };
        let peer = if m.sender == me {
            m.recipient.clone()
        } else {
            m.sender.clone()
        };
        if !m.client_message_id.is_empty() && m.sender == me {
            self.outbox.retain(|o| o.local_id.0 != m.client_message_id);
        }
        let thread = self.threads.entry(peer.clone()).or_default();
        if let Some(old) = thread.messages.get_mut(&m.id) {
            // A replay (after a reconnect or a failover) carries the message as it is now: take its read
            // flag (a receipt may have been missed meanwhile), never undoing a read mark made here.
            let read = old.read || m.read;
            *old = Message { read, ..m };
            let now = old.clone();
            if let Some(e) = self.conversations.iter_mut().find(|e| e.conv.peer == peer)
                && let Some(l) = &mut e.conv.last
                && l.id == now.id
            {
                *l = now;
            }
            return Vec::new();
        }
        thread.messages.insert(m.id, m.clone());
        let from_peer = m.sender != me;
        match self.conversations.iter_mut().find(|e| e.conv.peer == peer) {
            Some(e) => {
                let newer = e.conv.last.as_ref().is_none_or(|l| m.id > l.id);
                if newer {
                    if from_peer && !m.read {
                        e.conv.unread += 1;
                    }
                    e.activity_ms = e.activity_ms.max(m.sent_at_ms);
                    e.conv.last = Some(m.clone());
                }
            }
            None => self.conversations.push(ConvEntry {
                conv: Conversation {
                    peer: peer.clone(),
                    unread: u64::from(from_peer && !m.read),
                    last: Some(m.clone()),
                    peer_online: false,
                },
                activity_ms: m.sent_at_ms,
            }),
        }
        self.sort_conversations();
        if self.selected.is_none() {
            return self.select(peer);
        }
        if self.selected.as_deref() == Some(peer.as_str()) {
            // Keep the view where the person put it: when scrolled up, grow the offset so the same lines stay.
            if self.scroll > 0 {
                self.scroll += self.message_lines_of(&m);
            }
            return self.mark_current_read();
        }
        Vec::new()
    }

    /// Rows one message takes in the message pane (to keep a scrolled view still while new ones arrive).
    fn message_lines_of(&self, m: &Message) -> usize {
        let width = ui::layout::message_inner_width(self);
        ui::messages::message_rows(self, m, width).max(1)
    }

    fn touch_conversation(&mut self, peer: &str) {
        let now = self.now_ms;
        match self.conversations.iter_mut().find(|e| e.conv.peer == peer) {
            Some(e) => e.activity_ms = e.activity_ms.max(now),
            None => self.conversations.push(ConvEntry {
                conv: Conversation {
                    peer: peer.to_string(),
                    last: None,
                    unread: 0,
                    peer_online: false,
                },
                activity_ms: now,
            }),
        }
        self.sort_conversations();
    }

    fn sort_conversations(&mut self) {
        self.conversations.sort_by(|a, b| {
            b.activity_ms
                .cmp(&a.activity_ms)
                .then_with(|| a.conv.peer.cmp(&b.conv.peer))
        });
    }

    fn reset_session(&mut self) {
        let keep = (
            self.now_ms,
            self.utc_offset_s,
            self.width,
            self.height,
            self.servers.clone(),
            self.cluster.clone(),
            self.cluster_at_ms,
            self.failovers.clone(),
            self.status_panel,
        );
        let user = self.me.take();
        *self = App::new(keep.4, user, keep.0, keep.1);
        self.width = keep.2;
        self.height = keep.3;
        self.cluster = keep.5;
        self.cluster_at_ms = keep.6;
        self.failovers = keep.7;
        self.status_panel = keep.8;
    }

    /// Asks again for the conversation list and the open conversation's newest page; what comes back
    /// updates what is held (read flags included) without moving the view.
    fn refresh(&mut self) -> Vec<Command> {
        if self.me.is_none() {
            return Vec::new();
        }
        let mut cmds = vec![Command::LoadConversations];
        if let Some(peer) = self.selected.clone()
            && self.threads.get(&peer).is_some_and(|t| t.loaded)
        {
            cmds.push(Command::LoadHistory { peer, before_id: 0 });
        }
        cmds
    }

    fn set_notice(&mut self, text: String) {
        self.notice = Some((text, self.now_ms));
    }

    // ----- conversations -----

    fn select(&mut self, peer: String) -> Vec<Command> {
        if self.selected.as_deref() != Some(peer.as_str()) {
            if let Some(old) = self.selected.as_ref().and_then(|p| self.threads.get_mut(p)) {
                old.unread_from = None;
            }
            self.selected = Some(peer.clone());
            self.scroll = 0;
            self.delete_mode = None;
            let t = self.threads.entry(peer).or_default();
            t.unread_from = None;
        }
        self.open_current()
    }

    /// Loads the newest page if it is not there yet, and marks what is shown as read.
    fn open_current(&mut self) -> Vec<Command> {
        let Some(peer) = self.selected.clone() else {
            return Vec::new();
        };
        let t = self.threads.entry(peer.clone()).or_default();
        let mut cmds = Vec::new();
        if !t.loaded && !t.loading {
            t.loading = true;
            cmds.push(Command::LoadHistory {
                peer: peer.clone(),
                before_id: 0,
            });
        }
        cmds.extend(self.mark_current_read());
        cmds
    }

    fn mark_current_read(&mut self) -> Vec<Command> {
        // Scrolled up, the newest messages are out of sight: they are read once the person is back at
        // the bottom.
        if self.screen != Screen::Main || self.scroll > 0 {
            return Vec::new();
        }
        let (Some(peer), Some(me)) = (self.selected.clone(), self.me.clone()) else {
            return Vec::new();
        };
        let Some(t) = self.threads.get_mut(&peer) else {
            return Vec::new();
        };
        if !t.loaded {
            // Wait for the history: it tells where the unread messages start.
            return Vec::new();
        }
        let unread: Vec<u64> = t
            .messages
            .values()
            .filter(|m| m.sender != me && !m.read)
            .map(|m| m.id)
            .collect();
        let Some(&up_to) = unread.last() else {
            if let Some(e) = self.conversations.iter_mut().find(|e| e.conv.peer == peer) {
                e.conv.unread = 0;
            }
            return Vec::new();
        };
        if t.unread_from.is_none() {
            t.unread_from = unread.first().copied();
        }
        for id in &unread {
            if let Some(m) = t.messages.get_mut(id) {
                m.read = true;
            }
        }
        if let Some(e) = self.conversations.iter_mut().find(|e| e.conv.peer == peer) {
            e.conv.unread = 0;
            if let Some(l) = &mut e.conv.last
                && l.id <= up_to
            {
                l.read = true;
            }
        }
        let marked = self.marked_up_to.entry(peer.clone()).or_insert(0);
        if up_to <= *marked {
            return Vec::new();
        }
        *marked = up_to;
        vec![Command::MarkRead {
            peer,
            up_to_id: up_to,
        }]
    }

    fn selected_index(&self) -> Option<usize> {
        let peer = self.selected.as_ref()?;
        self.conversations.iter().position(|e| &e.conv.peer == peer)
    }

    fn select_index(&mut self, i: usize) -> Vec<Command> {
        match self.conversations.get(i) {
            Some(e) => {
                let peer = e.conv.peer.clone();
                self.select(peer)
            }
            None => Vec::new(),
        }
    }

    fn select_relative(&mut self, forward: bool) -> Vec<Command> {
        let n = self.conversations.len();
        if n == 0 {
            return Vec::new();
        }
        let i = match self.selected_index() {
            Some(i) if forward => (i + 1) % n,
            Some(i) => (i + n - 1) % n,
            None => 0,
        };
        self.select_index(i)
    }

    fn select_next_unread(&mut self) -> Vec<Command> {
        let n = self.conversations.len();
        let start = self.selected_index().map_or(0, |i| i + 1);
        for k in 0..n {
            let i = (start + k) % n;
            if self.conversations[i].conv.unread > 0 {
                return self.select_index(i);
            }
        }
        self.set_notice("No unread conversations".into());
        Vec::new()
    }

    // ----- scrolling -----

    /// (rows of the current conversation, rows visible), where the first counts only up to `need` rows
    /// more than are visible (past that, the exact figure does not matter to the caller, and it would
    /// mean wrapping the whole history).
    fn viewport(&self, need: usize) -> (usize, usize) {
        let width = ui::layout::message_inner_width(self);
        let height = ui::layout::message_inner_height(self);
        let need = need.saturating_add(height).saturating_add(1);
        (ui::messages::tail_lines(self, width, need).len(), height)
    }

    fn clamp_scroll(&mut self) {
        let (total, height) = self.viewport(self.scroll);
        self.scroll = self.scroll.min(total.saturating_sub(height));
    }

    fn scroll_by(&mut self, up: bool, amount: usize) -> Vec<Command> {
        let (total, height) = self.viewport(if up {
            self.scroll.saturating_add(amount)
        } else {
            self.scroll
        });
        let max = total.saturating_sub(height);
        self.scroll = if up {
            (self.scroll + amount).min(max)
        } else {
            self.scroll.saturating_sub(amount)
        };
        if up && self.scroll >= max {
            return self.load_older();
        }
        Vec::new()
    }

    fn load_older(&mut self) -> Vec<Command> {
        let Some(peer) = self.selected.clone() else {
            return Vec::new();
        };
        let Some(t) = self.threads.get_mut(&peer) else {
            return Vec::new();
        };
        if !t.has_more || t.loading || !t.loaded {
            return Vec::new();
        }
        let Some(&oldest) = t.messages.keys().next() else {
            return Vec::new();
        };
        t.loading = true;
        vec![Command::LoadHistory {
            peer,
            before_id: oldest,
        }]
    }

    fn page(&self) -> usize {
        ui::layout::message_inner_height(self)
            .saturating_sub(1)
            .max(1)
    }

    // ----- keys -----

    fn on_paste(&mut self, text: &str) -> Vec<Command> {
        match &mut self.popup {
            Some(Popup::Search(s)) => {
                s.input.insert_single_line(text);
                return self.search_again();
            }
            Some(Popup::DeleteAccount {
                password, checking, ..
            }) => {
                if !*checking {
                    password.insert_single_line(text);
                }
                return Vec::new();
            }
            Some(_) => return Vec::new(),
            None => {}
        }
        match self.screen {
            Screen::SignIn => self.focused_field().insert_single_line(text),
            Screen::Main if self.delete_mode.is_none() => self.composer.insert_str(text),
            Screen::Main => {}
        }
        Vec::new()
    }

    fn focused_field(&mut self) -> &mut Composer {
        match self.signin.focus {
            Field::Username => &mut self.signin.username,
            Field::Password => &mut self.signin.password,
            Field::Repeat => &mut self.signin.repeat,
        }
    }

    fn on_key(&mut self, k: KeyEvent) -> Vec<Command> {
        if self.popup.is_some() {
            return self.on_popup_key(k);
        }
        // Keys that mean the same everywhere.
        match (k.code, k.modifiers) {
            (KeyCode::F(1), _) => {
                self.popup = Some(Popup::Help { scroll: 0 });
                return Vec::new();
            }
            (KeyCode::F(2), _) => {
                self.status_panel = !self.status_panel;
                self.clamp_scroll();
                return Vec::new();
            }
            (KeyCode::Char('l'), KeyModifiers::CONTROL) => return vec![Command::Redraw],
            _ => {}
        }
        match self.screen {
            Screen::SignIn => self.on_signin_key(k),
            Screen::Main if self.delete_mode.is_some() => self.on_delete_mode_key(k),
            Screen::Main => self.on_main_key(k),
        }
    }

    fn on_signin_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let create = self.signin.mode == AuthMode::Create;
        let next = |f: Field| match f {
            Field::Username => Field::Password,
            Field::Password if create => Field::Repeat,
            Field::Password | Field::Repeat => Field::Username,
        };
        let prev = |f: Field| match f {
            Field::Username if create => Field::Repeat,
            Field::Username => Field::Password,
            Field::Password => Field::Username,
            Field::Repeat => Field::Password,
        };
        match (k.code, k.modifiers) {
            (KeyCode::Char('c'), KeyModifiers::CONTROL) => {
                if self.focused_field().is_empty() {
                    self.popup = Some(Popup::ConfirmQuit);
                } else {
                    self.focused_field().clear();
                }
            }
            (KeyCode::Char('t'), KeyModifiers::CONTROL) => {
                self.signin.mode = if create {
                    AuthMode::SignIn
                } else {
                    AuthMode::Create
                };
                self.signin.error = None;
                self.signin.hint = None;
                self.signin.repeat.clear();
                if self.signin.focus == Field::Repeat {
                    self.signin.focus = Field::Password;
                }
            }
            (KeyCode::Tab | KeyCode::Down, _) => self.signin.focus = next(self.signin.focus),
            (KeyCode::BackTab | KeyCode::Up, _) => self.signin.focus = prev(self.signin.focus),
            (KeyCode::Enter, _) => {
                let last = if create {
                    Field::Repeat
                } else {
                    Field::Password
                };
                if self.signin.focus == last || self.fields_complete() {
                    return self.submit_signin();
                }
                self.signin.focus = next(self.signin.focus);
            }
            (KeyCode::Esc, _) => self.signin.error = None,
            _ => {
                let field = match self.signin.focus {
                    Field::Username => &mut self.signin.username,
                    Field::Password => &mut self.signin.password,
                    Field::Repeat => &mut self.signin.repeat,
                };
                edit_line(field, k);
            }
        }
        Vec::new()
    }

    fn fields_complete(&self) -> bool {
        let s = &self.signin;
        !s.username.is_empty()
            && !s.password.is_empty()
            && (s.mode == AuthMode::SignIn || !s.repeat.is_empty())
    }

    fn submit_signin(&mut self) -> Vec<Command> {
        if self.signin.waiting {
            return Vec::new();
        }
        let username = self.signin.username.text().trim().to_string();
        let password = self.signin.password.text().to_string();
        let create = self.signin.mode == AuthMode::Create;
        let problem = if username.is_empty() {
            Some((Field::Username, "Type your username".to_string()))
        } else if create && let Err(e) = limits::check_username(&username) {
            Some((Field::Username, capitalise(&e)))
        } else if password.is_empty() {
            Some((Field::Password, "Type your password".to_string()))
        } else if create && let Err(e) = limits::check_password(&password) {
            Some((Field::Password, capitalise(&e)))
        } else if create && self.signin.repeat.text() != password {
            self.signin.repeat.clear();
            Some((
                Field::Repeat,
                "The passwords differ: type it again".to_string(),
            ))
        } else {
            None
        };
        self.signin.hint = None;
        if let Some((field, msg)) = problem {
            self.signin.focus = field;
            self.signin.error = Some(msg);
            return Vec::new();
        }
        self.signin.error = None;
        self.signin.waiting = true;
        if create {
            vec![Command::CreateAccount { username, password }]
        } else {
            vec![Command::Login { username, password }]
        }
    }

    fn on_main_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let composer_empty = self.composer.is_empty();
        let ctrl = KeyModifiers::CONTROL;
        let alt = KeyModifiers::ALT;
        match (k.code, k.modifiers) {
            (KeyCode::Char('c'), m) if m == ctrl => {
                if composer_empty {
                    self.popup = Some(Popup::ConfirmQuit);
                } else {
                    self.composer.clear();
                }
            }
            (KeyCode::Char('?'), m) if composer_empty && !m.intersects(ctrl | alt) => {
                self.popup = Some(Popup::Help { scroll: 0 });
            }
            (KeyCode::Char('/'), m) if composer_empty && !m.intersects(ctrl | alt) => {
                return self.open_search();
            }
            (KeyCode::Char('f'), m) if m == ctrl => return self.open_search(),
            (KeyCode::Char('o'), m) if m == ctrl => self.popup = Some(Popup::AccountMenu),
            (KeyCode::Char('x'), m) if m == ctrl => self.enter_delete_mode(),
            (KeyCode::Char('r'), m) if m == ctrl => return self.retry_failed(),
            (KeyCode::Char('n'), m) if m == ctrl => return self.select_relative(true),
            (KeyCode::Char('p'), m) if m == ctrl => return self.select_relative(false),
            (KeyCode::Char('a'), m) if m == alt => return self.select_next_unread(),
            (KeyCode::Char(c @ '1'..='9'), m) if m == alt => {
                return self.select_index(c as usize - '1' as usize);
            }
            (KeyCode::PageUp, _) => return self.scroll_by(true, self.page()),
            (KeyCode::PageDown, _) => return self.scroll_by(false, self.page()),
            (KeyCode::Home, _) => return self.scroll_by(true, usize::MAX / 2),
            (KeyCode::End, _) => self.scroll = 0,
            (KeyCode::Enter, m) if m.intersects(alt | KeyModifiers::SHIFT) => {
                self.composer.newline()
            }
            (KeyCode::Char('j'), m) if m == ctrl => self.composer.newline(),
            (KeyCode::Enter, _) => return self.send(),
            (KeyCode::Up, m) if m.is_empty() => {
                self.composer.up();
            }
            (KeyCode::Down, m) if m.is_empty() => {
                self.composer.down();
            }
            (KeyCode::Esc, _) => {
                self.notice = None;
                self.scroll = 0;
            }
            _ => {
                edit_line(&mut self.composer, k);
            }
        }
        Vec::new()
    }

    fn send(&mut self) -> Vec<Command> {
        if self.composer.is_empty() {
            return Vec::new();
        }
        let Some(to) = self.selected.clone() else {
            self.set_notice("No conversation open: Ctrl-F finds someone to write to".into());
            return Vec::new();
        };
        if let Err(e) = limits::check_body(self.composer.text()) {
            self.set_notice(capitalise(&e));
            return Vec::new();
        }
        let body = self.composer.take();
        self.scroll = 0;
        vec![Command::Send { to, body }]
    }

    fn retry_failed(&mut self) -> Vec<Command> {
        let Some(peer) = self.selected.clone() else {
            return Vec::new();
        };
        let mut cmds = Vec::new();
        for o in self.outbox.iter_mut().filter(|o| o.to == peer) {
            if o.failed.take().is_some() {
                cmds.push(Command::Retry {
                    local_id: o.local_id.clone(),
                });
            }
        }
        if cmds.is_empty() {
            self.set_notice("Nothing to retry here".into());
        }
        cmds
    }

    /// The ids of the current conversation's messages, oldest first (what delete mode walks through).
    fn current_ids(&self) -> Vec<u64> {
        self.current_thread()
            .map(|t| t.messages.keys().copied().collect())
            .unwrap_or_default()
    }

    fn enter_delete_mode(&mut self) {
        match self.current_ids().last() {
            Some(&newest) => {
                self.delete_mode = Some(DeleteMode {
                    cursor: newest,
                    selected: BTreeSet::new(),
                });
            }
            None => self.set_notice("No messages here to delete".into()),
        }
    }

    fn on_delete_mode_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let ids = self.current_ids();
        let Some(d) = self.delete_mode.as_mut() else {
            return Vec::new();
        };
        let pos = ids
            .iter()
            .position(|&id| id == d.cursor)
            .unwrap_or(ids.len().saturating_sub(1));
        let move_to = |p: usize| ids.get(p).copied();
        match (k.code, k.modifiers) {
            (KeyCode::Esc, _)
            | (KeyCode::Char('c'), KeyModifiers::CONTROL)
            | (KeyCode::Char('q'), _) => {
                self.delete_mode = None;
            }
            (KeyCode::Up | KeyCode::Char('k'), _) => {
                if let Some(id) = move_to(pos.saturating_sub(1)) {
                    d.cursor = id;
                }
            }
            (KeyCode::Down | KeyCode::Char('j'), _) => {
                if let Some(id) = move_to((pos + 1).min(ids.len().saturating_sub(1))) {
                    d.cursor = id;
                }
            }
            (KeyCode::PageUp, _) => {
                if let Some(id) = move_to(pos.saturating_sub(10)) {
                    d.cursor = id;
                }
                if pos < 10 {
                    return self.load_older();
                }
            }
            (KeyCode::PageDown, _) => {
                if let Some(id) = move_to((pos + 10).min(ids.len().saturating_sub(1))) {
                    d.cursor = id;
                }
            }
            (KeyCode::Char(' '), _) => {
                if d.selected.contains(&d.cursor) {
                    d.selected.remove(&d.cursor);
                } else {
                    d.selected.insert(d.cursor);
                }
            }
            (KeyCode::Enter | KeyCode::Delete | KeyCode::Char('d'), _) => {
                let ids: Vec<u64> = if d.selected.is_empty() {
                    vec![d.cursor]
                } else {
                    d.selected.iter().copied().collect()
                };
                self.popup = Some(Popup::ConfirmDelete { ids });
            }
            _ => {}
        }
        Vec::new()
    }

    fn open_search(&mut self) -> Vec<Command> {
        self.popup = Some(Popup::Search(Search {
            input: Composer::default(),
            pattern: String::new(),
            results: Vec::new(),
            selected: 0,
            pages: vec![String::new()],
            next_page_token: String::new(),
            loading: false,
        }));
        self.search_again()
    }

    /// Searches for what the search box holds, from its first page. Plain text matches anywhere in a name
    /// (`ali` searches `*ali*`); text with `*` or `?` is taken as the glob it is.
    fn search_again(&mut self) -> Vec<Command> {
        let Some(Popup::Search(s)) = &mut self.popup else {
            return Vec::new();
        };
        let typed = s.input.text().trim();
        let mut pattern = if typed.contains(['*', '?']) {
            typed.to_string()
        } else {
            format!("*{typed}*").replace("**", "*")
        };
        while pattern.len() > limits::PATTERN_MAX_BYTES {
            pattern.pop();
        }
        s.pattern = pattern.clone();
        s.pages = vec![String::new()];
        s.loading = true;
        vec![Command::SearchAccounts {
            pattern,
            page_token: String::new(),
        }]
    }

    fn on_popup_key(&mut self, k: KeyEvent) -> Vec<Command> {
        let Some(popup) = self.popup.as_mut() else {
            return Vec::new();
        };
        let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers == KeyModifiers::CONTROL;
        match popup {
            Popup::Help { scroll } => match k.code {
                KeyCode::Up | KeyCode::Char('k') => *scroll = scroll.saturating_sub(1),
                KeyCode::Down | KeyCode::Char('j') => *scroll += 1,
                KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
                KeyCode::PageDown | KeyCode::Char(' ') => *scroll += 10,
                KeyCode::Home => *scroll = 0,
                _ => self.popup = None,
            },
            Popup::ConfirmQuit => match k.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => return vec![Command::Quit],
                _ if ctrl_c => return vec![Command::Quit],
                _ => self.popup = None,
            },
            Popup::AccountMenu => match k.code {
                KeyCode::Char('l' | 'L') => {
                    self.popup = None;
                    self.set_notice("Signing out…".into());
                    return vec![Command::Logout];
                }
                KeyCode::Char('d' | 'D') => {
                    self.popup = Some(Popup::DeleteAccount {
                        password: Composer::default(),
                        error: None,
                        checking: false,
                    });
                }
                _ => self.popup = None,
            },
            Popup::DeleteAccount {
                password,
                error,
                checking,
            } => match k.code {
                KeyCode::Esc => self.popup = None,
                _ if ctrl_c => self.popup = None,
                // One request at a time; and nothing typed now can end up anywhere else.
                _ if *checking => {}
                KeyCode::Enter => {
                    if password.is_empty() {
                        *error = Some("Type your password to confirm".into());
                    } else {
                        *checking = true;
                        *error = None;
                        return vec![Command::DeleteAccount {
                            password: password.text().to_string(),
                        }];
                    }
                }
                _ => {
                    if edit_line(password, k) {
                        *error = None;
                    }
                }
            },
            Popup::ConfirmDelete { ids } => match k.code {
                KeyCode::Char('y' | 'Y') | KeyCode::Enter => {
                    let ids = std::mem::take(ids);
                    self.popup = None;
                    self.delete_mode = None;
                    return vec![Command::DeleteMessages { ids }];
                }
                _ => self.popup = None,
            },
            Popup::Search(s) => match k.code {
                KeyCode::Esc => self.popup = None,
                _ if ctrl_c => self.popup = None,
                KeyCode::Up => s.selected = s.selected.saturating_sub(1),
                KeyCode::Down => {
                    s.selected = (s.selected + 1).min(s.results.len().saturating_sub(1));
                }
                KeyCode::PageDown => {
                    if !s.next_page_token.is_empty() && !s.loading {
                        let token = s.next_page_token.clone();
                        s.pages.push(token.clone());
                        s.loading = true;
                        return vec![Command::SearchAccounts {
                            pattern: s.pattern.clone(),
                            page_token: token,
                        }];
                    }
                }
                KeyCode::PageUp => {
                    if s.pages.len() > 1 && !s.loading {
                        s.pages.pop();
                        s.loading = true;
                        return vec![Command::SearchAccounts {
                            pattern: s.pattern.clone(),
                            page_token: s.pages.last().cloned().unwrap_or_default(),
                        }];
                    }
                }
                KeyCode::Enter => {
                    if let Some(a) = s.results.get(s.selected).cloned() {
                        self.popup = None;
                        return self.start_conversation(a);
                    }
                }
                _ => {
                    let before = s.input.text().to_string();
                    edit_line(&mut s.input, k);
                    if s.input.text() != before {
                        return self.search_again();
                    }
                }
            },
        }
        Vec::new()
    }

    fn start_conversation(&mut self, account: Account) -> Vec<Command> {
        let now = self.now_ms;
        match self
            .conversations
            .iter_mut()
            .find(|e| e.conv.peer == account.username)
        {
            Some(e) => e.conv.peer_online = account.online,
            None => {
                self.conversations.push(ConvEntry {
                    conv: Conversation {
                        peer: account.username.clone(),
                        last: None,
                        unread: 0,
                        peer_online: account.online,
                    },
                    activity_ms: now,
                });
                self.sort_conversations();
            }
        }
        self.select(account.username)
    }
}

/// The editing keys shared by the composer and every one-line field: readline keys, arrows, typing.
/// Returns whether the key was one of them.
fn edit_line(c: &mut Composer, k: KeyEvent) -> bool {
    let ctrl = k.modifiers.contains(KeyModifiers::CONTROL);
    let alt = k.modifiers.contains(KeyModifiers::ALT);
    match k.code {
        KeyCode::Char('a') if ctrl => c.home(),
        KeyCode::Char('e') if ctrl => c.end(),
        KeyCode::Char('k') if ctrl => c.kill_to_end(),
        KeyCode::Char('u') if ctrl => c.kill_to_start(),
        KeyCode::Char('w') if ctrl => c.kill_word_back(),
        KeyCode::Char('h') if ctrl => c.backspace(),
        KeyCode::Char('b') if ctrl => c.left(),
        KeyCode::Char('d') if ctrl => c.delete(),
        KeyCode::Char('b') if alt => c.word_left(),
        KeyCode::Char('f') if alt => c.word_right(),
        KeyCode::Backspace if ctrl || alt => c.kill_word_back(),
        KeyCode::Backspace => c.backspace(),
        KeyCode::Delete => c.delete(),
        KeyCode::Left if ctrl || alt => c.word_left(),
        KeyCode::Right if ctrl || alt => c.word_right(),
        KeyCode::Left => c.left(),
        KeyCode::Right => c.right(),
        KeyCode::Char(ch) if !ctrl && !alt => c.insert_char(ch),
        _ => return false,
    }
    true
}

/// What to do about a sign-in refusal, guessed from the client's words (it tells people, not programs).
fn hint_for(error: &str, servers: &[String]) -> Option<String> {
    let e = error.to_lowercase();
    if e.contains("taken") || e.contains("exists") {
        Some("Choose another name, or press Ctrl-T to sign in with this one.".into())
    } else if e.contains("reach") || e.contains("unavailable") || e.contains("connect") {
        Some(format!(
            "Is a server running? Baton tries {}; change it with --server or the config file.",
            servers.join(", ")
        ))
    } else if e.contains("password") || e.contains("credentials") {
        Some("Check the password and try again; names ignore case, passwords do not.".into())
    } else if e.contains("no such") || e.contains("not found") || e.contains("unknown user") {
        Some("New here? Press Ctrl-T to create an account.".into())
    } else {
        None
    }
}

/// Limit messages start in lower case ("username must be..."); on their own in the UI they read better
/// capitalised.
fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
pub mod test_support {
    //! Helpers for driving the app in tests.
    use super::*;

    pub fn key(code: KeyCode, mods: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, mods)
    }

    pub fn press(app: &mut App, code: KeyCode) -> Vec<Command> {
        app.update(Action::Key(key(code, KeyModifiers::NONE)))
    }

    pub fn ctrl(app: &mut App, c: char) -> Vec<Command> {
        app.update(Action::Key(key(KeyCode::Char(c), KeyModifiers::CONTROL)))
    }

    pub fn alt(app: &mut App, code: KeyCode) -> Vec<Command> {
        app.update(Action::Key(key(code, KeyModifiers::ALT)))
    }

    pub fn type_str(app: &mut App, s: &str) -> Vec<Command> {
        let mut out = Vec::new();
        for c in s.chars() {
            out.extend(app.update(Action::Key(key(KeyCode::Char(c), KeyModifiers::NONE))));
        }
        out
    }

    pub fn event(app: &mut App, ev: ClientEvent) -> Vec<Command> {
        app.update(Action::Client(ev))
    }
}
