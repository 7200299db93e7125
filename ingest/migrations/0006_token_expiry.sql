-- Device and clinician tokens may carry an expiry: after it the token is refused, as a
-- revoked one is, until a new token is issued (vigil admin device rotate-token).
ALTER TABLE devices ADD COLUMN token_expires_at timestamptz;
ALTER TABLE clinicians ADD COLUMN token_expires_at timestamptz;
