use std::net::IpAddr;

use palisade_core::principal::SysadminProof;
use palisade_seal::Sealer;

use super::*;
use crate::tests::{world, World};

const NOW: i64 = 1_700_000_000_000;

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn new(name: &str, cidrs: &[&str]) -> NewTrunk {
    NewTrunk {
        name: name.into(),
        uri: "sip:carrier.example:5060".into(),
        transport: "udp".into(),
        source_cidrs: strings(cidrs),
        auth: None,
        enabled: true,
        srtp: None,
        stir_inbound: None,
    }
}

fn creds(username: &str, password: &str) -> Credentials {
    Credentials { username: username.into(), password: password.into() }
}

fn fields(e: TrunkError) -> Vec<(String, String)> {
    match e {
        TrunkError::Invalid(errors) => errors.into_iter().map(|e| (e.field, e.message)).collect(),
        other => panic!("not a validation error: {other}"),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn names_are_short_and_plain() {
    for ok in ["a", "Carrier One", "carrier_1.eu-west", &"x".repeat(64)] {
        assert_eq!(check_name(ok), Ok(()), "{ok}");
    }
    for bad in ["", &"x".repeat(65), "carrier/1", "carrier\u{0}", "café", "a\tb", "<b>"] {
        assert!(check_name(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn uris_are_sip_or_sips_with_a_host_and_port() {
    let u = parse_uri("sip:Carrier.Example:5060").unwrap();
    assert_eq!(u, SipUri { secure: false, user: None, host: "carrier.example".into(), port: Some(5060) });
    let u = parse_uri("sips:trunk-7@carrier.example").unwrap();
    assert_eq!((u.secure, u.user.as_deref(), u.port), (true, Some("trunk-7"), None));
    assert_eq!(parse_uri("sip:192.0.2.10").unwrap().host, "192.0.2.10");
    assert_eq!(
        parse_uri("sip:[2001:DB8::1]:5061").unwrap(),
        SipUri { secure: false, user: None, host: "2001:db8::1".into(), port: Some(5061) }
    );
    assert_eq!(parse_uri("sip:h:65535").unwrap().port, Some(65535));
    for bad in [
        "",
        "carrier.example",
        "http://carrier.example",
        "SIP:carrier.example",
        "tel:+12025550100",
        "sip:",
        "sip:carrier.example:",
        "sip:carrier.example:0",
        "sip:carrier.example:65536",
        "sip:carrier.example:+50",
        "sip:carrier.example:5060;transport=tcp",
        "sip:carrier.example?subject=x",
        "sip:-carrier.example",
        "sip:carrier..example",
        "sip:carrier_example",
        "sip:999.1.1.1",
        "sip:2001:db8::1",
        "sip:[2001:db8::1",
        "sip:[carrier]",
        "sip:@carrier.example",
        "sip:a b@carrier.example",
        "sip:carrier.example/path",
    ] {
        assert!(parse_uri(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_uri_never_holds_a_password() {
    let e = parse_uri("sip:user:secret@carrier.example").unwrap_err();
    assert!(e.contains("password"), "{e}");
    assert!(parse_uri("sip:user@carrier.example").is_ok());
}

#[test]
fn a_uri_has_no_control_characters_and_a_length_bound() {
    assert!(parse_uri("sip:carrier.example\r\nX-Evil: 1").unwrap_err().contains("control"));
    assert!(parse_uri("sip:carrier\u{7f}.example").unwrap_err().contains("control"));
    // 255 bytes pass; 256 do not, whatever else they hold.
    let (ok, long) = (format!("sip:{}b", "a.".repeat(125)), format!("sip:{}bc", "a.".repeat(125)));
    assert_eq!((ok.len(), long.len()), (255, 256));
    assert!(parse_uri(&ok).is_ok());
    assert!(parse_uri(&long).unwrap_err().contains("at most 255"));
}

#[test]
fn transports_are_udp_tcp_or_tls() {
    assert_eq!(parse_transport("udp"), Ok(Transport::Udp));
    assert_eq!(parse_transport("tcp"), Ok(Transport::Tcp));
    assert_eq!(parse_transport("tls"), Ok(Transport::Tls));
    for bad in ["", "UDP", "sctp", "ws", "tls "] {
        assert!(parse_transport(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn sips_requires_tls() {
    let mut t = new("n", &["192.0.2.0/24"]);
    t.uri = "sips:carrier.example".into();
    for transport in ["udp", "tcp"] {
        let e = check(Some(&t.name), &t.uri, transport, &t.source_cidrs, None).err().unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "transport");
        assert!(e[0].message.contains("sips:"), "{}", e[0].message);
    }
    assert!(check(Some(&t.name), &t.uri, "tls", &t.source_cidrs, None).is_ok());
    // `sip:` over TLS is allowed (the URI scheme only asks more).
    assert!(check(Some(&t.name), "sip:carrier.example", "tls", &t.source_cidrs, None).is_ok());
}

#[test]
fn cidrs_are_canonical_and_bounded() {
    let nets = parse_cidrs(&strings(&["192.0.2.77/24", "198.51.100.7", "2001:db8::9/32", "192.0.2.0/24"])).unwrap();
    let shown: Vec<String> = nets.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["192.0.2.0/24", "198.51.100.7/32", "2001:db8::/32"]);
    // IPv4-mapped IPv6 networks are stored as IPv4.
    assert_eq!(parse_cidrs(&strings(&["::ffff:192.0.2.0/120"])).unwrap()[0].to_string(), "192.0.2.0/24");

    assert!(parse_cidrs(&[]).unwrap_err().contains("1 to 32"));
    let many: Vec<String> = (0..33).map(|i| format!("10.0.{i}.0/24")).collect();
    assert!(parse_cidrs(&many).unwrap_err().contains("1 to 32"));
    assert!(parse_cidrs(&many[..32]).is_ok());
    for bad in ["", "10.0.0.0/33", "carrier.example", "10.0.0/8", "2001:db8::/129", " 10.0.0.0/8"] {
        assert!(parse_cidrs(&strings(&[bad])).unwrap_err().contains("is not a CIDR"), "{bad:?}");
    }
}

#[test]
fn no_cidr_admits_every_address() {
    for open in ["0.0.0.0/0", "::/0", "10.0.0.0/0", "::ffff:0:0/96", "::ffff:10.0.0.0/96"] {
        let e = parse_cidrs(&strings(&["192.0.2.0/24", open])).unwrap_err();
        assert!(e.contains("every address"), "{open}: {e}");
    }
    // Two halves would cover it all: anything wider than /8 or /32 is refused.
    for wide in ["0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/7", "2000::/31", "::ffff:10.0.0.0/103"] {
        let e = parse_cidrs(&strings(&[wide])).unwrap_err();
        assert!(e.contains("too wide"), "{wide}: {e}");
    }
    assert!(parse_cidrs(&strings(&["10.0.0.0/8", "2001:db8::/32", "::ffff:10.0.0.0/104"])).is_ok());
}

#[test]
fn credentials_username_and_password_bounds() {
    assert_eq!(check_username("trunk.user+1@carrier-x"), Ok(()));
    for bad in ["", "a\"b", "a b", "a\\b", "a:b", &"u".repeat(65)] {
        assert!(check_username(bad).is_err(), "{bad:?}");
    }
    assert_eq!(check_password(&"p".repeat(8)), Ok(()));
    assert_eq!(check_password(&"é".repeat(128)), Ok(()), "characters, not bytes");
    for bad in ["p".repeat(7), "p".repeat(129), "pass\nword".into(), "password\u{0}".into()] {
        assert!(check_password(&bad).is_err(), "{bad:?}");
    }
}

#[test]
fn every_field_error_comes_at_once() {
    let e = check(Some(""), "http://x", "sctp", &strings(&["0.0.0.0/0"]), Some(&creds("a b", "short"))).err().unwrap();
    let got: Vec<&str> = e.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(got, ["name", "uri", "transport", "source_cidrs", "auth.username", "auth.password"]);
}

fn trunk(id: &str, cidrs: &[&str], enabled: bool) -> Trunk {
    Trunk {
        id: id.into(),
        name: id.into(),
        uri: "sip:carrier.example".into(),
        transport: Transport::Udp,
        auth_username: None,
        auth_password_sealed: None,
        source_cidrs: parse_cidrs(&strings(cidrs)).unwrap(),
        enabled,
        created_at: NOW,
        updated_at: NOW,
        srtp: crate::media::SrtpPolicy::default(),
        stir_inbound: StirInbound::default(),
    }
}

#[test]
fn the_longest_prefix_wins() {
    let table = TrunkTable::new(vec![
        trunk("wide", &["10.0.0.0/8", "2001:db8::/32"], true),
        trunk("narrow", &["10.1.2.0/24", "2001:db8:1::/48"], true),
        trunk("host", &["10.1.2.3"], true),
    ]);
    let name = |s: &str| table.trunk_for(ip(s)).map(|t| t.name.as_str());
    assert_eq!(name("10.9.9.9"), Some("wide"));
    assert_eq!(name("10.1.2.4"), Some("narrow"));
    assert_eq!(name("10.1.2.3"), Some("host"));
    assert_eq!(name("2001:db8:1::5"), Some("narrow"));
    assert_eq!(name("2001:db8:2::5"), Some("wide"));
    assert_eq!(name("192.0.2.1"), None);
    assert_eq!(name("2001:db9::1"), None);

    // Whatever order they come in.
    let reversed = TrunkTable::new(vec![
        trunk("host", &["10.1.2.3"], true),
        trunk("narrow", &["10.1.2.0/24"], true),
        trunk("wide", &["10.0.0.0/8"], true),
    ]);
    assert_eq!(reversed.trunk_for(ip("10.1.2.4")).unwrap().name, "narrow");
    assert_eq!(reversed.trunk_for(ip("10.1.2.3")).unwrap().name, "host");
}

#[test]
fn equal_prefixes_go_to_the_older_trunk() {
    let table = TrunkTable::new(vec![trunk("older", &["10.0.0.0/8"], true), trunk("newer", &["10.0.0.0/8"], true)]);
    assert_eq!(table.trunk_for(ip("10.0.0.1")).unwrap().name, "older");
}

#[test]
fn ipv4_mapped_addresses_match_as_ipv4() {
    let table = TrunkTable::new(vec![trunk("v4", &["192.0.2.0/24"], true)]);
    assert_eq!(table.trunk_for(ip("::ffff:192.0.2.9")).unwrap().name, "v4");
    assert!(table.trunk_for(ip("::ffff:198.51.100.1")).is_none());
    // An IPv4-compatible (not mapped) address is IPv6.
    assert!(table.trunk_for(ip("::192.0.2.9")).is_none());
}

#[test]
fn disabled_trunks_match_nothing() {
    let table = TrunkTable::new(vec![trunk("off", &["10.0.0.0/8"], false), trunk("on", &["10.0.0.0/16"], true)]);
    assert_eq!(table.len(), 1);
    assert_eq!(table.trunk_for(ip("10.0.0.1")).unwrap().name, "on");
    assert!(table.trunk_for(ip("10.1.0.1")).is_none());
}

impl World {
    async fn create_trunk(&self, t: NewTrunk) -> Result<Trunk, TrunkError> {
        let mut tx = self.db.begin().await.unwrap();
        let r = create(&mut tx, &self.sealer, &SysadminProof::verified(), t, NOW).await;
        if r.is_ok() {
            tx.commit().await.unwrap();
        }
        r
    }

    async fn update(&self, id: &str, c: Changes) -> Result<Option<Trunk>, TrunkError> {
        let mut tx = self.db.begin().await.unwrap();
        let r = update(&mut tx, &self.sealer, &SysadminProof::verified(), id, c, NOW + 1).await;
        if r.is_ok() {
            tx.commit().await.unwrap();
        }
        r
    }
}

#[tokio::test]
async fn the_password_is_sealed_to_its_row() {
    let w = world().await;
    let mut t = new("Carrier", &["192.0.2.0/24"]);
    t.auth = Some(creds("trunkuser", "s3cret-password"));
    let made = w.create_trunk(t).await.unwrap();
    assert!(made.has_auth());
    assert_eq!(open_password(&w.sealer, &made).unwrap().as_deref(), Some("s3cret-password"));
    assert!(!format!("{made:?}").contains("s3cret"));

    let row =
        palisade_store::sip_trunks::get(w.db.reader(), &SysadminProof::verified(), &made.id).await.unwrap().unwrap();
    let sealed = row.auth_password_sealed.clone().unwrap();
    assert!(!sealed.contains("s3cret"));
    // Read back from the store, it opens; moved to another trunk, it does not.
    let read = get(&w.db, &SysadminProof::verified(), &made.id).await.unwrap().unwrap();
    assert_eq!(open_password(&w.sealer, &read).unwrap().as_deref(), Some("s3cret-password"));
    let mut other = w.create_trunk(new("Other", &["198.51.100.0/24"])).await.unwrap();
    assert_eq!(open_password(&w.sealer, &other).unwrap(), None);
    other.auth_password_sealed = Some(sealed);
    assert!(matches!(open_password(&w.sealer, &other), Err(VoiceError::Sealed(_))));
    assert!(matches!(open_password(&Sealer::new(&[6; 32]), &read), Err(VoiceError::Sealed(_))));
}

#[tokio::test]
async fn names_are_unique() {
    let w = world().await;
    w.create_trunk(new("Carrier", &["192.0.2.0/24"])).await.unwrap();
    assert!(matches!(w.create_trunk(new("Carrier", &["198.51.100.0/24"])).await, Err(TrunkError::DuplicateName)));
    assert!(w.create_trunk(new("Carrier 2", &["198.51.100.0/24"])).await.is_ok());
}

#[tokio::test]
async fn the_stir_policy_is_mark_unless_set_to_reject() {
    let w = world().await;
    let made = w.create_trunk(new("Carrier", &["192.0.2.0/24"])).await.unwrap();
    assert_eq!(made.stir_inbound, StirInbound::Mark);
    let mut t = new("Strict", &["198.51.100.0/24"]);
    t.stir_inbound = Some("reject".into());
    assert_eq!(w.create_trunk(t).await.unwrap().stir_inbound, StirInbound::Reject);
    let mut t = new("Odd", &["203.0.113.0/24"]);
    t.stir_inbound = Some("drop".into());
    assert_eq!(
        fields(w.create_trunk(t).await.unwrap_err()),
        vec![("stir.inbound".into(), "must be `mark` or `reject`".into())]
    );
    let changed = w.update(&made.id, Changes { stir_inbound: Some("reject".into()), ..Default::default() }).await;
    assert_eq!(changed.unwrap().unwrap().stir_inbound, StirInbound::Reject);
    let stored = get(&w.db, &SysadminProof::verified(), &made.id).await.unwrap().unwrap();
    assert_eq!(stored.stir_inbound, StirInbound::Reject, "stored as set");
}

#[tokio::test]
async fn updates_are_checked_as_a_whole() {
    let w = world().await;
    let mut t = new("Carrier", &["192.0.2.0/24"]);
    t.auth = Some(creds("trunkuser", "first-password"));
    let made = w.create_trunk(t).await.unwrap();

    // sips: with the stored udp transport is refused, and nothing changes.
    let e = w.update(&made.id, Changes { uri: Some("sips:carrier.example".into()), ..Default::default() }).await;
    assert_eq!(fields(e.unwrap_err())[0].0, "transport");
    let stored = get(&w.db, &SysadminProof::verified(), &made.id).await.unwrap().unwrap();
    assert_eq!(stored, made);

    let both = Changes {
        uri: Some("sips:carrier.example".into()),
        transport: Some("tls".into()),
        source_cidrs: Some(strings(&["203.0.113.0/24"])),
        enabled: Some(false),
        ..Default::default()
    };
    let changed = w.update(&made.id, both).await.unwrap().unwrap();
    assert_eq!(
        (changed.uri.as_str(), changed.transport, changed.enabled),
        ("sips:carrier.example", Transport::Tls, false)
    );
    assert_eq!(changed.source_cidrs[0].to_string(), "203.0.113.0/24");
    assert_eq!((changed.created_at, changed.updated_at), (NOW, NOW + 1));
    // The credentials stay unless changed.
    assert_eq!(open_password(&w.sealer, &changed).unwrap().as_deref(), Some("first-password"));

    let new_creds = Changes { auth: Some(Some(creds("other", "second-password"))), ..Default::default() };
    let changed = w.update(&made.id, new_creds).await.unwrap().unwrap();
    assert_eq!(changed.auth_username.as_deref(), Some("other"));
    assert_eq!(open_password(&w.sealer, &changed).unwrap().as_deref(), Some("second-password"));

    let bad = Changes { auth: Some(Some(creds("other", "short"))), ..Default::default() };
    assert_eq!(fields(w.update(&made.id, bad).await.unwrap_err())[0].0, "auth.password");

    let cleared = w.update(&made.id, Changes { auth: Some(None), ..Default::default() }).await.unwrap().unwrap();
    assert!(!cleared.has_auth() && cleared.auth_username.is_none());
    assert_eq!(open_password(&w.sealer, &cleared).unwrap(), None);

    assert!(w.update("no-such-trunk", Changes::default()).await.unwrap().is_none());
}

#[tokio::test]
async fn the_table_reloads_enabled_trunks() {
    let w = world().await;
    let mut table = TrunkTable::load(&w.db).await.unwrap();
    assert!(table.is_empty());
    let a = w.create_trunk(new("A", &["192.0.2.0/24"])).await.unwrap();
    let mut off = new("B", &["198.51.100.0/24"]);
    off.enabled = false;
    let b = w.create_trunk(off).await.unwrap();
    // Until reloaded, the table is what it was.
    assert!(table.trunk_for(ip("192.0.2.1")).is_none());
    table.reload(&w.db).await.unwrap();
    assert_eq!(table.trunk_for(ip("192.0.2.1")).unwrap().id, a.id);
    assert!(table.trunk_for(ip("198.51.100.1")).is_none());

    w.update(&b.id, Changes { enabled: Some(true), ..Default::default() }).await.unwrap().unwrap();
    w.update(&a.id, Changes { enabled: Some(false), ..Default::default() }).await.unwrap().unwrap();
    table.reload(&w.db).await.unwrap();
    assert!(table.trunk_for(ip("192.0.2.1")).is_none());
    assert_eq!(table.trunk_for(ip("198.51.100.1")).unwrap().id, b.id);

    let proof = SysadminProof::verified();
    assert_eq!(palisade_store::sip_trunks::delete(w.db.reader(), &proof, &b.id).await.unwrap().as_deref(), Some("B"));
    assert_eq!(palisade_store::sip_trunks::delete(w.db.reader(), &proof, &b.id).await.unwrap(), None);
    table.reload(&w.db).await.unwrap();
    assert!(table.is_empty());
    assert_eq!(list(&w.db, &proof).await.unwrap().len(), 1);
}
