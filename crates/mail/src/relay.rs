//! Mail through the SMTP relay, durably: `send` seals the mail into the
//! outbox table in the request's time (so the request never waits on, or
//! fails because of, the relay), and each instance's worker delivers what
//! is due, retrying on `mail.retry_schedule_secs` until it gives up. Mail
//! contents are never logged; the recipient only masked.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use palisade_core::Clock;
use palisade_seal::Sealer;
use palisade_store::mail_outbox::{self, MailRow};
use palisade_store::Db;
use tokio_util::sync::CancellationToken;

/// Where deliveries are counted (the server's metrics).
pub trait MailEvents: Send + Sync + 'static {
    /// `sent`, `failed` (an attempt; tried again later), `dropped` (the
    /// last attempt failed) or `expired` (worthless before it could go).
    fn mail(&self, outcome: &'static str);
}

/// Mails one worker pass takes at most.
const BATCH: i64 = 20;

pub struct Relay {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    db: Db,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
    schedule: Vec<u64>,
    poll: Duration,
    send_timeout: Duration,
    events: Arc<dyn MailEvents>,
    wake: tokio::sync::Notify,
}

pub struct Settings {
    pub url: String,
    pub from: String,
    pub schedule_secs: Vec<u64>,
    pub poll: Duration,
    pub send_timeout: Duration,
    /// PEM certificates trusted for the relay besides the public roots (a
    /// relay with a private CA's certificate).
    pub ca_pem: Option<Vec<u8>>,
}

/// What a row's body is bound to: its table, row and column.
fn aad(id: &str) -> Vec<u8> {
    format!("mail_outbox/{id}/body").into_bytes()
}

/// `a…@example.com`: enough to tell mails apart in a log.
fn masked(to: &str) -> String {
    match to.split_once('@') {
        Some((local, domain)) => format!("{}…@{domain}", local.chars().next().unwrap_or('?')),
        None => "…".into(),
    }
}

/// The URL's TLS mode again, with `pem`'s certificates trusted besides the
/// public roots.
fn with_roots(
    builder: lettre::transport::smtp::AsyncSmtpTransportBuilder,
    url: &str,
    pem: &[u8],
) -> anyhow::Result<lettre::transport::smtp::AsyncSmtpTransportBuilder> {
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    let parsed = url::Url::parse(url).map_err(|_| anyhow::anyhow!("mail.smtp_url is not a valid URL"))?;
    let host = parsed.host_str().ok_or_else(|| anyhow::anyhow!("mail.smtp_url names no host"))?;
    let roots =
        Certificate::from_pem(pem).map_err(|_| anyhow::anyhow!("mail.smtp_ca_file holds no PEM certificate"))?;
    let params = TlsParameters::builder(host.to_owned()).add_root_certificate(roots).build_rustls()?;
    let mode = parsed.query_pairs().find(|(k, _)| k == "tls").map(|(_, v)| v.into_owned());
    Ok(match (parsed.scheme(), mode.as_deref()) {
        ("smtps", _) => builder.tls(Tls::Wrapper(params)),
        (_, Some("required")) => builder.tls(Tls::Required(params)),
        (_, Some("opportunistic")) => builder.tls(Tls::Opportunistic(params)),
        // Plaintext to a local relay: no TLS to trust anything for.
        _ => builder,
    })
}

impl Relay {
    pub fn new(
        s: Settings,
        db: Db,
        sealer: Arc<Sealer>,
        clock: Arc<dyn Clock>,
        events: Arc<dyn MailEvents>,
    ) -> anyhow::Result<Relay> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&s.url)
            .map_err(|_| anyhow::anyhow!("mail.smtp_url is not a valid smtp:// or smtps:// URL"))?
            .timeout(Some(s.send_timeout));
        if let Some(pem) = &s.ca_pem {
            builder = with_roots(builder, &s.url, pem)?;
        }
        let transport = builder.build();
        Ok(Relay {
            transport,
            from: s.from.parse()?,
            db,
            sealer,
            clock,
            schedule: s.schedule_secs,
            poll: s.poll,
            send_timeout: s.send_timeout,
            events,
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Queues a mail (sealed) and wakes the worker; one worthless after
    /// `expires_at` is dropped rather than sent late.
    pub async fn send(&self, to: &str, subject: &str, body: String, expires_at: Option<i64>) -> anyhow::Result<()> {
        let _: Mailbox = to.parse()?;
        let id = uuid::Uuid::now_v7().to_string();
        let now = self.clock.now_ms();
        let row = MailRow {
            body_sealed: B64.encode(self.sealer.seal(body.as_bytes(), &aad(&id))),
            id,
            recipient: to.to_owned(),
            subject: subject.to_owned(),
            attempts: 0,
            next_attempt_at: now,
            created_at: now,
            expires_at,
        };
        let mut tx = self.db.begin().await?;
        mail_outbox::insert(&mut *tx, &row).await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Delivers until `cancel`: at once when woken, else every poll.
    pub fn start(self: &Arc<Self>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.deliver_due().await {
                    tracing::error!(target: "palisade::mail", error = %e, "reading the mail outbox failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(this.poll) => {}
                    () = this.wake.notified() => {}
                    () = cancel.cancelled() => return,
                }
            }
        })
    }

    /// One pass: every mail due now that no other instance holds.
    pub async fn deliver_due(&self) -> Result<(), palisade_store::StoreError> {
        for row in mail_outbox::due(self.db.reader(), self.clock.now_ms(), BATCH).await? {
            // Held well past one delivery's longest time (which the timeout
            // below enforces), so no one else sends it meanwhile.
            let now = self.clock.now_ms();
            let lease =
                now + i64::try_from(self.send_timeout.as_millis()).unwrap_or(i64::MAX / 4).saturating_mul(2) + 30_000;
            let mut tx = self.db.begin().await?;
            let claimed = mail_outbox::claim(&mut *tx, &row.id, now, lease).await?;
            tx.commit().await?;
            if !claimed {
                continue;
            }
            self.deliver(row).await?;
        }
        Ok(())
    }

    async fn deliver(&self, row: MailRow) -> Result<(), palisade_store::StoreError> {
        if row.expires_at.is_some_and(|at| at <= self.clock.now_ms()) {
            self.events.mail("expired");
            return self.forget(&row.id).await;
        }
        let body = B64
            .decode(&row.body_sealed)
            .ok()
            .and_then(|b| self.sealer.open(&b, &aad(&row.id)).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some(body) = body else {
            // The key changed or the row was altered: it can never be sent.
            tracing::error!(target: "palisade::mail", id = row.id, "a queued mail does not open; dropped");
            self.events.mail("dropped");
            return self.forget(&row.id).await;
        };
        let sent = match self.message(&row, body) {
            // lettre bounds the connect only: the whole conversation is
            // bounded here, or a relay that goes quiet holds the worker.
            Ok(m) => match tokio::time::timeout(self.send_timeout, self.transport.send(m)).await {
                Ok(r) => r.map(drop).map_err(|e| classify(&e)),
                Err(_) => Err("timeout"),
            },
            Err(_) => Err("message"),
        };
        match sent {
            Ok(()) => {
                self.events.mail("sent");
                self.forget(&row.id).await
            }
            Err(class) => {
                let attempt = usize::try_from(row.attempts).unwrap_or(usize::MAX);
                let to = masked(&row.recipient);
                match self.schedule.get(attempt) {
                    Some(secs) => {
                        tracing::warn!(target: "palisade::mail", to, error = class, attempt = attempt + 1, retry_in_secs = secs, "mail not sent; trying again later");
                        self.events.mail("failed");
                        let next = self.clock.now_ms() + i64::try_from(*secs).unwrap_or(i64::MAX / 2000) * 1000;
                        let mut tx = self.db.begin().await?;
                        mail_outbox::failed(&mut *tx, &row.id, next, class).await?;
                        tx.commit().await
                    }
                    None => {
                        tracing::error!(target: "palisade::mail", to, error = class, attempts = attempt + 1, "mail not sent; given up");
                        self.events.mail("dropped");
                        self.forget(&row.id).await
                    }
                }
            }
        }
    }

    async fn forget(&self, id: &str) -> Result<(), palisade_store::StoreError> {
        let mut tx = self.db.begin().await?;
        mail_outbox::delete(&mut *tx, id).await?;
        tx.commit().await
    }

    fn message(&self, row: &MailRow, body: String) -> anyhow::Result<Message> {
        crate::message(self.from.clone(), &row.recipient, &row.subject, body)
    }
}

/// The error's class, for the log and the row: never the relay's text,
/// which may echo the mail's addresses.
fn classify(e: &lettre::transport::smtp::Error) -> &'static str {
    if e.is_timeout() {
        "timeout"
    } else if e.is_permanent() {
        "refused_permanently"
    } else if e.is_transient() {
        "refused_for_now"
    } else if e.is_tls() {
        "tls"
    } else {
        "connection"
    }
}

/// Builds the plain-text mail.
pub(crate) fn build(from: Mailbox, to: &str, subject: &str, body: String) -> anyhow::Result<Message> {
    Ok(Message::builder()
        .from(from)
        .to(to.parse()?)
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        // Plain 8bit keeps tokens readable and copyable as they are; bodies
        // with lines over 76 characters fall back to an encoding.
        .body(
            Body::new_with_encoding(body.clone(), ContentTransferEncoding::EightBit)
                .unwrap_or_else(|_| Body::new(body)),
        )?)
}
