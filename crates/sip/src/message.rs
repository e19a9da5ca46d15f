//! What the edge reads from a SIP request, read strictly and bounded: the
//! stack's parser is lenient (docs/plans/sip-edge.md), so everything a
//! decision rests on is checked here. Pure: no I/O.

/// Bounds on one request (the `sip` settings).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// A request the edge refuses before any rule runs: the status to answer
/// and the reason word for the `Warning` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    pub status: u16,
    pub reason: &'static str,
}

const fn bad(reason: &'static str) -> Malformed {
    Malformed { status: 400, reason }
}

/// Most contacts one REGISTER may carry.
pub const MAX_CONTACTS: usize = 16;
/// Longest URI we keep (contacts, addresses of record).
pub const MAX_URI: usize = 512;

/// The headers of a request as (lowercase name, value) pairs, compact
/// forms expanded.
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

/// RFC 3261 §7.3.3 compact forms.
fn long_name(name: &str) -> &str {
    match name {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        // RFC 8224 §7.4.
        "y" => "identity",
        other => other,
    }
}

impl Fields {
    /// From `Name: value` lines (as the stack prints each header).
    pub fn from_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Fields {
        Fields(
            lines
                .map(|l| match l.split_once(':') {
                    Some((n, v)) => (long_name(&n.trim().to_ascii_lowercase()).to_owned(), v.trim().to_owned()),
                    None => (String::new(), l.to_owned()),
                })
                .collect(),
        )
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The one value of a header that must appear once: `None` when it is
    /// missing or repeated.
    pub fn one<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        let mut it = self.all(name);
        let v = it.next()?;
        it.next().is_none().then_some(v)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks the bounds and the headers every request needs (RFC 3261
    /// §8.1.1): Via, and To, From, Call-ID, CSeq and Max-Forwards exactly
    /// once, the CSeq naming the request's method; Max-Forwards 0 is 483.
    pub fn check(&self, method: &str, message_len: usize, limits: &Limits) -> Result<Checked, Malformed> {
        if message_len > limits.max_message_bytes {
            return Err(Malformed { status: 513, reason: "message_too_large" });
        }
        if self.0.len() > limits.max_headers {
            return Err(bad("too_many_headers"));
        }
        for (n, v) in &self.0 {
            if n.is_empty() || n.len() + v.len() + 2 > limits.max_header_bytes {
                return Err(bad("header_too_long"));
            }
            if v.chars().any(|c| c.is_control() && c != '\t') {
                return Err(bad("control_character"));
            }
        }
        if self.all("via").next().is_none() {
            return Err(bad("missing_via"));
        }
        let need = |name: &'static str, reason: &'static str| self.one(name).ok_or(bad(reason));
        need("to", "to")?;
        need("from", "from")?;
        let call_id = need("call-id", "call_id")?;
        if call_id.is_empty() || call_id.len() > 256 {
            return Err(bad("call_id"));
        }
        let (seq, cseq_method) = need("cseq", "cseq")?.split_once(char::is_whitespace).ok_or(bad("cseq"))?;
        let seq: u32 = seq.parse().map_err(|_| bad("cseq"))?;
        if cseq_method.trim() != method {
            return Err(bad("cseq_method"));
        }
        let hops: u8 = need("max-forwards", "max_forwards")?.parse().map_err(|_| bad("max_forwards"))?;
        if hops == 0 {
            return Err(Malformed { status: 483, reason: "too_many_hops" });
        }
        Ok(Checked { cseq: i64::from(seq) })
    }
}

/// What [`Fields::check`] read on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub cseq: i64,
}

/// The URI of a name-addr or addr-spec (`"Bob" <sip:bob@host>;tag=1` or
/// `sip:bob@host;tag=1`): inside the angle brackets, or up to the first
/// header parameter.
pub fn uri_of(value: &str) -> Option<&str> {
    let v = value.trim();
    let uri = match v.find('<') {
        Some(start) => {
            let rest = &v[start + 1..];
            &rest[..rest.find('>')?]
        }
        None => v.split(';').next()?,
    };
    let uri = uri.trim();
    (!uri.is_empty() && uri.len() <= MAX_URI).then_some(uri)
}

/// The user and host of a `sip:`/`sips:` URI (`None` for anything else).
pub fn user_host(uri: &str) -> Option<(Option<&str>, &str)> {
    let rest = uri.strip_prefix("sip:").or_else(|| uri.strip_prefix("sips:"))?;
    let rest = rest.split([';', '?']).next()?;
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u.split(':').next()?), h),
        None => (None, rest),
    };
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        &hostport[..v6.find(']')? + 2]
    } else {
        hostport.split(':').next()?
    };
    let host_ok = !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    host_ok.then_some((user, host))
}

/// One Contact of a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Contact {
    Star,
    Uri { uri: String, expires: Option<u32> },
}

/// Splits on commas outside quotes and angle brackets.
fn split_list(v: &str) -> Vec<&str> {
    let (mut out, mut start, mut quoted, mut angle) = (Vec::new(), 0, false, false);
    let mut escaped = false;
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' if !angle => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&v[start..]);
    out
}

/// The Contact headers of a REGISTER: `*`, or URIs each with an optional
/// `expires` parameter. `Err` for a malformed one or too many.
pub fn contacts<'a>(values: impl Iterator<Item = &'a str>) -> Result<Vec<Contact>, Malformed> {
    let mut out = Vec::new();
    for value in values {
        for item in split_list(value) {
            let item = item.trim();
            if item == "*" {
                out.push(Contact::Star);
                continue;
            }
            let uri = uri_of(item).ok_or(bad("contact"))?;
            user_host(uri).ok_or(bad("contact"))?;
            // Header parameters follow the URI (after `>`, or after the
            // first `;` of a bare addr-spec: then they are all header params).
            let params = match item.rfind('>') {
                Some(end) => &item[end + 1..],
                None => item.find(';').map_or("", |i| &item[i..]),
            };
            let mut expires = None;
            for p in params.split(';').map(str::trim).filter(|p| !p.is_empty()) {
                if let Some(v) = p.strip_prefix("expires=") {
                    expires = Some(v.trim().parse::<u32>().map_err(|_| bad("contact_expires"))?);
                }
            }
            out.push(Contact::Uri { uri: uri.to_owned(), expires });
            if out.len() > MAX_CONTACTS {
                return Err(bad("too_many_contacts"));
            }
        }
    }
    Ok(out)
}

/// The `Expires` header: delta-seconds (RFC 3261 §20.19).
pub fn expires(value: Option<&str>) -> Result<Option<u32>, Malformed> {
    value.map(|v| v.trim().parse::<u32>().map_err(|_| bad("expires"))).transpose()
}

#[cfg(test)]
mod tests;

/// Whether a Content-Type names SDP (`application/sdp`, any parameters).
pub fn is_sdp(content_type: Option<&str>) -> bool {
    content_type.and_then(|ct| ct.split(';').next()).is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
}
