//! Carriers behind one trait, and the built-in sandbox carrier that makes
//! everything work with no account.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::media::{tone_frame, Attached, MediaLeg, Playback, FRAME_BYTES, FRAME_MS};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message handed to a carrier after admission.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub body: String,
}

/// What went wrong, in words fit for a client: a carrier's own message and
/// any credential stay in the log, never in these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    #[error("the destination rejected the message")]
    Undeliverable,
    #[error("the carrier did not answer in time")]
    Timeout,
    #[error("the carrier is unavailable")]
    Unavailable,
    /// The callee answered an SRTP offer with weaker media (plain RTP, or a
    /// suite not offered): the call is not connected.
    #[error("the callee's media was weaker than offered")]
    MediaDowngrade,
    /// SDES keys would have gone to the carrier over a plaintext transport.
    #[error("the offer's keys cannot go to the carrier in the clear")]
    KeysInTheClear,
    /// The carrier's leg must be SRTP and the offer is not.
    #[error("the carrier requires SRTP")]
    SrtpRequired,
}

impl CarrierError {
    /// A stable code for APIs and events.
    pub fn code(&self) -> &'static str {
        match self {
            CarrierError::Undeliverable => "undeliverable",
            CarrierError::Timeout => "carrier_timeout",
            CarrierError::Unavailable => "carrier_unavailable",
            CarrierError::MediaDowngrade => "srtp_downgrade",
            CarrierError::KeysInTheClear => "sdes_plaintext",
            CarrierError::SrtpRequired => "srtp_required",
        }
    }
}

/// A call handed to a carrier after admission.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The caller's session description (SDP), passed through as it is:
    /// none from the API.
    pub offer: Option<Vec<u8>>,
    /// How far the platform vouches for the caller ID (SHAKEN `A`, `B` or
    /// `C`), for a carrier that signs calls (a trunk with STIR/SHAKEN).
    pub attestation: Option<String>,
    /// Record the call: the carrier keeps its audio for [`Carrier::take_recording`].
    pub record: bool,
}

/// How the callee answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAnswer {
    /// With the callee's session description, if it sent one.
    Answered {
        sdp: Option<Vec<u8>>,
    },
    Busy,
}

pub trait Carrier: Send + Sync + 'static {
    /// Places the call and waits until it is answered or refused.
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>>;

    /// Resolves when the callee of an answered call hangs up (the sandbox's
    /// after its call length; a trunk's when its BYE comes); never when
    /// nothing ends it from the far side.
    fn callee_hangs_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, ()>;

    /// Ends the call at the carrier (a hang-up through the API): billing
    /// stops in the database, so the line must stop too.
    fn hang_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Hands the message over; `Ok` is the carrier's reference for it.
    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>>;

    /// Whether a message the carrier accepted reached the handset (the
    /// delivery report).
    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Delivers a text from the platform itself (a one-time code proving
    /// control of a number), not from any tenant's identity.
    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Whether what it sends reaches real phones. A carrier that does
    /// lets an identity send only once its number is verified: a number
    /// shown as the sender must be its tenant's to show.
    fn reaches_phones(&self) -> bool;

    /// Attaches a stream to a call's audio (queued up to `playback_frames`
    /// frames towards the far end). Audio flows once the call is answered
    /// and ends with it.
    fn attach_media(&self, _call_id: &str, _playback_frames: usize) -> Result<MediaLeg, NoMedia> {
        Err(NoMedia::NotThrough)
    }

    /// The audio of a recorded call that is over (8 kHz G.711 µ-law, mono),
    /// once: `None` when the carrier has none (not answered, not
    /// recorded, or its media never passed through us).
    fn take_recording(&self, _call_id: &str) -> Option<Vec<u8>> {
        None
    }
}

/// Why a call's audio cannot be streamed from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoMedia {
    /// The call is not live on this instance (over, or placed by another).
    NotHere,
    /// Its media does not pass through this server (a trunk's flows end to end).
    NotThrough,
    /// Another stream holds it.
    Taken,
}

/// Numbers the sandbox treats specially: North American 555-01XX numbers,
/// reserved for fiction (valid in the numbering plan, never anyone's phone).
pub mod magic {
    /// Accepted, then the delivery report says undeliverable.
    pub const FAILS: &str = "+12025550101";
    /// The carrier times out.
    pub const TIMES_OUT: &str = "+12025550102";
    /// Calls to it are busy.
    pub const BUSY: &str = "+12025550103";
}

/// Accepts every message at once and reports delivery after `delay`;
/// answers calls after `delay` and hangs up after `call_length`; except for
/// the [`magic`] numbers.
/// Its answered calls' far end plays a 400 Hz tone, and plays back (echoes)
/// what a stream sends it; a recorded call's recording is what the far end
/// played (at most [`MAX_RECORDED_FRAMES`]).
#[derive(Debug, Clone)]
pub struct SandboxCarrier {
    pub delay: Duration,
    pub call_length: Duration,
    /// Where the sandbox's handsets receive the platform's codes, one file
    /// each (mode 0600), as the dev outbox receives mail; none: dropped.
    pub handset_dir: Option<std::path::PathBuf>,
    lines: Lines,
    /// Where the far end's SRTP echo listens, and where it counts packets.
    media_ip: std::net::IpAddr,
    media_events: Events,
}

/// Where the echo counts its packets.
#[derive(Clone)]
struct Events(Arc<dyn crate::srtp_echo::MediaEvents>);

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Events")
    }
}

impl SandboxCarrier {
    pub fn new(delay: Duration, call_length: Duration, handset_dir: Option<std::path::PathBuf>) -> Self {
        Self {
            delay,
            call_length,
            handset_dir,
            lines: Lines::default(),
            media_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            media_events: Events(Arc::new(crate::srtp_echo::Uncounted)),
        }
    }

    /// The SRTP echo listens on `ip` and counts its packets in `events`.
    pub fn with_media(mut self, ip: std::net::IpAddr, events: Arc<dyn crate::srtp_echo::MediaEvents>) -> Self {
        self.media_ip = ip;
        self.media_events = Events(events);
        self
    }
}

/// The longest recording the sandbox keeps: an hour of frames.
pub const MAX_RECORDED_FRAMES: usize = 3600 * 1000 / FRAME_MS as usize;

/// The sandbox's calls in this process, from placing to hang-up, and the
/// recordings of those over, until taken.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<HashMap<String, Line>>>, Arc<Mutex<HashMap<String, Vec<u8>>>>);

impl std::fmt::Debug for Lines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lines")
    }
}

struct Line {
    answered: watch::Sender<bool>,
    attached: Arc<AtomicBool>,
    /// The SRTP echo of a caller that offered SDES; it stops with the line.
    echo: Option<crate::srtp_echo::EchoLeg>,
    /// A recorded call: when it was answered, and what its far end played
    /// to a stream (none attached: its tone, for as long as it lasted).
    recorder: Option<Recorder>,
}

#[derive(Default)]
struct Recorder {
    answered: Option<tokio::time::Instant>,
    played: Arc<Mutex<Vec<u8>>>,
}

impl Recorder {
    fn audio(&self, attached: bool) -> Option<Vec<u8>> {
        let answered = self.answered?;
        if attached {
            return Some(std::mem::take(&mut *self.played.lock().unwrap_or_else(PoisonError::into_inner)));
        }
        let frames = (answered.elapsed().as_millis() / u128::from(FRAME_MS)) as usize;
        Some(tone_frame().repeat(frames.min(MAX_RECORDED_FRAMES)))
    }
}

impl Lines {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Line>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ring(&self, id: &str, record: bool) {
        let recorder = record.then(Recorder::default);
        let line = Line { answered: watch::channel(false).0, attached: Arc::default(), echo: None, recorder };
        self.map().insert(id.to_owned(), line);
    }

    /// Answered: with the echo, if any; false when the line is gone (hung
    /// up meanwhile).
    fn answer(&self, id: &str, echo: Option<crate::srtp_echo::EchoLeg>) -> bool {
        match self.map().get_mut(id) {
            Some(line) => {
                line.echo = echo;
                if let Some(r) = &mut line.recorder {
                    r.answered = Some(tokio::time::Instant::now());
                }
                line.answered.send_replace(true);
                true
            }
            None => false,
        }
    }

    /// Over: its audio ends (the watch's sender goes); a recorded call's
    /// recording waits to be taken.
    fn end(&self, id: &str) {
        let Some(line) = self.map().remove(id) else { return };
        let attached = line.attached.load(Ordering::Acquire);
        if let Some(audio) = line.recorder.and_then(|r| r.audio(attached)) {
            self.recordings().insert(id.to_owned(), audio);
        }
    }

    fn recordings(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.1.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Carrier for SandboxCarrier {
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>> {
        Box::pin(async move {
            self.lines.ring(&c.id, c.record);
            tokio::time::sleep(self.delay).await;
            let answer = match c.to.as_str() {
                magic::BUSY => Ok(CallAnswer::Busy),
                magic::FAILS => Err(CarrierError::Undeliverable),
                magic::TIMES_OUT => Err(CarrierError::Timeout),
                _ => Ok(CallAnswer::Answered { sdp: None }),
            };
            if !matches!(answer, Ok(CallAnswer::Answered { .. })) {
                self.lines.end(&c.id);
                return answer;
            }
            // An SDES offer is answered with SRTP of its suite, and echoed.
            let echo = match &c.offer {
                Some(offer) => {
                    crate::srtp_echo::EchoLeg::start(offer, self.media_ip, self.media_events.0.clone()).await
                }
                None => None,
            };
            let sdp = echo.as_ref().map(|e| e.answer.clone());
            self.lines.answer(&c.id, echo);
            Ok(CallAnswer::Answered { sdp })
        })
    }

    fn callee_hangs_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            tokio::time::sleep(self.call_length).await;
            self.lines.end(call_id);
        })
    }

    fn hang_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        self.lines.end(call_id);
        Box::pin(std::future::ready(Ok(())))
    }

    fn attach_media(&self, call_id: &str, playback_frames: usize) -> Result<MediaLeg, NoMedia> {
        let (mut answered, attached, recording) = {
            let map = self.lines.map();
            let line = map.get(call_id).ok_or(NoMedia::NotHere)?;
            if line.attached.swap(true, Ordering::AcqRel) {
                return Err(NoMedia::Taken);
            }
            (line.answered.subscribe(), line.attached.clone(), line.recorder.as_ref().map(|r| r.played.clone()))
        };
        let (playback, marks) = Playback::new(playback_frames);
        // A second of audio: a stream further behind loses frames.
        let (tx, audio) = mpsc::channel(50);
        let far_end = playback.clone();
        tokio::spawn(async move {
            // Until the answer, unless the call or the stream ends first.
            tokio::select! {
                a = answered.wait_for(|a| *a) => if a.is_err() {
                    return;
                },
                () = tx.closed() => return,
            }
            let tone = tone_frame();
            let mut tick = tokio::time::interval(Duration::from_millis(FRAME_MS));
            // The far end's clock does not slip: a late tick is caught up.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    // The line's sender went: the call is over.
                    _ = answered.changed() => break,
                    () = tx.closed() => break,
                }
                // What it was sent comes back, as from a handset held to a speaker.
                let frame = far_end.next_frame().map_or_else(|| tone.to_vec(), |f| f.to_vec());
                if let Some(r) = &recording {
                    let mut played = r.lock().unwrap_or_else(PoisonError::into_inner);
                    if played.len() < MAX_RECORDED_FRAMES * FRAME_BYTES {
                        played.extend_from_slice(&frame);
                    }
                }
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(frame) {
                    break;
                }
            }
        });
        Ok(MediaLeg { audio, playback, marks, attached: Attached(attached) })
    }

    fn take_recording(&self, call_id: &str) -> Option<Vec<u8>> {
        self.lines.recordings().remove(call_id)
    }

    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>> {
        Box::pin(async move {
            if m.to == magic::TIMES_OUT {
                return Err(CarrierError::Timeout);
            }
            Ok(format!("sandbox-{}", m.id))
        })
    }

    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if m.to == magic::FAILS {
                Err(CarrierError::Undeliverable)
            } else {
                Ok(())
            }
        })
    }

    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            match to {
                magic::TIMES_OUT => return Err(CarrierError::Timeout),
                magic::FAILS => return Err(CarrierError::Undeliverable),
                _ => {}
            }
            let Some(dir) = self.handset_dir.clone() else { return Ok(()) };
            let content = format!("To: {to}\n\n{text}\n");
            tokio::task::spawn_blocking(move || write_private(&dir, content.as_bytes()))
                .await
                .map_err(|_| CarrierError::Unavailable)?
                .map_err(|e| {
                    tracing::warn!(error = %e, "the sandbox could not write a code to its handset folder");
                    CarrierError::Unavailable
                })
        })
    }

    fn reaches_phones(&self) -> bool {
        false
    }
}

/// A new file in `dir` (created 0700) that only the server can read.
fn write_private(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("sms-{now}-{}.txt", uuid::Uuid::now_v7());
    opts.open(dir.join(name))?.write_all(bytes)
}
