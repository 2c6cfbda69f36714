-- Webhook signing secrets are encrypted at rest from here on (docs/adr/0007-secrets-at-rest.md).
-- No data changes here: encrypting needs TIERLINE_SECRET_KEY, which SQL does not have. Rows
-- stored as plaintext `whsec_` values are sealed by the api and webhooks roles when they start
-- (and by the sender when it meets one); `tierline secrets rotate` re-seals every row.

COMMENT ON COLUMN webhook_subscriptions.secret IS
    'Fernet token of the signing secret, sealed with the first key of TIERLINE_SECRET_KEY '
    '(plaintext only until a role holding the key starts)';
COMMENT ON COLUMN webhook_subscriptions.previous_secret IS
    'Fernet token of the secret before the last rotation; signs until previous_secret_expires_at';
