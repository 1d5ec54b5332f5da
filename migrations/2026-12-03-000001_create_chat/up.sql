-- Baton's store. Ids are assigned by the leader and carried in the replicated updates, so every replica holds
-- the same ids; `node_state.next_*` make sure an id is never reused, even after deletions.

CREATE TABLE users (
    id INTEGER PRIMARY KEY NOT NULL,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    -- The seq of the update that created it, so that deleting the account can redact that log entry.
    log_seq BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE sessions (
    token_hash BLOB PRIMARY KEY NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users(id),
    created_at_ms BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY NOT NULL,
    sender_id INTEGER NOT NULL REFERENCES users(id),
    recipient_id INTEGER NOT NULL REFERENCES users(id),
    body TEXT NOT NULL,
    sent_at_ms BIGINT NOT NULL,
    is_read BOOLEAN NOT NULL DEFAULT 0,
    -- Empty when the client gave no idempotency key.
    client_message_id TEXT NOT NULL DEFAULT '',
    -- The seq of the update that inserted it, so that deleting it can redact the body from the log too.
    log_seq BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX messages_recipient_unread ON messages(recipient_id, is_read, id);
CREATE INDEX messages_sender ON messages(sender_id, id);
CREATE UNIQUE INDEX messages_idempotency ON messages(sender_id, client_message_id) WHERE client_message_id <> '';

-- A tombstone per deleted message: which message, between whom, who deleted it and when. Never a body.
CREATE TABLE deleted_messages (
    id INTEGER PRIMARY KEY NOT NULL,
    message_id INTEGER NOT NULL UNIQUE,
    sender_id INTEGER NOT NULL,
    recipient_id INTEGER NOT NULL,
    deleted_by INTEGER NOT NULL,
    deleted_at_ms BIGINT NOT NULL
);
CREATE INDEX deleted_messages_sender ON deleted_messages(sender_id, id);
CREATE INDEX deleted_messages_recipient ON deleted_messages(recipient_id, id);

-- The replicated write log: every applied update, in order.
CREATE TABLE update_log (
    seq BIGINT PRIMARY KEY NOT NULL,
    epoch BIGINT NOT NULL,
    payload BLOB NOT NULL
);

-- Cluster membership, replicated: who belongs and who is in sync.
CREATE TABLE members (
    id BIGINT PRIMARY KEY NOT NULL,
    address TEXT NOT NULL,
    in_sync BOOLEAN NOT NULL
);

-- One row: the last applied (epoch, seq) and the id counters, changed in the same transaction as the data;
-- and this node's own promise, never replicated: the highest epoch it has seen (it refuses older ones).
CREATE TABLE node_state (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    epoch BIGINT NOT NULL,
    seq BIGINT NOT NULL,
    next_user_id BIGINT NOT NULL,
    next_message_id BIGINT NOT NULL,
    next_deletion_id BIGINT NOT NULL,
    promised_epoch BIGINT NOT NULL
);
INSERT INTO node_state (id, epoch, seq, next_user_id, next_message_id, next_deletion_id, promised_epoch)
VALUES (1, 0, 0, 1, 1, 1, 0);
