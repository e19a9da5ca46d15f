-- The media security a call was admitted with (docs/sip.md, media policy):
-- the SDES suite, `dtls`, or `none`; copied to its CDR.
ALTER TABLE calls ADD COLUMN media TEXT NOT NULL DEFAULT 'none';
ALTER TABLE cdrs ADD COLUMN media TEXT NOT NULL DEFAULT 'none';
