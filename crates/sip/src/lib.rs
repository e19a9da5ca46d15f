//! The SIP edge: listeners, the flood guard and message limits in front of
//! a maintained SIP stack, then REGISTER and INVITE translated to and from
//! the transport-neutral services (`palisade-voice`, `palisade-admission`).
//! Digest authentication is `palisade-digest`'s.
