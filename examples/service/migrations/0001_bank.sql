-- Accounts and the ledger of committed transfers.
CREATE TABLE accounts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0)
);

CREATE TABLE transfers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Set by the client (header `Idempotency-Key`): the same key is applied at most once.
    idempotency_key text UNIQUE,
    from_account bigint NOT NULL REFERENCES accounts (id),
    to_account bigint NOT NULL REFERENCES accounts (id),
    amount bigint NOT NULL CHECK (amount > 0)
);

CREATE INDEX transfers_from_account ON transfers (from_account);
CREATE INDEX transfers_to_account ON transfers (to_account);
