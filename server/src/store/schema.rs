//! Diesel's view of the tables made by `migrations/`. Ids are SQLite `INTEGER` (64-bit), read as `BigInt`.

diesel::table! {
    users (id) {
        id -> BigInt,
        username -> Text,
        password_hash -> Text,
        created_at_ms -> BigInt,
        log_seq -> BigInt,
    }
}

diesel::table! {
    sessions (token_hash) {
        token_hash -> Binary,
        user_id -> BigInt,
        created_at_ms -> BigInt,
        expires_at_ms -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        sender_id -> BigInt,
        recipient_id -> BigInt,
        body -> Text,
        sent_at_ms -> BigInt,
        is_read -> Bool,
        client_message_id -> Text,
        log_seq -> BigInt,
    }
}

diesel::table! {
    deleted_messages (id) {
        id -> BigInt,
        message_id -> BigInt,
        sender_id -> BigInt,
        recipient_id -> BigInt,
        deleted_by -> BigInt,
        deleted_at_ms -> BigInt,
    }
}

diesel::table! {
    update_log (seq) {
        seq -> BigInt,
        epoch -> BigInt,
        payload -> Binary,
    }
}

diesel::table! {
    node_state (id) {
        id -> BigInt,
        epoch -> BigInt,
        seq -> BigInt,
        next_user_id -> BigInt,
        next_message_id -> BigInt,
        next_deletion_id -> BigInt,
        promised_epoch -> BigInt,
    }
}

diesel::table! {
    members (id) {
        id -> BigInt,
        address -> Text,
        in_sync -> Bool,
    }
}

diesel::joinable!(sessions -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    sessions,
    messages,
    deleted_messages,
    update_log,
    node_state,
    members,
);
