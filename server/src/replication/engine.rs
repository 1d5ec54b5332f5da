//! The pure decision core of replication: given this node's state and what it last heard from each peer,
//! what to do next. No I/O and no clocks: times are plain milliseconds passed in, so the rules are tested
//! directly (see the tests below).
//!
//! The rules (the user's design made safe):
//! - A follower whose leader has not answered for `election_timeout_ms` becomes a candidate.
//! - A candidate follows any live peer that leads an epoch at least as high as the candidate has promised.
//! - Otherwise it elects: take the view of the responder holding the highest `(epoch, seq)`; its in-sync set
//!   `S` names who holds every acknowledged write. Candidates are the responders in `S` that have followed
//!   without a break (`electable`), or every responder in `S` once all of `S` answers (a whole-cluster
//!   restart). Of those, the highest `(epoch, seq)` wins, then the lowest id. A fresh cluster (no view yet)
//!   waits for every configured peer. At least `min_replicas + 1` nodes must answer.
//! - Epochs are `term * EPOCH_STRIDE + leader_id`, so two leaders never share one; the new leader's term is
//!   one above every term it has heard of. Whoever sees a higher epoch steps down.

use std::collections::BTreeSet;

/// Node ids are below this, so the leader's id fits in its epoch.
pub const EPOCH_STRIDE: u64 = 1000;
pub const MAX_NODE_ID: u64 = EPOCH_STRIDE - 1;

pub fn term_of(epoch: u64) -> u64 {
    epoch / EPOCH_STRIDE
}

pub fn leader_of(epoch: u64) -> u64 {
    epoch % EPOCH_STRIDE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
}

/// What one node says of itself (its own, or a peer's last answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub id: u64,
    pub role: Role,
    /// The epoch of the leader it leads or follows; 0 when none.
    pub leader_epoch: u64,
    /// True when it has heard from that leader within the election timeout (or is that leader).
    pub leader_alive: bool,
    pub applied: (u64, u64),
    pub promised_epoch: u64,
    pub electable: bool,
    /// Its membership view: `(id, in_sync)`.
    pub members: Vec<(u64, bool)>,
}

impl View {
    fn in_sync_set(&self) -> BTreeSet<u64> {
        self.members
            .iter()
            .filter(|(_, s)| *s)
            .map(|(id, _)| *id)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub election_timeout_ms: u64,
    pub min_replicas: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stay,
    /// Follow the node `leader_id`, which leads `epoch`.
    Follow {
        leader_id: u64,
        epoch: u64,
    },
    /// Stop following: the leader is gone.
    StartElection,
    BecomeLeader {
        epoch: u64,
    },
    StepDown {
        seen_epoch: u64,
    },
}

/// Whether a node that was in sync still is, as far as it can tell. A follower vouches for holding every
/// acknowledged write only while the leader cannot have dropped it from the in-sync set without its
/// knowing: `lease_left_ms` is how long that still holds (learnt from the leader's answers to its
/// heartbeats), and a heartbeat of it is kept as margin.
pub fn still_electable(electable: bool, role: Role, lease_left_ms: u64, heartbeat_ms: u64) -> bool {
    electable && (role == Role::Leader || lease_left_ms > heartbeat_ms)
}

/// The winner of an election among `me` and the `responders` (fresh answers only), if one can be chosen.
/// `configured` are the peers given on the command line, used when nobody has a membership view yet.
pub fn election_winner(
    me: &View,
    responders: &[View],
    configured: &BTreeSet<u64>,
    min_replicas: usize,
) -> Option<u64> {
    let mut all: Vec<&View> = vec![me];
    all.extend(responders.iter().filter(|v| v.id != me.id));
    if all.len() < min_replicas + 1 {
        return None;
    }
    let best = all
        .iter()
        .max_by_key(|v| (v.applied, std::cmp::Reverse(v.id)))
        .expect("me is always present");
    let answered: BTreeSet<u64> = all.iter().map(|v| v.id).collect();
    let (s, everyone_needed) = if best.members.is_empty() {
        // Nobody has ever had a leader: a fresh cluster starts only with every configured peer present.
        let mut s = configured.clone();
        s.insert(me.id);
        (s, true)
    } else {
        (best.in_sync_set(), false)
    };
    let all_of_s_answered = s.is_subset(&answered);
    if everyone_needed && !all_of_s_answered {
        return None;
    }
    all.iter()
        .filter(|v| s.contains(&v.id) && (v.electable || all_of_s_answered))
        .max_by_key(|v| (v.applied, std::cmp::Reverse(v.id)))
        .map(|v| v.id)
}

/// The epoch a new leader `me` opens: one term above every term heard of.
pub fn next_epoch(me: &View, responders: &[View]) -> u64 {
    let highest = std::iter::once(me)
        .chain(responders)
        .flat_map(|v| [v.leader_epoch, v.applied.0, v.promised_epoch])
        .max()
        .unwrap_or(0);
    (term_of(highest) + 1) * EPOCH_STRIDE + me.id
}

/// One step of the role machine.
/// - `me`: this node's own view. `leader_silent_ms`: for a follower, how long since its leader last answered.
/// - `responders`: fresh peer answers.
pub fn tick(
    me: &View,
    leader_silent_ms: u64,
    responders: &[View],
    configured: &BTreeSet<u64>,
    settings: Settings,
) -> Action {
    let highest_seen = responders
        .iter()
        .flat_map(|v| [v.leader_epoch, v.promised_epoch])
        .max()
        .unwrap_or(0);
    // A live leader of a higher epoch than the one we lead or follow: go with it.
    let live_leader = responders
        .iter()
        .filter(|v| v.role == Role::Leader && v.leader_epoch >= me.promised_epoch)
        .max_by_key(|v| v.leader_epoch);
    match me.role {
        Role::Leader => {
            if highest_seen > me.leader_epoch {
                Action::StepDown {
                    seen_epoch: highest_seen,
                }
            } else {
                Action::Stay
            }
        }
        Role::Follower => {
            if let Some(l) = live_leader.filter(|l| l.leader_epoch > me.leader_epoch) {
                return Action::Follow {
                    leader_id: l.id,
                    epoch: l.leader_epoch,
                };
            }
            if leader_silent_ms >= settings.election_timeout_ms {
                Action::StartElection
            } else {
                Action::Stay
            }
        }
        Role::Candidate => {
            if let Some(l) = live_leader {
                return Action::Follow {
                    leader_id: l.id,
                    epoch: l.leader_epoch,
                };
            }
            // Someone still hears a leader at least as new as anything we promised: wait, it may be us who
            // is cut off.
            if responders.iter().any(|v| {
                v.role == Role::Follower && v.leader_alive && v.leader_epoch >= me.promised_epoch
            }) {
                return Action::Stay;
            }
            match election_winner(me, responders, configured, settings.min_replicas) {
                Some(w) if w == me.id => Action::BecomeLeader {
                    epoch: next_epoch(me, responders),
                },
                _ => Action::Stay,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, applied: (u64, u64), electable: bool, members: &[(u64, bool)]) -> View {
        View {
            id,
            role: Role::Candidate,
            leader_epoch: 0,
            leader_alive: false,
            applied,
            promised_epoch: applied.0,
            electable,
            members: members.to_vec(),
        }
    }

    const S3: &[(u64, bool)] = &[(1, true), (2, true), (3, true)];
    const SETTINGS: Settings = Settings {
        election_timeout_ms: 500,
        min_replicas: 0,
    };

    fn peers(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_follower_whose_lease_ran_out_is_no_longer_electable() {
        assert!(still_electable(true, Role::Candidate, 400, 100));
        assert!(still_electable(true, Role::Follower, 101, 100));
        assert!(!still_electable(true, Role::Candidate, 100, 100));
        assert!(!still_electable(true, Role::Candidate, 0, 100));
        assert!(!still_electable(false, Role::Follower, 900, 100));
        assert!(still_electable(true, Role::Leader, 0, 100));
    }

    #[test]
    fn lowest_id_among_the_most_up_to_date() {
        let me = view(3, (1001, 10), true, S3);
        let two = view(2, (1001, 10), true, S3);
        assert_eq!(
            election_winner(&me, std::slice::from_ref(&two), &peers(&[1, 2, 3]), 0),
            Some(2)
        );
        // A lower id that lags loses to the one holding more.
        let me = view(3, (1001, 11), true, S3);
        assert_eq!(election_winner(&me, &[two], &peers(&[1, 2, 3]), 0), Some(3));
    }

    #[test]
    fn a_stale_restarted_node_never_leads_alone() {
        // Node 3 was down while 1 and 2 went on and dropped it from the in-sync set; then 1 and 2 died.
        let me = view(3, (1001, 5), false, S3);
        assert_eq!(election_winner(&me, &[], &peers(&[1, 2, 3]), 0), None);
    }

    #[test]
    fn an_unbroken_follower_leads_alone() {
        // Kill 1 then 2: node 3 followed 2 without a break, so it holds every acknowledged write.
        let s = &[(1, false), (2, true), (3, true)];
        let me = view(3, (2002, 40), true, s);
        assert_eq!(election_winner(&me, &[], &peers(&[1, 2, 3]), 0), Some(3));
        // ...but not when at least one follower is required to acknowledge writes.
        assert_eq!(election_winner(&me, &[], &peers(&[1, 2, 3]), 1), None);
    }

    #[test]
    fn the_freshest_view_decides_who_is_in_sync() {
        // 2 was dropped from the in-sync set (it does not know); 3 knows, and holds more.
        let stale = view(2, (1001, 50), true, S3);
        let fresh = view(3, (1001, 60), true, &[(1, true), (2, false), (3, true)]);
        assert_eq!(
            election_winner(&stale, &[fresh], &peers(&[1, 2, 3]), 0),
            Some(3)
        );
    }

    #[test]
    fn whole_cluster_restart_needs_everyone_in_sync() {
        let a = view(1, (1001, 9), false, S3);
        let b = view(2, (1001, 9), false, S3);
        let c = view(3, (1001, 9), false, S3);
        assert_eq!(
            election_winner(&a, std::slice::from_ref(&b), &peers(&[1, 2, 3]), 0),
            None
        );
        assert_eq!(election_winner(&a, &[b, c], &peers(&[1, 2, 3]), 0), Some(1));
    }

    #[test]
    fn an_old_leaders_unacknowledged_tail_does_not_win() {
        // Node 1 (old leader, restarted) holds a longer log from epoch 1001 than anyone acknowledged; it is not
        // electable, and 2, which followed without a break, is.
        let old = view(1, (1001, 20), false, S3);
        let two = view(2, (1001, 18), true, S3);
        assert_eq!(
            election_winner(&two, &[old], &peers(&[1, 2, 3]), 0),
            Some(2)
        );
    }

    #[test]
    fn fresh_cluster_waits_for_every_configured_peer() {
        let me = view(3, (0, 0), false, &[]);
        let two = view(2, (0, 0), false, &[]);
        assert_eq!(
            election_winner(&me, std::slice::from_ref(&two), &peers(&[1, 2, 3]), 0),
            None
        );
        let one = view(1, (0, 0), false, &[]);
        assert_eq!(
            election_winner(&me, &[two, one], &peers(&[1, 2, 3]), 0),
            Some(1)
        );
        // A server started alone, without peers, is its own cluster.
        let solo = view(1, (0, 0), false, &[]);
        assert_eq!(election_winner(&solo, &[], &peers(&[]), 0), Some(1));
    }

    #[test]
    fn epochs_are_unique_per_leader_and_increase() {
        let me = view(2, (1001, 5), true, S3);
        let other = View {
            promised_epoch: 3003,
            ..view(3, (1001, 5), true, S3)
        };
        let e = next_epoch(&me, &[other]);
        assert_eq!(e, 4002);
        assert_eq!(term_of(e), 4);
        assert_eq!(leader_of(e), 2);
    }

    #[test]
    fn follower_elects_after_the_timeout_only() {
        let me = View {
            role: Role::Follower,
            leader_epoch: 1001,
            ..view(2, (1001, 5), true, S3)
        };
        assert_eq!(
            tick(&me, 100, &[], &peers(&[1, 2, 3]), SETTINGS),
            Action::Stay
        );
        assert_eq!(
            tick(&me, 500, &[], &peers(&[1, 2, 3]), SETTINGS),
            Action::StartElection
        );
    }

    #[test]
    fn leader_steps_down_on_a_higher_epoch() {
        let me = View {
            role: Role::Leader,
            leader_epoch: 1001,
            leader_alive: true,
            ..view(1, (1001, 5), true, S3)
        };
        let newer = View {
            role: Role::Leader,
            leader_epoch: 2002,
            promised_epoch: 2002,
            ..view(2, (2002, 7), true, S3)
        };
        assert_eq!(
            tick(
                &me,
                0,
                std::slice::from_ref(&newer),
                &peers(&[1, 2, 3]),
                SETTINGS
            ),
            Action::StepDown { seen_epoch: 2002 }
        );
        // After stepping down it follows the newer leader.
        let me = View {
            role: Role::Candidate,
            promised_epoch: 2002,
            ..me
        };
        assert_eq!(
            tick(&me, 0, &[newer], &peers(&[1, 2, 3]), SETTINGS),
            Action::Follow {
                leader_id: 2,
                epoch: 2002
            }
        );
    }

    #[test]
    fn candidate_waits_while_a_peer_still_hears_the_leader() {
        let me = view(2, (1001, 5), true, S3);
        let three = View {
            role: Role::Follower,
            leader_epoch: 1001,
            leader_alive: true,
            ..view(3, (1001, 5), true, S3)
        };
        assert_eq!(
            tick(
                &me,
                0,
                std::slice::from_ref(&three),
                &peers(&[1, 2, 3]),
                SETTINGS
            ),
            Action::Stay
        );
        let three = View {
            leader_alive: false,
            role: Role::Candidate,
            ..three
        };
        assert_eq!(
            tick(&me, 0, &[three], &peers(&[1, 2, 3]), SETTINGS),
            Action::BecomeLeader { epoch: 2002 }
        );
    }
}
