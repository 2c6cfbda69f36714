-- A read-only role for dashboards (Grafana) and analysts: the read models and the vendor list,
-- nothing of the write side (events, API keys, webhook secrets, idempotency records).
-- Created here when the migrating user may create roles; otherwise create it beforehand
-- (deploy/postgres/initdb does) and this grants to it. Logins get it by membership:
--   CREATE ROLE grafana LOGIN PASSWORD '...' IN ROLE tierline_read;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tierline_read')
       AND (SELECT rolcreaterole OR rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        CREATE ROLE tierline_read NOLOGIN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tierline_read') THEN
        GRANT USAGE ON SCHEMA read TO tierline_read;
        GRANT SELECT ON ALL TABLES IN SCHEMA read TO tierline_read;
        GRANT SELECT ON public.vendors TO tierline_read;
        -- Tables a replay creates later are readable too.
        ALTER DEFAULT PRIVILEGES IN SCHEMA read GRANT SELECT ON TABLES TO tierline_read;
    END IF;
END $$;
