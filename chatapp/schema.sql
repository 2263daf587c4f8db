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

-- The performance-tuning runbook's indexes (check DB-005 expects them).
CREATE INDEX IF NOT EXISTS idx_messages_timestamp ON messages ("timestamp");
CREATE INDEX IF NOT EXISTS idx_conversations_user_id ON conversations (user_id);
CREATE INDEX IF NOT EXISTS idx_agents_status_last_active ON agents (status, last_active);
