-- What an identity's SIP devices must offer for media (docs/sip.md, media
-- policy): `required` refuses a call without SRTP (488), `preferred` and
-- `off` accept plain RTP. SDES keys are refused over plaintext transports
-- whatever the policy.
ALTER TABLE identities ADD COLUMN srtp TEXT NOT NULL DEFAULT 'preferred'
    CHECK (srtp IN ('required', 'preferred', 'off'));

-- The same, per trunk: what the carrier's leg must carry (`required`: an
-- offer towards it, or from it, without SRTP is refused).
ALTER TABLE sip_trunks ADD COLUMN srtp TEXT NOT NULL DEFAULT 'preferred'
    CHECK (srtp IN ('required', 'preferred', 'off'));
