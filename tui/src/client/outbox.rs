//! The outbox: messages typed but not yet acknowledged, in typing order, as a pure queue (no I/O), plus the
//! rule that sorts a failed send into "try again later" or "refused for good".
//!
//! Only the head is ever in flight. A wider window would be faster, but two sends in flight at once may
//! reach the server in either order (or reach different leaders across a failover), and the person expects
//! the other side to see messages in the order they were typed. Every resend of a message uses the same
//! `LocalId` as its `client_message_id`, so the cluster stores it once however many times it is sent.

use std::collections::{BTreeMap, VecDeque};

use tonic::Code;

use super::types::LocalId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub local_id: LocalId,
    pub to: String,
    pub body: String,
}

/// How a failed send (or any call) should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is unknown or the cluster is busy: keep it and resend (same id) once a leader answers.
    Transient,
    /// The server refused this request; resending it unchanged would be refused again.
    Permanent,
    /// The session is gone: keep it, and send once the person has logged in again.
    Unauthenticated,
}

/// Sorts a gRPC status code. Transport errors surface as UNAVAILABLE or UNKNOWN, timeouts as
/// DEADLINE_EXCEEDED; INTERNAL is usually a server-side storage hiccup. All of those may succeed later.
pub fn classify(code: Code) -> Disposition {
    match code {
        Code::Unauthenticated => Disposition::Unauthenticated,
        Code::Ok
        | Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Unknown
        | Code::Internal
        | Code::Cancelled
        | Code::Aborted
        | Code::ResourceExhausted => Disposition::Transient,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::OutOfRange
        | Code::Unimplemented
        | Code::DataLoss => Disposition::Permanent,
    }
}

#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Entry>,
    /// The head is in flight.
    head_in_flight: bool,
    failed: BTreeMap<LocalId, (Entry, String)>,
}

impl Outbox {
    pub fn push(&mut self, entry: Entry) {
        self.queue.push_back(entry);
    }

    /// The message to send now: the head, unless it is already in flight. Marks it in flight.
    pub fn next(&mut self) -> Option<Entry> {
        if self.head_in_flight {
            return None;
        }
        let head = self.queue.front()?.clone();
        self.head_in_flight = true;
        Some(head)
    }

    pub fn in_flight(&self) -> Option<&LocalId> {
        self.head_in_flight
            .then(|| self.queue.front().map(|e| &e.local_id))
            .flatten()
    }

    /// The cluster acknowledged `id`: it leaves the outbox and the next one may go.
    pub fn sent(&mut self, id: &LocalId) -> Option<Entry> {
        self.take_in_flight(id)
    }

    /// Sending `id` failed in a way that may pass later: it stays at the head, to be sent again as is.
    pub fn transient(&mut self, id: &LocalId) {
        if self.in_flight() == Some(id) {
            self.head_in_flight = false;
        }
    }

    /// The server refused `id` for good: it is set aside (for `retry`) and the queue moves on.
    pub fn failed(&mut self, id: &LocalId, why: String) -> Option<Entry> {
        let entry = self.take_in_flight(id)?;
        self.failed.insert(id.clone(), (entry.clone(), why));
        Some(entry)
    }

    /// The person asks to send a failed message again: it goes to the back of the queue (it is being sent
    /// now, after whatever was typed meanwhile), keeping its id.
    pub fn retry(&mut self, id: &LocalId) -> Option<Entry> {
        let (entry, _) = self.failed.remove(id)?;
        self.queue.push_back(entry.clone());
        Some(entry)
    }

    /// Sets aside every queued message that is not in flight, with the reason (e.g. on logout); the one in
    /// flight stays until its answer arrives, since it may already be stored.
    pub fn fail_queued(&mut self, why: &str) -> Vec<Entry> {
        let keep = usize::from(self.head_in_flight);
        let dropped: Vec<Entry> = self.queue.drain(keep..).collect();
        for e in &dropped {
            self.failed
                .insert(e.local_id.clone(), (e.clone(), why.to_string()));
        }
        dropped
    }

    /// Records a message refused before it was ever queued (e.g. an empty body), so `retry` knows it.
    pub fn set_aside(&mut self, entry: Entry, why: String) {
        self.failed.insert(entry.local_id.clone(), (entry, why));
    }

    /// Forgets the failed messages (another account signed in: they are not its to retry).
    pub fn forget_failed(&mut self) {
        self.failed.clear();
    }

    /// Messages waiting or in flight, in order.
    pub fn pending(&self) -> impl Iterator<Item = &Entry> {
        self.queue.iter()
    }

    #[cfg(test)]
    pub fn failed_reason(&self, id: &LocalId) -> Option<&str> {
        self.failed.get(id).map(|(_, why)| why.as_str())
    }

    fn take_in_flight(&mut self, id: &LocalId) -> Option<Entry> {
        if self.in_flight() != Some(id) {
            return None;
        }
        self.head_in_flight = false;
        self.queue.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> Entry {
        Entry {
            local_id: LocalId(format!("id{n}")),
            to: "bob".into(),
            body: format!("m{n}"),
        }
    }

    fn id(n: u32) -> LocalId {
        LocalId(format!("id{n}"))
    }

    fn filled(n: u32) -> Outbox {
        let mut o = Outbox::default();
        for i in 1..=n {
            o.push(entry(i));
        }
        o
    }

    #[test]
    fn sends_in_typing_order_one_at_a_time() {
        let mut o = filled(3);
        let mut order = Vec::new();
        while let Some(e) = o.next() {
            assert_eq!(o.next(), None, "only the head is in flight");
            assert_eq!(o.in_flight(), Some(&e.local_id));
            order.push(e.body.clone());
            assert_eq!(o.sent(&e.local_id), Some(e));
        }
        assert_eq!(order, ["m1", "m2", "m3"]);
        assert_eq!(o.pending().count(), 0);
    }

    #[test]
    fn transient_failure_resends_the_same_id_first() {
        let mut o = filled(2);
        let first = o.next().unwrap();
        o.transient(&first.local_id);
        let again = o.next().unwrap();
        assert_eq!(again, first, "same message, same client_message_id");
        o.transient(&again.local_id);
        o.transient(&again.local_id);
        assert_eq!(o.next().unwrap().local_id, id(1));
        o.sent(&id(1));
        assert_eq!(o.next().unwrap().local_id, id(2));
    }

    #[test]
    fn permanent_failure_sets_aside_and_moves_on() {
        let mut o = filled(2);
        let first = o.next().unwrap();
        assert_eq!(
            o.failed(&first.local_id, "no account named \"bob\"".into()),
            Some(first)
        );
        assert_eq!(o.failed_reason(&id(1)), Some("no account named \"bob\""));
        assert_eq!(o.next().unwrap().local_id, id(2));
    }

    #[test]
    fn retry_requeues_a_failed_message_at_the_back_with_its_id() {
        let mut o = filled(3);
        o.next();
        o.failed(&id(1), "refused".into());
        assert_eq!(o.retry(&id(1)).map(|e| e.local_id), Some(id(1)));
        assert_eq!(o.failed_reason(&id(1)), None);
        let order: Vec<_> = o.pending().map(|e| e.body.clone()).collect();
        assert_eq!(order, ["m2", "m3", "m1"]);
        assert_eq!(o.retry(&id(1)), None, "not failed any more");
        assert_eq!(o.retry(&id(9)), None, "unknown");
    }

    #[test]
    fn answers_for_other_ids_change_nothing() {
        let mut o = filled(2);
        o.next();
        assert_eq!(o.sent(&id(2)), None);
        assert_eq!(o.failed(&id(2), "x".into()), None);
        o.transient(&id(2));
        assert_eq!(o.in_flight(), Some(&id(1)));
        assert_eq!(o.next(), None);
    }

    #[test]
    fn fail_queued_keeps_the_one_in_flight() {
        let mut o = filled(3);
        o.next();
        let dropped: Vec<_> = o
            .fail_queued("logged out")
            .into_iter()
            .map(|e| e.body)
            .collect();
        assert_eq!(dropped, ["m2", "m3"]);
        assert_eq!(o.pending().count(), 1);
        assert_eq!(o.failed_reason(&id(3)), Some("logged out"));
        o.sent(&id(1));
        assert_eq!(o.next(), None);
        o.forget_failed();
        assert_eq!(o.retry(&id(2)), None);
    }

    #[test]
    fn set_aside_messages_can_be_retried() {
        let mut o = Outbox::default();
        o.set_aside(entry(1), "log in first".into());
        assert_eq!(o.next(), None);
        assert_eq!(o.retry(&id(1)), Some(entry(1)));
        assert_eq!(o.next(), Some(entry(1)));
    }

    #[test]
    fn classification() {
        for c in [
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::Unknown,
            Code::Internal,
        ] {
            assert_eq!(classify(c), Disposition::Transient, "{c:?}");
        }
        for c in [
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::OutOfRange,
        ] {
            assert_eq!(classify(c), Disposition::Permanent, "{c:?}");
        }
        assert_eq!(
            classify(Code::Unauthenticated),
            Disposition::Unauthenticated
        );
    }
}
