-- The table the import workers load into (made once, before the batch runs).
CREATE TABLE IF NOT EXISTS users (
    id     bigint PRIMARY KEY,
    name   text NOT NULL,
    email  text NOT NULL
);
