-- STIR/SHAKEN (docs/sip.md): calls a trunk brings in are calls too
-- (`direction`), with their caller-ID verification; outbound calls carry
-- the attestation we sign them with. A trunk's policy for unverified calls.
ALTER TABLE calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE calls ADD COLUMN verstat TEXT;
ALTER TABLE calls ADD COLUMN verstat_reason TEXT;
ALTER TABLE calls ADD COLUMN attestation TEXT;
ALTER TABLE cdrs ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE cdrs ADD COLUMN verstat TEXT;
ALTER TABLE cdrs ADD COLUMN verstat_reason TEXT;
ALTER TABLE cdrs ADD COLUMN attestation TEXT;
ALTER TABLE sip_trunks ADD COLUMN stir_inbound TEXT NOT NULL DEFAULT 'mark';
