-- Vendors become versioned documents: PATCH answers ETag / honours If-Match on `version`, and
-- each change is recorded as io.tierline.governance.vendor_changed on the governance stream.
ALTER TABLE vendors ADD COLUMN version integer NOT NULL DEFAULT 1;

-- A recompute may be owed to a policy change, to a vendor change, or both. Each kind keeps its
-- own high-water mark, so finishing a recompute for one cannot drop a newer request of the other.
ALTER TABLE sla_recompute ADD COLUMN vendor_version integer NOT NULL DEFAULT 0;
