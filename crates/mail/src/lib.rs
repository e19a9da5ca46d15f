//! Outgoing mail: SMTP when configured, otherwise (dev) `.eml` files in the
//! outbox directory, mode 0600. Mail contents are never logged.

use std::path::PathBuf;

use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

#[derive(Clone)]
pub enum Mailer {
    Outbox { dir: PathBuf, from: Mailbox },
    Smtp { transport: AsyncSmtpTransport<Tokio1Executor>, from: Mailbox },
}

impl Mailer {
    pub fn outbox(dir: PathBuf, from: &str) -> anyhow::Result<Self> {
        Ok(Mailer::Outbox { dir, from: from.parse()? })
    }

    /// `smtps://user:pass@host` (implicit TLS) or `smtp://...?tls=required` (STARTTLS).
    pub fn smtp(url: &str, from: &str) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| anyhow::anyhow!("mail.smtp_url is not a valid smtp:// or smtps:// URL"))?
            .build();
        Ok(Mailer::Smtp { transport, from: from.parse()? })
    }

    pub async fn send(&self, to: &str, subject: &str, body: String) -> anyhow::Result<()> {
        let from = match self {
            Mailer::Outbox { from, .. } | Mailer::Smtp { from, .. } => from.clone(),
        };
        let msg = Message::builder()
            .from(from)
            .to(to.parse()?)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            // Plain 8bit keeps tokens readable and copyable as they are; bodies
            // with lines over 76 characters fall back to an encoding.
            .body(
                Body::new_with_encoding(body.clone(), ContentTransferEncoding::EightBit)
                    .unwrap_or_else(|_| Body::new(body)),
            )?;
        match self {
            Mailer::Outbox { dir, .. } => write_eml(dir.clone(), msg.formatted()).await,
            Mailer::Smtp { transport, .. } => {
                transport.send(msg).await?;
                Ok(())
            }
        }
    }
}

async fn write_eml(dir: PathBuf, bytes: Vec<u8>) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let path = dir.join(format!("{now}-{}.eml", uuid::Uuid::now_v7()));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            opts.mode(0o600);
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        use std::io::Write;
        opts.open(&path)?.write_all(&bytes)?;
        Ok(())
    })
    .await?
}
