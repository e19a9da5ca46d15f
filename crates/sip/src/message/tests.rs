use super::*;

const LIMITS: Limits = Limits { max_message_bytes: 8192, max_headers: 64, max_header_bytes: 2048 };

fn fields(lines: &[&str]) -> Fields {
    Fields::from_lines(lines.iter().copied())
}

fn register(extra: &[&str]) -> Vec<String> {
    let mut l: Vec<String> = [
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
        "From: <sip:alice@t.example>;tag=1",
        "To: <sip:alice@t.example>",
        "Call-ID: abc@192.0.2.1",
        "CSeq: 7 REGISTER",
        "Max-Forwards: 70",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    l.extend(extra.iter().map(|s| s.to_string()));
    l
}

fn check(lines: &[String]) -> Result<Checked, Malformed> {
    Fields::from_lines(lines.iter().map(String::as_str)).check("REGISTER", 500, &LIMITS)
}

#[test]
fn a_well_formed_request_passes_and_compact_forms_count() {
    assert_eq!(check(&register(&[])), Ok(Checked { cseq: 7 }));
    let compact = [
        "v: SIP/2.0/UDP h;branch=z9hG4bK1",
        "f: <sip:a@h>;tag=1",
        "t: <sip:a@h>",
        "i: x",
        "CSeq: 1 REGISTER",
        "Max-Forwards: 1",
    ];
    assert_eq!(fields(&compact).check("REGISTER", 100, &LIMITS), Ok(Checked { cseq: 1 }));
}

#[test]
fn every_required_header_and_bound_is_checked() {
    let base = register(&[]);
    for (drop, reason) in [(0, "missing_via"), (1, "from"), (2, "to"), (3, "call_id"), (4, "cseq"), (5, "max_forwards")]
    {
        let mut l = base.clone();
        l.remove(drop);
        assert_eq!(check(&l), Err(Malformed { status: 400, reason }), "without line {drop}");
    }
    // Repeated where one is required.
    assert_eq!(check(&register(&["To: <sip:bob@t.example>"])).unwrap_err().reason, "to");
    assert_eq!(check(&register(&["Call-ID: other"])).unwrap_err().reason, "call_id");
    let swap = |i: usize, line: &str| {
        let mut l = base.clone();
        l[i] = line.to_owned();
        check(&l)
    };
    assert_eq!(swap(4, "CSeq: 7 INVITE").unwrap_err().reason, "cseq_method");
    assert_eq!(swap(4, "CSeq: x REGISTER").unwrap_err().reason, "cseq");
    assert_eq!(swap(4, "CSeq: 4294967296 REGISTER").unwrap_err().reason, "cseq");
    assert_eq!(swap(5, "Max-Forwards: 0"), Err(Malformed { status: 483, reason: "too_many_hops" }));
    assert_eq!(swap(5, "Max-Forwards: 300").unwrap_err().reason, "max_forwards");
    assert_eq!(swap(3, "Call-ID: ").unwrap_err().reason, "call_id");
    assert_eq!(swap(1, "From: <sip:a@h>\u{1}").unwrap_err().reason, "control_character");
    // Bounds.
    let many: Vec<String> = (0..60).map(|i| format!("X-{i}: y")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(check(&register(&many)).unwrap_err().reason, "too_many_headers");
    let long = format!("X-Long: {}", "a".repeat(2048));
    assert_eq!(check(&register(&[&long])).unwrap_err().reason, "header_too_long");
    let big = Fields::from_lines(base.iter().map(String::as_str)).check("REGISTER", 8193, &LIMITS);
    assert_eq!(big, Err(Malformed { status: 513, reason: "message_too_large" }));
    assert_eq!(check(&register(&["no colon here"])).unwrap_err().reason, "header_too_long");
}

#[test]
fn uris_users_and_hosts() {
    assert_eq!(
        uri_of("\"Bob, Jr\" <sip:bob@h.example:5060;transport=tcp>;tag=9"),
        Some("sip:bob@h.example:5060;transport=tcp")
    );
    assert_eq!(uri_of("sip:bob@h.example;tag=9"), Some("sip:bob@h.example"));
    assert_eq!(uri_of("<>"), None);
    assert_eq!(uri_of("<sip:open"), None);
    assert_eq!(user_host("sip:bob@h.example:5060;transport=tcp"), Some((Some("bob"), "h.example")));
    assert_eq!(user_host("sips:bob:secret@h.example"), Some((Some("bob"), "h.example")));
    assert_eq!(user_host("sip:h.example"), Some((None, "h.example")));
    assert_eq!(user_host("sip:alice@[2001:db8::1]:5060"), Some((Some("alice"), "[2001:db8::1]")));
    for bad in ["tel:+1202555", "http://h", "sip:", "sip:a@", "sip:a@h/x", "sip:a@[::1"] {
        assert_eq!(user_host(bad), None, "{bad}");
    }
}

#[test]
fn contacts_are_read_with_their_expiry() {
    let got = contacts(
        ["<sip:a@192.0.2.1:5060>;expires=60, \"X, Y\" <sip:b@192.0.2.2>", "sip:c@192.0.2.3;expires=0"].into_iter(),
    );
    assert_eq!(
        got,
        Ok(vec![
            Contact::Uri { uri: "sip:a@192.0.2.1:5060".into(), expires: Some(60) },
            Contact::Uri { uri: "sip:b@192.0.2.2".into(), expires: None },
            Contact::Uri { uri: "sip:c@192.0.2.3".into(), expires: Some(0) },
        ])
    );
    assert_eq!(contacts(["*"].into_iter()), Ok(vec![Contact::Star]));
    assert_eq!(contacts(std::iter::empty()), Ok(vec![]));
    for bad in ["<sip:a@h>;expires=x", "<mailto:a@h>", "<sip:a@h>;expires=-1", "<>"] {
        assert!(contacts([bad].into_iter()).is_err(), "{bad}");
    }
    let many = vec!["<sip:a@h>"; MAX_CONTACTS + 1].join(",");
    assert_eq!(contacts([many.as_str()].into_iter()).unwrap_err().reason, "too_many_contacts");
}

#[test]
fn expires_is_delta_seconds() {
    assert_eq!(expires(None), Ok(None));
    assert_eq!(expires(Some(" 3600 ")), Ok(Some(3600)));
    assert!(expires(Some("Thu, 01 Dec 1994 16:00:00 GMT")).is_err());
    assert!(expires(Some("-1")).is_err());
}

#[test]
fn only_sdp_bodies_are_offers() {
    assert!(is_sdp(Some("application/sdp")));
    assert!(is_sdp(Some("Application/SDP; charset=utf-8")));
    assert!(!is_sdp(Some("multipart/mixed;boundary=x")));
    assert!(!is_sdp(Some("application/sdpx")));
    assert!(!is_sdp(None));
}
