DROP TABLE node_state;
DROP TABLE members;
DROP TABLE update_log;
DROP TABLE deleted_messages;
DROP TABLE messages;
DROP TABLE sessions;
DROP TABLE users;
