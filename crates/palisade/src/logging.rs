//! JSON log lines, every one passed through the redaction filter before it
//! is written, so no email, phone number, card number, JWT or secret leaves
//! the process through the log.

use std::io::{self, Write};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

pub struct Redacting<M>(pub M);

pub struct RedactingWriter<W>(W);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Redacting<M> {
    type Writer = RedactingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter(self.0.make_writer())
    }
}

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(palisade_guard::redact::redact(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Installs the global JSON subscriber writing to `writer`. Returns false if
/// one was already installed.
pub fn init<M>(level: &str, writer: M) -> bool
where
    M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // The SIP stack logs whole messages (Authorization headers included)
    // at info and debug: only its warnings, whatever the level asked.
    let filter = filter.add_directive("rsipstack=warn".parse().expect("a valid directive"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(Redacting(writer))
        .try_init()
        .is_ok()
}
