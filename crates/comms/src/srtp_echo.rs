//! The sandbox's far end for a caller that offers SRTP with SDES keys: it
//! answers with a key of its own for the offered suite and echoes what it
//! hears. Only packets that authenticate under the caller's key come back
//! (decrypted with it, encrypted anew with ours, to where they came from);
//! anything else, a plain RTP packet above all, is dropped and counted.
//! The SRTP itself is rtc-srtp's.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;
use tokio::net::UdpSocket;

/// Where the echo's packets are counted (the server's metrics).
pub trait MediaEvents: Send + Sync + 'static {
    /// `echoed`, or why a packet was dropped: `not_srtp` (it did not
    /// authenticate under the caller's key: plain RTP, a forgery, a replay).
    fn packet(&self, outcome: &'static str);
}

/// No counting.
pub struct Uncounted;

impl MediaEvents for Uncounted {
    fn packet(&self, _: &'static str) {}
}

/// The SDES suites the echo speaks, as SDP names them (RFC 4568, RFC 6188,
/// RFC 7714), with their key and salt lengths.
const SUITES: [(&str, ProtectionProfile, usize, usize); 4] = [
    ("AES_CM_128_HMAC_SHA1_80", ProtectionProfile::Aes128CmHmacSha1_80, 16, 14),
    ("AES_256_CM_HMAC_SHA1_80", ProtectionProfile::Aes256CmHmacSha1_80, 32, 14),
    ("AEAD_AES_128_GCM", ProtectionProfile::AeadAes128Gcm, 16, 12),
    ("AEAD_AES_256_GCM", ProtectionProfile::AeadAes256Gcm, 32, 12),
];

/// The largest datagram read.
const MAX_PACKET: usize = 1500;

/// The caller's offer as the echo needs it.
struct Offered {
    /// The first audio stream's protocol and its first payload type.
    proto: String,
    payload_type: String,
    /// The `a=crypto` line taken: its tag, suite, and the caller's key.
    tag: String,
    suite: usize,
    key: Vec<u8>,
    /// The other m-lines, declined in the answer (`m=<media> 0 <proto> <fmt>`).
    declined: Vec<String>,
}

/// The first audio stream of `offer` with an SDES line of a suite we
/// speak (no MKI, no session parameters); none when there is no such.
fn offered(offer: &[u8]) -> Option<Offered> {
    let sdp = sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(offer)).ok()?;
    let mut found = None;
    let mut declined = Vec::new();
    for m in &sdp.media_descriptions {
        let name = &m.media_name;
        let proto = name.protos.join("/");
        let fmt = name.formats.first().cloned().unwrap_or_else(|| "0".into());
        if found.is_none() && name.media == "audio" && matches!(proto.as_str(), "RTP/SAVP" | "RTP/SAVPF") {
            let line = m.attributes.iter().filter(|a| a.key == "crypto").find_map(|a| crypto(a.value.as_deref()?));
            if let Some((tag, suite, key)) = line {
                found = Some((proto, fmt, tag, suite, key));
                continue;
            }
        }
        declined.push(format!("m={} 0 {proto} {fmt}", name.media));
    }
    let (proto, payload_type, tag, suite, key) = found?;
    Some(Offered { proto, payload_type, tag, suite, key, declined })
}

/// `<tag> <suite> inline:<key||salt>[|lifetime]`: the tag, the suite's
/// index in [`SUITES`] and the key material.
fn crypto(value: &str) -> Option<(String, usize, Vec<u8>)> {
    let mut parts = value.split_ascii_whitespace();
    let (tag, suite, params) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !tag.bytes().all(|b| b.is_ascii_digit()) || tag.len() > 9 {
        return None;
    }
    let index = SUITES.iter().position(|(name, ..)| *name == suite)?;
    let inline = params.strip_prefix("inline:")?;
    let mut fields = inline.split('|');
    let key = B64.decode(fields.next()?).ok()?;
    // A lifetime may follow; an MKI (`n:len`) is not spoken here.
    if fields.clone().any(|f| f.contains(':')) || fields.count() > 1 {
        return None;
    }
    let (_, _, key_len, salt_len) = SUITES[index];
    (key.len() == key_len + salt_len).then(|| (tag.to_owned(), index, key))
}

/// A running echo: the answer to send the caller, and the task that ends
/// when this is dropped.
pub struct EchoLeg {
    pub answer: Vec<u8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EchoLeg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoLeg {
    /// For a caller's SDES offer: binds a UDP port on `ip` and answers with
    /// a fresh key of the offered suite. None when the offer has no SDES
    /// audio stream we speak (or no port could be bound).
    pub async fn start(offer: &[u8], ip: IpAddr, events: Arc<dyn MediaEvents>) -> Option<EchoLeg> {
        let o = offered(offer)?;
        let (name, profile, key_len, salt_len) = SUITES[o.suite];
        let provider = rtc_srtp::crypto::default_provider().ok()?;
        let mut ours = vec![0u8; key_len + salt_len];
        provider.random().fill(&mut ours).ok()?;
        let crypto = provider.crypto();
        let (their_key, their_salt) = o.key.split_at(key_len);
        let (our_key, our_salt) = ours.split_at(key_len);
        let inbound = Context::new(their_key, their_salt, profile, None, None, crypto).ok()?;
        let outbound = Context::new(our_key, our_salt, profile, None, None, crypto).ok()?;
        let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await.ok()?;
        let port = socket.local_addr().ok()?.port();
        let family = if ip.is_ipv6() { "IP6" } else { "IP4" };
        let mut answer = format!(
            "v=0\r\no=palisade-sandbox 1 1 IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio {port} {} {}\r\na=crypto:{} {name} inline:{}\r\na=sendrecv\r\n",
            o.proto,
            o.payload_type,
            o.tag,
            B64.encode(&ours),
        );
        for m in &o.declined {
            answer.push_str(m);
            answer.push_str("\r\n");
        }
        let task = tokio::spawn(echo(socket, inbound, outbound, events));
        Some(EchoLeg { answer: answer.into_bytes(), task })
    }
}

/// What authenticates under the caller's key goes back under ours, to where
/// it came from; nothing else does (so the echo reflects no one's traffic
/// at a third party, and never more than it was sent).
async fn echo(socket: UdpSocket, mut inbound: Context, mut outbound: Context, events: Arc<dyn MediaEvents>) {
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else { return };
        let Ok(plain) = inbound.decrypt_rtp(&buf[..n]) else {
            events.packet("not_srtp");
            continue;
        };
        match outbound.encrypt_rtp(&plain) {
            Ok(packet) => {
                let _ = socket.send_to(&packet, from).await;
                events.packet("echoed");
            }
            Err(_) => events.packet("not_srtp"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(lines: &str) -> Vec<u8> {
        format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{lines}").into_bytes()
    }

    const KEY30: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw";

    #[test]
    fn the_first_sdes_audio_stream_of_a_suite_we_speak_is_taken() {
        let o = offered(&offer(&format!(
            "m=video 5002 RTP/SAVP 96\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n\
             m=audio 5000 RTP/SAVP 0 8\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY30}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20\r\n"
        )))
        .unwrap();
        assert_eq!((o.tag.as_str(), SUITES[o.suite].0, o.payload_type.as_str()), ("2", "AES_CM_128_HMAC_SHA1_80", "0"));
        assert_eq!(o.key.len(), 30);
        assert_eq!(o.declined, vec!["m=video 0 RTP/SAVP 96".to_owned()]);
    }

    #[test]
    fn keys_of_the_wrong_length_mki_or_plain_streams_give_no_echo() {
        let short = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3OA";
        assert!(offered(&offer(&format!(
            "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{short}\r\n"
        )))
        .is_none());
        assert!(offered(&offer(&format!(
            "m=audio 5000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}|2^20|1:4\r\n"
        )))
        .is_none());
        assert!(offered(&offer(&format!(
            "m=audio 5000 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}\r\n"
        )))
        .is_none());
        assert!(offered(&offer("m=audio 5000 RTP/SAVP 0\r\n")).is_none());
        assert!(offered(b"not sdp").is_none());
    }
}
