//! A call's audio as a stream sees it: 20 ms frames of G.711 μ-law at
//! 8 kHz from the far end, and a playback queue towards it that the far
//! end's side drains in real time (a frame every 20 ms), with marks that
//! report when playback reached them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

/// Bytes in one 20 ms frame of μ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;
/// One frame's length.
pub const FRAME_MS: u64 = 20;

/// One stream's hold on a call's audio. Dropping it lets go of the call
/// (another stream may attach).
pub struct MediaLeg {
    /// The far end's audio, a frame per message, in real time; closed when
    /// the call ends. Bounded: a stream that falls behind loses frames, as
    /// real-time audio does, rather than grow a backlog.
    pub audio: mpsc::Receiver<Vec<u8>>,
    /// What is played to the far end.
    pub playback: Arc<Playback>,
    /// Marks playback reached (played through, or dropped by a clear).
    /// Unbounded but fed only from the bounded playback queue.
    pub marks: mpsc::UnboundedReceiver<String>,
    /// Held while attached.
    pub attached: Attached,
}

/// A call's single attachment: free again when dropped.
pub struct Attached(pub Arc<AtomicBool>);

impl Drop for Attached {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Marks queued at once: a mark's name may be far larger than a frame.
pub const MAX_MARKS: usize = 100;

/// Audio queued for the far end, bounded in frames (and marks).
pub struct Playback {
    queue: Mutex<Queue>,
    cap_frames: usize,
    marks: mpsc::UnboundedSender<String>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Audio frames queued (marks are not audio).
    frames: usize,
    marks: usize,
    /// A frame's worth not yet complete: sent audio need not be cut at 20 ms.
    partial: Vec<u8>,
}

enum Item {
    Frame(Box<[u8; FRAME_BYTES]>),
    Mark(String),
}

/// The playback queue is full: the audio was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl Playback {
    pub fn new(cap_frames: usize) -> (Arc<Playback>, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Arc::new(Playback { queue: Mutex::default(), cap_frames, marks: tx }), rx)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues audio, cut into frames; all of it or, when it would not fit,
    /// none.
    pub fn push_audio(&self, audio: &[u8]) -> Result<(), Full> {
        let mut q = self.lock();
        let whole = (q.partial.len() + audio.len()) / FRAME_BYTES;
        // Marks count as a frame each: they too must stay bounded.
        if q.items.len() + whole > self.cap_frames {
            return Err(Full);
        }
        q.partial.extend_from_slice(audio);
        let rest = q.partial.split_off(whole * FRAME_BYTES);
        let full = std::mem::replace(&mut q.partial, rest);
        for chunk in full.chunks_exact(FRAME_BYTES) {
            let mut frame = Box::new([0u8; FRAME_BYTES]);
            frame.copy_from_slice(chunk);
            q.items.push_back(Item::Frame(frame));
        }
        q.frames += whole;
        Ok(())
    }

    /// Queues a mark after the audio queued so far.
    pub fn mark(&self, name: String) -> Result<(), Full> {
        let mut q = self.lock();
        if q.items.len() >= self.cap_frames || q.marks >= MAX_MARKS {
            return Err(Full);
        }
        q.marks += 1;
        q.items.push_back(Item::Mark(name));
        Ok(())
    }

    /// Drops everything queued; its marks are reported as reached.
    pub fn clear(&self) {
        let mut q = self.lock();
        q.partial.clear();
        (q.frames, q.marks) = (0, 0);
        for item in q.items.drain(..) {
            if let Item::Mark(name) = item {
                let _ = self.marks.send(name);
            }
        }
    }

    /// The next frame to play, reporting the marks before it; `None` when
    /// nothing is queued (the marks at the end reported too).
    pub fn next_frame(&self) -> Option<Box<[u8; FRAME_BYTES]>> {
        let mut q = self.lock();
        while let Some(item) = q.items.pop_front() {
            match item {
                Item::Mark(name) => {
                    q.marks -= 1;
                    let _ = self.marks.send(name);
                }
                Item::Frame(f) => {
                    q.frames -= 1;
                    return Some(f);
                }
            }
        }
        None
    }

    /// Audio frames waiting to be played.
    pub fn queued_frames(&self) -> usize {
        self.lock().frames
    }
}

/// G.711 μ-law encoding of one 16-bit linear sample (ITU-T G.711, the
/// segment form with bias 0x84).
pub fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let s = i32::from(sample);
    let sign = if s < 0 { 0x80 } else { 0 };
    let magnitude = s.abs().min(CLIP) + BIAS;
    // The segment: the position of the highest set bit above bit 7.
    let exponent = (31 - magnitude.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// One 20 ms frame of a 400 Hz tone at about -12 dBFS: 400 Hz is exactly
/// eight periods in a frame, so the frame repeats seamlessly.
pub fn tone_frame() -> [u8; FRAME_BYTES] {
    let mut frame = [0u8; FRAME_BYTES];
    for (i, b) in frame.iter_mut().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * 400.0 * (i as f64) / 8000.0;
        *b = ulaw((phase.sin() * 8000.0) as i16);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_matches_g711() {
        // Reference values of the G.711 μ-law table.
        assert_eq!(ulaw(0), 0xFF);
        assert_eq!(ulaw(-1), 0x7F);
        assert_eq!(ulaw(32767), 0x80);
        assert_eq!(ulaw(-32768), 0x00);
        assert_eq!(ulaw(1000), 0xCE);
        assert_eq!(ulaw(-1000), 0x4E);
        assert_eq!(ulaw(100), 0xF2);
    }

    #[test]
    fn the_tone_repeats_every_frame_and_is_not_silence() {
        let f = tone_frame();
        assert_eq!(f[..20], f[20..40]);
        assert!(f.iter().any(|&b| b != 0xFF));
    }

    #[test]
    fn audio_is_cut_into_frames_and_marks_come_in_order() {
        let (p, mut marks) = Playback::new(10);
        p.push_audio(&[1; 100]).unwrap();
        assert_eq!(p.queued_frames(), 0, "less than a frame waits for the rest");
        p.push_audio(&[2; 100]).unwrap();
        assert_eq!(p.queued_frames(), 1);
        p.mark("a".into()).unwrap();
        p.push_audio(&[3; 120]).unwrap();
        let first = p.next_frame().unwrap();
        assert_eq!(first[..100], [1; 100]);
        assert_eq!(first[100..], [2; 60]);
        assert!(marks.try_recv().is_err(), "the mark is after the first frame");
        let second = p.next_frame().unwrap();
        assert_eq!(marks.try_recv().unwrap(), "a");
        assert_eq!(second[..40], [2; 40]);
        assert_eq!(second[40..], [3; 120]);
        assert!(p.next_frame().is_none());
    }

    #[test]
    fn the_queue_is_bounded_and_clear_reports_its_marks() {
        let (p, mut marks) = Playback::new(3);
        p.push_audio(&[0; FRAME_BYTES * 2]).unwrap();
        p.mark("m".into()).unwrap();
        assert_eq!(p.push_audio(&[0; FRAME_BYTES]), Err(Full));
        assert_eq!(p.mark("n".into()), Err(Full));
        assert_eq!(p.queued_frames(), 2);
        p.clear();
        assert_eq!(marks.try_recv().unwrap(), "m");
        assert_eq!(p.queued_frames(), 0);
        assert!(p.next_frame().is_none());
        p.push_audio(&[0; FRAME_BYTES * 3]).unwrap();
    }

    #[test]
    fn marks_are_bounded_on_their_own() {
        let (p, mut marks) = Playback::new(10_000);
        for i in 0..MAX_MARKS {
            p.mark(i.to_string()).unwrap();
        }
        assert_eq!(p.mark("one too many".into()), Err(Full));
        // Played through: room again.
        assert!(p.next_frame().is_none());
        assert_eq!(marks.try_recv().unwrap(), "0");
        p.mark("again".into()).unwrap();
        p.clear();
        for _ in 0..MAX_MARKS {
            p.mark("x".into()).unwrap();
        }
    }
}
