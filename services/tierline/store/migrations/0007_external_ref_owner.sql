-- An external ref belongs to one vendor: the vendor of the issue that registered it first.
-- Stored beside the ref so the dedupe on open can refuse another vendor's ref without reading
-- (or revealing) that vendor's issue.

ALTER TABLE external_refs ADD COLUMN vendor_id text;

UPDATE external_refs AS r SET vendor_id = s.vendor_id
FROM streams AS s WHERE s.stream_id = r.stream_id;

ALTER TABLE external_refs ALTER COLUMN vendor_id SET NOT NULL;
