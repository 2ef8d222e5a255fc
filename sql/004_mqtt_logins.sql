-- Broker logins for devices (when the broker requires them): username = device_id, the password
-- issued once at registration and kept only as the broker's own $7$ (PBKDF2-SHA512) hash, from
-- which the broker's password file is generated.
CREATE TABLE device_mqtt_logins (
    device_id     text        PRIMARY KEY REFERENCES devices (device_id),
    password_hash text        NOT NULL CHECK (password_hash LIKE '$7$%'),
    issued_at     timestamptz NOT NULL DEFAULT now()
);
