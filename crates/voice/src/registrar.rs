//! Registrations (RFC 3261 §10.3): where an identity's devices can be
//! reached. The edge has authenticated the REGISTER and parsed its
//! contacts; the rules are here: expiry bounds, the contact cap, `*`,
//! and that a frozen identity or tenant registers nothing.

use palisade_store::sip::{Binding, BindingChange, Registration, RegistrationRow};
use palisade_store::StoreError;

use crate::credentials::DigestUser;
use crate::Result;

/// Expiry bounds and the contact cap (the `sip` settings).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub min_expires_secs: u32,
    pub max_expires_secs: u32,
    pub default_expires_secs: u32,
    pub max_contacts: u32,
}

/// One Contact of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact<'a> {
    /// `Contact: *`: every binding (only with `Expires: 0`).
    All,
    /// A contact URI and its own `expires` parameter, if any.
    Uri { uri: &'a str, expires: Option<u32> },
}

/// An authenticated REGISTER.
#[derive(Debug)]
pub struct Request<'a> {
    pub user: &'a DigestUser,
    pub contacts: &'a [Contact<'a>],
    /// The `Expires` header.
    pub expires: Option<u32>,
    pub call_id: &'a str,
    pub cseq: i64,
    /// `udp`, `tcp` or `tls`: how the device reached us.
    pub transport: &'a str,
    /// The device's address as seen here (`ip:port`).
    pub source: &'a str,
    /// The instance holding the device's connection.
    pub instance: &'a str,
    pub user_agent: Option<&'a str>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The bindings in force after the request (a request with no Contact
    /// only asks for them), each with its expiry.
    Bound(Vec<RegistrationRow>),
    /// A non-zero expiry below the minimum: 423 with `Min-Expires`.
    TooBrief { min_expires_secs: u32 },
    /// The identity or its tenant is frozen, or gone: 403.
    Frozen,
    /// More contacts than the identity may have: 403.
    TooManyContacts,
    /// `*` with other contacts or a non-zero expiry: 400.
    BadWildcard,
    /// The same Call-ID with a CSeq not above the binding's (a
    /// retransmission or a request out of order): the update fails.
    OutOfOrder,
}

/// The expiry of each contact, checked: `Err` is the refusal.
fn expiries<'a>(req: &Request<'a>, b: &Bounds) -> std::result::Result<Vec<(Option<&'a str>, u32)>, Outcome> {
    let wildcard = req.contacts.contains(&Contact::All);
    if wildcard {
        if req.contacts.len() != 1 || req.expires != Some(0) {
            return Err(Outcome::BadWildcard);
        }
        return Ok(vec![(None, 0)]);
    }
    let mut out = Vec::with_capacity(req.contacts.len());
    for c in req.contacts {
        let Contact::Uri { uri, expires } = *c else { continue };
        let asked = expires.or(req.expires).unwrap_or(b.default_expires_secs);
        if asked != 0 && asked < b.min_expires_secs {
            return Err(Outcome::TooBrief { min_expires_secs: b.min_expires_secs });
        }
        out.push((Some(uri), asked.min(b.max_expires_secs)));
    }
    Ok(out)
}

/// Applies an authenticated REGISTER. All of it or nothing: a refusal
/// changes no binding.
pub async fn register(db: &palisade_store::Db, b: &Bounds, req: &Request<'_>, now_ms: i64) -> Result<Outcome> {
    let asked = match expiries(req, b) {
        Ok(a) => a,
        Err(refusal) => return Ok(refusal),
    };
    let scope = req.user.scope();
    let identity = req.user.identity;
    // SQLite: the whole REGISTER in one hop to its writer.
    let changes = asked
        .iter()
        .map(|(uri, secs)| match secs {
            0 => BindingChange::Remove { contact_uri: uri.map(str::to_owned) },
            secs => BindingChange::Bind {
                contact_uri: uri.unwrap_or_default().to_owned(),
                expires_at: now_ms.saturating_add(i64::from(*secs) * 1000),
            },
        })
        .collect();
    let registration = Registration {
        identity_id: identity,
        credential_id: req.user.credential_id.clone(),
        transport: req.transport.to_owned(),
        source_addr: req.source.to_owned(),
        instance_id: req.instance.to_owned(),
        call_id: req.call_id.to_owned(),
        cseq: req.cseq,
        user_agent: req.user_agent.map(str::to_owned),
        changes,
        max_contacts: i64::from(b.max_contacts),
    };
    if let Some(done) = palisade_store::sip::register_sqlite(db, &scope, registration, now_ms).await {
        return match done {
            Ok(bound) => Ok(Outcome::Bound(bound)),
            Err(StoreError::Refused(palisade_store::sip::FROZEN)) => Ok(Outcome::Frozen),
            Err(StoreError::Refused(palisade_store::sip::OUT_OF_ORDER)) => Ok(Outcome::OutOfOrder),
            Err(StoreError::Refused(palisade_store::sip::TOO_MANY_CONTACTS)) => Ok(Outcome::TooManyContacts),
            Err(e) => Err(e.into()),
        };
    }
    // PostgreSQL: a transaction, the identity's row locked.
    let mut tx = db.begin().await?;
    if !palisade_store::sip::lock_active_identity(&mut tx, &scope, identity).await? {
        return Ok(Outcome::Frozen);
    }
    for (uri, secs) in &asked {
        if *secs == 0 {
            palisade_store::sip::remove_registrations(&mut tx, &scope, identity, *uri).await?;
            continue;
        }
        let Some(uri) = uri else { continue };
        let binding = Binding {
            identity_id: identity,
            credential_id: &req.user.credential_id,
            contact_uri: uri,
            transport: req.transport,
            source_addr: req.source,
            instance_id: req.instance,
            call_id: req.call_id,
            cseq: req.cseq,
            user_agent: req.user_agent,
            expires_at: now_ms.saturating_add(i64::from(*secs) * 1000),
        };
        if !palisade_store::sip::upsert_registration(&mut tx, &scope, &binding, now_ms).await? {
            return Ok(Outcome::OutOfOrder);
        }
    }
    let count = palisade_store::sip::count_registrations(&mut tx, &scope, identity, now_ms).await?;
    if count > i64::from(b.max_contacts) {
        // Dropped with the transaction: nothing changed.
        return Ok(Outcome::TooManyContacts);
    }
    let bound = palisade_store::sip::list_registrations(&mut *tx, &scope, identity, now_ms).await?;
    tx.commit().await?;
    Ok(Outcome::Bound(bound))
}
