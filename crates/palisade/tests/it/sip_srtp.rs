//! The sandbox's far end answers an SDES offer with SRTP of the offered
//! suite and echoes the caller's media: packets made and read here with an
//! SRTP implementation of its own (rtc-srtp, as a caller's phone would)
//! come back under the answer's key; a plain RTP packet sent to the SRTP
//! leg is dropped and counted.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rtc_srtp::context::Context;
use rtc_srtp::protection_profile::ProtectionProfile;

use crate::sip_edge::{calls, invite, media_server};
use crate::sip_ua::Ua;

/// An RTP packet: version 2, payload type 0, the sequence number, 160 bytes
/// of μ-law.
fn rtp(seq: u16, fill: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend(std::iter::repeat_n(fill, 160));
    p
}

fn context(material: &[u8], key_len: usize, profile: ProtectionProfile) -> Context {
    let provider = rtc_srtp::crypto::default_provider().unwrap();
    let (key, salt) = material.split_at(key_len);
    Context::new(key, salt, profile, None, None, provider.crypto()).unwrap()
}

async fn media_metric(addr: std::net::SocketAddr, kind: &str) -> u64 {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let needle = format!("palisade_media_packets_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srtp_call_is_answered_with_srtp_and_echoed_and_plain_rtp_is_dropped() {
    let (s, p) = media_server(|c| c.metrics.listen = "127.0.0.1:0".into()).await;
    for (suite, profile, key_len, salt_len) in [
        ("AES_CM_128_HMAC_SHA1_80", ProtectionProfile::Aes128CmHmacSha1_80, 16, 14),
        ("AEAD_AES_256_GCM", ProtectionProfile::AeadAes256Gcm, 32, 12),
    ] {
        let phone_socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = phone_socket.local_addr().unwrap().port();
        let ours: Vec<u8> = (0..key_len + salt_len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(3)).collect();
        let offer = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/SAVP 0\r\na=crypto:1 {suite} inline:{}\r\n",
            B64.encode(&ours)
        );
        let mut tls = Ua::tls(s.sip_tls(), &p.user, &p.realm).await;
        tls.offer = Some(offer);
        let ok = invite(&mut tls, "+34612000222", &p.password).await;
        assert_eq!(ok.status, 200, "{}", ok.raw);
        // The answer: the same suite, a key of its own, a real port.
        let body = ok.raw.split("\r\n\r\n").nth(1).unwrap().to_owned();
        let m = body.lines().find(|l| l.starts_with("m=audio ")).expect("an audio line");
        let fields: Vec<&str> = m.split(' ').collect();
        assert_eq!((fields[2], fields[3]), ("RTP/SAVP", "0"), "{body}");
        let echo_port: u16 = fields[1].parse().unwrap();
        assert_ne!(echo_port, 0, "{body}");
        let crypto = body.lines().find_map(|l| l.strip_prefix("a=crypto:1 ")).expect("a crypto line");
        let (answered_suite, inline) = crypto.split_once(' ').unwrap();
        assert_eq!(answered_suite, suite, "{body}");
        let theirs = B64.decode(inline.trim().strip_prefix("inline:").unwrap()).unwrap();
        assert_eq!(theirs.len(), key_len + salt_len);
        assert_ne!(theirs, ours, "the far end keys its own direction");

        let mut send = context(&ours, key_len, profile);
        let mut read = context(&theirs, key_len, profile);
        let far = std::net::SocketAddr::from(([127, 0, 0, 1], echo_port));
        let metrics = s.metrics_addr().unwrap();
        let (echoed, dropped) = (media_metric(metrics, "echoed").await, media_metric(metrics, "not_srtp").await);
        let mut buf = vec![0u8; 2048];
        for seq in 1..=3u16 {
            let packet = rtp(seq, 0x55 + seq as u8);
            let protected = send.encrypt_rtp(&packet).unwrap();
            assert_ne!(&protected[12..], &packet[12..], "the payload travels encrypted");
            phone_socket.send_to(&protected, far).await.unwrap();
            let (n, from) = tokio::time::timeout(Duration::from_secs(3), phone_socket.recv_from(&mut buf))
                .await
                .expect("the echo comes back")
                .unwrap();
            assert_eq!(from, far);
            let back = read.decrypt_rtp(&buf[..n]).expect("the echo is SRTP under the answer's key");
            assert_eq!(&back[..], &packet[..], "the same packet comes back");
            assert!(send.decrypt_rtp(&buf[..n]).is_err(), "not under our own key");
        }
        // Plain RTP to the SRTP leg: nothing comes back; it is counted.
        phone_socket.send_to(&rtp(10, 0x11), far).await.unwrap();
        // A packet under another key: the same.
        let mut stranger = context(&vec![9u8; key_len + salt_len], key_len, profile);
        phone_socket.send_to(&stranger.encrypt_rtp(&rtp(11, 0x22)).unwrap(), far).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(500), phone_socket.recv_from(&mut buf)).await;
        assert!(got.is_err(), "plain or foreign RTP was echoed");
        assert_eq!(media_metric(metrics, "echoed").await, echoed + 3);
        assert_eq!(media_metric(metrics, "not_srtp").await, dropped + 2);
    }
    // The CDR keeps the call's suite.
    let list = calls(&s, &p.token).await;
    let media: Vec<_> = list.iter().map(|c| c["media"].as_str().unwrap().to_owned()).collect();
    assert!(media.contains(&"AEAD_AES_256_GCM".to_owned()) && media.contains(&"AES_CM_128_HMAC_SHA1_80".to_owned()));
    s.stop().await;
}
