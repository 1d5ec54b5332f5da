//! Domain types to wire types, all in one place.

use baton_proto::v1 as pb;

use crate::store::models::{DeletionView, MessageView};

pub fn message(m: MessageView) -> pb::Message {
    pb::Message {
        id: m.id as u64,
        sender: m.sender,
        recipient: m.recipient,
        body: m.body,
        sent_at_ms: m.sent_at_ms,
        read: m.read,
        client_message_id: m.client_message_id,
    }
}

pub fn deletion(d: DeletionView) -> pb::Deletion {
    pb::Deletion {
        deletion_id: d.deletion_id as u64,
        message_id: d.message_id as u64,
        deleted_by: d.deleted_by,
        deleted_at_ms: d.deleted_at_ms,
    }
}

pub fn event_message(m: MessageView) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::Message(message(m))),
    }
}

pub fn event_deletion(d: DeletionView) -> pb::Event {
    pb::Event {
        kind: Some(pb::event::Kind::Deletion(deletion(d))),
    }
}

/// Ids on the wire are unsigned; the store's are SQLite integers. Ids above `i64::MAX` name nothing.
pub fn id_from_wire(id: u64) -> Option<i64> {
    i64::try_from(id).ok()
}
