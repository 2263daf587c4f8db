-- The chat system's database (chatdb). Idempotent: applied on every `sandbox up`.

CREATE TABLE IF NOT EXISTS conversations (
    id          uuid PRIMARY KEY,
    user_id     text NOT NULL,
    created_at  timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS messages (
    id               uuid PRIMARY KEY,
    conversation_id  uuid NOT NULL REFERENCES conversations (id),
    role             text,
    content          text,
    "timestamp"      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS messages_conversation_id_idx ON messages (conversation_id);

CREATE TABLE IF NOT EXISTS agents (
    id           serial PRIMARY KEY,
    name         text,
    status       text,
    last_active  timestamptz
);
