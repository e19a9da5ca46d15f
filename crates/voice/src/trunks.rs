//! SIP trunks: the upstream carriers the operator configures. A request
//! whose source is in a trunk's CIDRs is the trunk's ([`TrunkTable`]);
//! towards the trunk the edge is a UAC, which needs the password itself, so
//! it is sealed (bound to the trunk's row), never hashed.
//!
//! Validation is strict because a trunk's sources are trusted: a CIDR that
//! admits every address would let anyone speak as the carrier.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ipnet::IpNet;
use palisade_core::principal::SysadminProof;
use palisade_core::FieldError;
use palisade_seal::Sealer;
use palisade_store::sip_trunks::{self, TrunkRow};
use palisade_store::StoreError;

use crate::media::SrtpPolicy;
use crate::VoiceError;

pub const NAME_MAX: usize = 64;
pub const URI_MAX: usize = 255;
pub const USERNAME_MAX: usize = 64;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const MAX_CIDRS: usize = 32;
/// The widest source network a trunk may list.
pub const MIN_PREFIX_V4: u8 = 8;
pub const MIN_PREFIX_V6: u8 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<Transport> {
        match s {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

/// What the edge does with a trunk's call whose caller ID is not verified
/// (no PASSporT, or one that fails): mark it (`verstat` on the call) or
/// reject it (428 without one, 438 with a bad one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StirInbound {
    #[default]
    Mark,
    Reject,
}

impl StirInbound {
    pub fn as_str(self) -> &'static str {
        match self {
            StirInbound::Mark => "mark",
            StirInbound::Reject => "reject",
        }
    }

    pub fn parse(s: &str) -> Option<StirInbound> {
        match s {
            "mark" => Some(StirInbound::Mark),
            "reject" => Some(StirInbound::Reject),
            _ => None,
        }
    }
}

/// A trunk as the edge and the operator see it. The password stays sealed
/// until [`open_password`].
#[derive(Clone, PartialEq, Eq)]
pub struct Trunk {
    pub id: String,
    pub name: String,
    pub uri: String,
    pub transport: Transport,
    pub auth_username: Option<String>,
    auth_password_sealed: Option<String>,
    /// Canonical: host bits cleared, IPv4-mapped IPv6 as IPv4.
    pub source_cidrs: Vec<IpNet>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// What the carrier's leg must carry.
    pub srtp: SrtpPolicy,
    pub stir_inbound: StirInbound,
}

impl Trunk {
    /// A trunk without credentials, as the edge sees it (for tests and
    /// tools; stored trunks come from [`create`]).
    pub fn without_auth(id: &str, uri: &str, transport: Transport, source_cidrs: Vec<IpNet>) -> Trunk {
        Trunk {
            id: id.to_owned(),
            name: id.to_owned(),
            uri: uri.to_owned(),
            transport,
            auth_username: None,
            auth_password_sealed: None,
            source_cidrs,
            enabled: true,
            created_at: 0,
            updated_at: 0,
            srtp: SrtpPolicy::default(),
            stir_inbound: StirInbound::default(),
        }
    }

    pub fn has_auth(&self) -> bool {
        self.auth_password_sealed.is_some()
    }

    fn from_row(row: TrunkRow) -> Result<Trunk, VoiceError> {
        let bad = |what: &str| VoiceError::Store(StoreError::Corrupt(format!("sip trunk {}: {what}", row.id)));
        let transport = Transport::parse(&row.transport).ok_or_else(|| bad("transport"))?;
        let cidrs: Vec<String> = serde_json::from_str(&row.source_cidrs).map_err(|_| bad("source_cidrs"))?;
        let source_cidrs = parse_cidrs(&cidrs).map_err(|_| bad("source_cidrs"))?;
        let srtp = SrtpPolicy::parse(&row.srtp).ok_or_else(|| bad("srtp"))?;
        let stir_inbound = StirInbound::parse(&row.stir_inbound).ok_or_else(|| bad("stir_inbound"))?;
        Ok(Trunk {
            id: row.id,
            name: row.name,
            uri: row.uri,
            transport,
            auth_username: row.auth_username,
            auth_password_sealed: row.auth_password_sealed,
            source_cidrs,
            enabled: row.enabled != 0,
            created_at: row.created_at,
            updated_at: row.updated_at,
            srtp,
            stir_inbound,
        })
    }

    fn to_row(&self) -> TrunkRow {
        let cidrs: Vec<String> = self.source_cidrs.iter().map(ToString::to_string).collect();
        TrunkRow {
            id: self.id.clone(),
            name: self.name.clone(),
            uri: self.uri.clone(),
            transport: self.transport.as_str().to_owned(),
            auth_username: self.auth_username.clone(),
            auth_password_sealed: self.auth_password_sealed.clone(),
            source_cidrs: serde_json::Value::from(cidrs).to_string(),
            enabled: i64::from(self.enabled),
            created_at: self.created_at,
            updated_at: self.updated_at,
            srtp: self.srtp.as_str().to_owned(),
            stir_inbound: self.stir_inbound.as_str().to_owned(),
        }
    }
}

impl std::fmt::Debug for Trunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trunk")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("transport", &self.transport)
            .field("auth_username", &self.auth_username)
            .field("has_auth", &self.has_auth())
            .field("source_cidrs", &self.source_cidrs)
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// The digest credentials the edge answers a trunk's challenge with.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewTrunk {
    pub name: String,
    pub uri: String,
    pub transport: String,
    pub source_cidrs: Vec<String>,
    pub auth: Option<Credentials>,
    pub enabled: bool,
    /// `required`, `preferred` (default) or `off`.
    pub srtp: Option<String>,
    /// `mark` (default) or `reject`.
    pub stir_inbound: Option<String>,
}

/// A change to a trunk; `None` leaves a field as it is. `auth: Some(None)`
/// removes the credentials.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub uri: Option<String>,
    pub transport: Option<String>,
    pub source_cidrs: Option<Vec<String>>,
    pub enabled: Option<bool>,
    pub auth: Option<Option<Credentials>>,
    pub srtp: Option<String>,
    pub stir_inbound: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    /// Field errors, in the order of the fields.
    #[error("the trunk is not valid")]
    Invalid(Vec<FieldError>),
    #[error("a trunk of this name exists")]
    DuplicateName,
    #[error(transparent)]
    Voice(#[from] VoiceError),
}

impl From<StoreError> for TrunkError {
    fn from(e: StoreError) -> Self {
        TrunkError::Voice(VoiceError::Store(e))
    }
}

fn is_control(c: char) -> bool {
    c.is_control() || c == '\u{7f}'
}

/// 1 to 64 of letters, digits, space, `_`, `.` and `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let n = name.chars().count();
    if n == 0 || n > NAME_MAX {
        return Err(format!("must be 1 to {NAME_MAX} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ' ' | '_' | '.' | '-')) {
        return Err("may hold only letters, digits, space, `_`, `.` and `-`".into());
    }
    Ok(())
}

/// A trunk's URI, as far as the edge reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    /// `sips:`.
    pub secure: bool,
    pub user: Option<String>,
    /// A name, a dotted IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: Option<u16>,
}

const URI_FORM: &str = "must be `sip:` or `sips:`, an optional user and `@`, a host and an optional port, \
    nothing more";

/// `sip:` or `sips:`, an optional user without a password, a host name or
/// an address, an optional port; no parameters or headers (the transport
/// is a field of its own, and nothing else is sent to the carrier).
pub fn parse_uri(uri: &str) -> Result<SipUri, String> {
    if uri.len() > URI_MAX {
        return Err(format!("must be at most {URI_MAX} bytes"));
    }
    if uri.chars().any(is_control) {
        return Err("must not hold control characters".into());
    }
    let (secure, rest) = if let Some(r) = uri.strip_prefix("sips:") {
        (true, r)
    } else if let Some(r) = uri.strip_prefix("sip:") {
        (false, r)
    } else {
        return Err(URI_FORM.into());
    };
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((user, hostport)) => {
            if user.contains(':') {
                return Err("must not hold a password (set `auth` for the trunk's credentials)".into());
            }
            let ok = !user.is_empty()
                && user.len() <= USERNAME_MAX
                && user.chars().all(|c| c.is_ascii_alphanumeric() || "._~!$&'()*+,=-".contains(c));
            if !ok {
                return Err(URI_FORM.into());
            }
            (Some(user.to_owned()), hostport)
        }
        None => (None, rest),
    };
    let (host, port) = split_host_port(hostport).ok_or_else(|| String::from(URI_FORM))?;
    Ok(SipUri { secure, user, host, port })
}

fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let v6: std::net::Ipv6Addr = v6.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (v6.to_string(), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if !valid_host(host) {
            return None;
        }
        (host.to_ascii_lowercase(), port)
    };
    let port = match port {
        None => None,
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some(p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
    };
    Some((host, port))
}

/// A DNS name (labels of letters, digits and inner hyphens) or a dotted
/// IPv4 address; a name whose last label is all digits must be an address.
fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = host.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !labels.iter().all(label_ok) {
        return false;
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return host.parse::<std::net::Ipv4Addr>().is_ok();
    }
    true
}

pub fn parse_transport(s: &str) -> Result<Transport, String> {
    Transport::parse(s).ok_or_else(|| "must be `udp`, `tcp` or `tls`".into())
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A network as stored and matched: host bits cleared, and an IPv4-mapped
/// IPv6 network as the IPv4 one (so `::ffff:0:0/96` is `0.0.0.0/0`).
fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return IpNet::V4(n.trunc());
            }
        }
    }
    net
}

/// 1 to 32 CIDRs (a bare address is one host), none admitting every
/// address; stored canonical and without repeats.
pub fn parse_cidrs(items: &[String]) -> Result<Vec<IpNet>, String> {
    if items.is_empty() || items.len() > MAX_CIDRS {
        return Err(format!("must list 1 to {MAX_CIDRS} CIDRs"));
    }
    let mut out: Vec<IpNet> = Vec::with_capacity(items.len());
    for s in items {
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("`{s}` is not a CIDR"))?;
        let net = canonical_net(net);
        if net.prefix_len() == 0 {
            return Err(format!("`{s}` admits every address: list the carrier's own ranges"));
        }
        // A carrier's own ranges are never this wide; a few such CIDRs
        // would otherwise cover the whole address space.
        let widest = if net.addr().is_ipv4() { MIN_PREFIX_V4 } else { MIN_PREFIX_V6 };
        if net.prefix_len() < widest {
            return Err(format!("`{s}` is too wide: at most /{MIN_PREFIX_V4} for IPv4, /{MIN_PREFIX_V6} for IPv6"));
        }
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// A username that is safe in a digest `username="…"` as it is.
pub fn check_username(u: &str) -> Result<(), String> {
    let ok = !u.is_empty()
        && u.len() <= USERNAME_MAX
        && u.chars().all(|c| c.is_ascii_alphanumeric() || "._~+@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("must be 1 to {USERNAME_MAX} of letters, digits and `._~+@-`"))
    }
}

pub fn check_password(p: &str) -> Result<(), String> {
    let n = p.chars().count();
    if !(PASSWORD_MIN..=PASSWORD_MAX).contains(&n) {
        return Err(format!("must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"));
    }
    if p.chars().any(is_control) {
        return Err("must not hold control characters".into());
    }
    Ok(())
}

/// The fields checked together, as a trunk would hold them.
struct Checked {
    uri: String,
    transport: Transport,
    source_cidrs: Vec<IpNet>,
}

/// Checks what a trunk would be; every field's error at once.
fn check(
    name: Option<&str>,
    uri: &str,
    transport: &str,
    cidrs: &[String],
    auth: Option<&Credentials>,
) -> Result<Checked, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| errors.push(FieldError { field: field.into(), message });
    if let Some(Err(e)) = name.map(check_name) {
        fail("name", e);
    }
    let parsed_uri = parse_uri(uri).map_err(|e| fail("uri", e)).ok();
    let parsed_transport = parse_transport(transport).map_err(|e| fail("transport", e)).ok();
    if let (Some(u), Some(t)) = (&parsed_uri, parsed_transport) {
        if u.secure && t != Transport::Tls {
            fail("transport", "must be `tls` for a `sips:` URI".into());
        }
    }
    let parsed_cidrs = parse_cidrs(cidrs).map_err(|e| fail("source_cidrs", e)).ok();
    if let Some(c) = auth {
        if let Err(e) = check_username(&c.username) {
            fail("auth.username", e);
        }
        if let Err(e) = check_password(&c.password) {
            fail("auth.password", e);
        }
    }
    match (parsed_uri, parsed_transport, parsed_cidrs) {
        (Some(_), Some(transport), Some(source_cidrs)) if errors.is_empty() => {
            Ok(Checked { uri: uri.to_owned(), transport, source_cidrs })
        }
        _ => Err(errors),
    }
}

/// What the sealed password is bound to: its row and column.
fn aad(id: &str) -> Vec<u8> {
    format!("sip_trunks/{id}/auth_password").into_bytes()
}

fn seal_password(sealer: &Sealer, id: &str, password: &str) -> String {
    B64.encode(sealer.seal(password.as_bytes(), &aad(id)))
}

/// The trunk's password, for the UAC answering the trunk's challenge;
/// `None` when the trunk has no credentials.
pub fn open_password(sealer: &Sealer, trunk: &Trunk) -> Result<Option<String>, VoiceError> {
    let Some(sealed) = &trunk.auth_password_sealed else { return Ok(None) };
    let bad = |what: &str| VoiceError::Sealed(format!("trunk {}: {what}", trunk.id));
    let bytes = B64.decode(sealed).map_err(|_| bad("not base64"))?;
    let plain = sealer.open(&bytes, &aad(&trunk.id)).map_err(|e| bad(&e.to_string()))?;
    String::from_utf8(plain).map(Some).map_err(|_| bad("not text"))
}

/// Creates a trunk, in the caller's transaction (with its audit event).
pub async fn create(
    tx: &mut palisade_store::Tx,
    sealer: &Sealer,
    proof: &SysadminProof,
    new: NewTrunk,
    now: i64,
) -> Result<Trunk, TrunkError> {
    let checked = check(Some(&new.name), &new.uri, &new.transport, &new.source_cidrs, new.auth.as_ref());
    let asked = Policies { srtp: new.srtp.as_deref(), stir_inbound: new.stir_inbound.as_deref() };
    let (c, srtp, stir_inbound) =
        with_policies(checked, asked, SrtpPolicy::default(), StirInbound::default()).map_err(TrunkError::Invalid)?;
    let id = uuid::Uuid::now_v7().to_string();
    let trunk = Trunk {
        auth_username: new.auth.as_ref().map(|a| a.username.clone()),
        auth_password_sealed: new.auth.as_ref().map(|a| seal_password(sealer, &id, &a.password)),
        id,
        name: new.name,
        uri: c.uri,
        transport: c.transport,
        source_cidrs: c.source_cidrs,
        enabled: new.enabled,
        created_at: now,
        updated_at: now,
        srtp,
        stir_inbound,
    };
    match sip_trunks::insert(&mut **tx, proof, &trunk.to_row()).await {
        Err(e) if e.is_unique_violation() => Err(TrunkError::DuplicateName),
        r => r.map(|_| trunk).map_err(Into::into),
    }
}

/// Changes a trunk, in the caller's transaction; the result is checked as
/// a whole (a `sips:` URI with a `udp` transport is refused whichever of
/// the two changed). `None`: no such trunk.
pub async fn update(
    tx: &mut palisade_store::Tx,
    sealer: &Sealer,
    proof: &SysadminProof,
    id: &str,
    changes: Changes,
    now: i64,
) -> Result<Option<Trunk>, TrunkError> {
    let Some(row) = sip_trunks::lock(tx, proof, id).await? else { return Ok(None) };
    let mut trunk = Trunk::from_row(row)?;
    let uri = changes.uri.unwrap_or_else(|| trunk.uri.clone());
    let transport = changes.transport.unwrap_or_else(|| trunk.transport.as_str().to_owned());
    let cidrs = changes.source_cidrs.unwrap_or_else(|| trunk.source_cidrs.iter().map(ToString::to_string).collect());
    let new_auth = changes.auth.as_ref().and_then(Option::as_ref);
    let checked = check(None, &uri, &transport, &cidrs, new_auth);
    let asked = Policies { srtp: changes.srtp.as_deref(), stir_inbound: changes.stir_inbound.as_deref() };
    let (c, srtp, stir_inbound) =
        with_policies(checked, asked, trunk.srtp, trunk.stir_inbound).map_err(TrunkError::Invalid)?;
    trunk.srtp = srtp;
    trunk.stir_inbound = stir_inbound;
    trunk.uri = c.uri;
    trunk.transport = c.transport;
    trunk.source_cidrs = c.source_cidrs;
    if let Some(enabled) = changes.enabled {
        trunk.enabled = enabled;
    }
    if let Some(auth) = changes.auth {
        trunk.auth_username = auth.as_ref().map(|a| a.username.clone());
        trunk.auth_password_sealed = auth.as_ref().map(|a| seal_password(sealer, &trunk.id, &a.password));
    }
    trunk.updated_at = now;
    if !sip_trunks::update(&mut **tx, proof, &trunk.to_row()).await? {
        return Ok(None);
    }
    Ok(Some(trunk))
}

/// The policies asked for; `None` keeps the current one.
struct Policies<'a> {
    srtp: Option<&'a str>,
    stir_inbound: Option<&'a str>,
}

/// The rest of the checks with the policies' (`asked`, else `current`).
fn with_policies<C>(
    checked: Result<C, Vec<FieldError>>,
    asked: Policies<'_>,
    srtp_now: SrtpPolicy,
    stir_now: StirInbound,
) -> Result<(C, SrtpPolicy, StirInbound), Vec<FieldError>> {
    let srtp = asked.srtp.map(|a| SrtpPolicy::parse(a.trim()).ok_or(())).transpose();
    let stir = asked.stir_inbound.map(|a| StirInbound::parse(a.trim()).ok_or(())).transpose();
    match (checked, srtp, stir) {
        (Ok(c), Ok(p), Ok(s)) => Ok((c, p.unwrap_or(srtp_now), s.unwrap_or(stir_now))),
        (checked, srtp, stir) => {
            let mut errors = checked.err().unwrap_or_default();
            if srtp.is_err() {
                errors.push(FieldError {
                    field: "srtp".into(),
                    message: "must be `required`, `preferred` or `off`".into(),
                });
            }
            if stir.is_err() {
                errors.push(FieldError { field: "stir.inbound".into(), message: "must be `mark` or `reject`".into() });
            }
            Err(errors)
        }
    }
}

pub async fn list(db: &palisade_store::Db, proof: &SysadminProof) -> Result<Vec<Trunk>, VoiceError> {
    sip_trunks::list(db.reader(), proof).await?.into_iter().map(Trunk::from_row).collect()
}

pub async fn get(db: &palisade_store::Db, proof: &SysadminProof, id: &str) -> Result<Option<Trunk>, VoiceError> {
    sip_trunks::get(db.reader(), proof, id).await?.map(Trunk::from_row).transpose()
}

/// The enabled trunks by source address, for the edge: the trunk whose
/// CIDR holds the address with the longest prefix; between equal prefixes
/// of two trunks, the older trunk.
#[derive(Debug, Default)]
pub struct TrunkTable {
    trunks: Vec<Trunk>,
    /// (network, index into `trunks`), longest prefix first.
    nets: Vec<(IpNet, usize)>,
}

impl TrunkTable {
    /// From trunks in order of age; disabled ones are left out.
    pub fn new(trunks: Vec<Trunk>) -> TrunkTable {
        let trunks: Vec<Trunk> = trunks.into_iter().filter(|t| t.enabled).collect();
        let mut nets: Vec<(IpNet, usize)> =
            trunks.iter().enumerate().flat_map(|(i, t)| t.source_cidrs.iter().map(move |n| (*n, i))).collect();
        // Equal prefixes: the older trunk (lower index) first.
        nets.sort_by_key(|&(n, i)| (std::cmp::Reverse(n.prefix_len()), i));
        TrunkTable { trunks, nets }
    }

    /// The enabled trunks as stored now.
    pub async fn load(db: &palisade_store::Db) -> Result<TrunkTable, VoiceError> {
        let rows = sip_trunks::enabled_trunks(db.reader()).await?;
        Ok(TrunkTable::new(rows.into_iter().map(Trunk::from_row).collect::<Result<_, _>>()?))
    }

    /// Replaces the table with the trunks as stored now; on an error the
    /// table stays as it was.
    pub async fn reload(&mut self, db: &palisade_store::Db) -> Result<(), VoiceError> {
        *self = TrunkTable::load(db).await?;
        Ok(())
    }

    pub fn trunk_for(&self, ip: IpAddr) -> Option<&Trunk> {
        let ip = canonical_ip(ip);
        self.nets.iter().find(|(n, _)| n.contains(&ip)).map(|(_, i)| &self.trunks[*i])
    }

    /// Whether the trunk `id` is enabled.
    pub fn has(&self, id: &str) -> bool {
        self.trunks.iter().any(|t| t.id == id)
    }

    /// The trunk calls go out through: the oldest enabled one.
    pub fn outbound(&self) -> Option<&Trunk> {
        self.trunks.first()
    }

    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }
}

#[cfg(test)]
#[path = "trunks_tests.rs"]
mod tests;
