//! WAV files of call audio: 8 kHz mono 16-bit PCM, which every player
//! reads, made from the G.711 µ-law a call carries.

/// Samples per second of call audio.
pub const RATE: u32 = 8000;
const HEADER: usize = 44;

/// A WAV file of the µ-law audio.
pub fn from_ulaw(ulaw: &[u8]) -> Vec<u8> {
    let data_len = u32::try_from(ulaw.len() * 2).unwrap_or(u32::MAX - HEADER as u32) & !1;
    let mut out = Vec::with_capacity(HEADER + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&RATE.to_le_bytes());
    out.extend_from_slice(&(RATE * 2).to_le_bytes()); // bytes per second
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &u in ulaw.iter().take(data_len as usize / 2) {
        out.extend_from_slice(&linear(u).to_le_bytes());
    }
    out
}

/// How long `wav_len` bytes of such a file play, in milliseconds.
pub fn duration_ms(wav_len: u64) -> u64 {
    wav_len.saturating_sub(HEADER as u64) / 2 * 1000 / u64::from(RATE)
}

/// G.711 µ-law to a linear sample.
pub fn linear(u: u8) -> i16 {
    let u = !u;
    let exponent = (u >> 4) & 0x07;
    let magnitude = ((i32::from(u & 0x0F) << 3) + 0x84) << exponent;
    let sample = magnitude - 0x84;
    (if u & 0x80 != 0 { -sample } else { sample }) as i16
}
