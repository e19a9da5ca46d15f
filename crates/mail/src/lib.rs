//! Outgoing mail: through the SMTP relay when configured, queued durably
//! ([`relay`]); otherwise (dev) `.eml` files in the outbox directory, mode
//! 0600. Mail contents are never logged.

pub mod relay;

use std::path::PathBuf;
use std::sync::Arc;

use lettre::message::Mailbox;
use lettre::Message;

#[derive(Clone)]
pub enum Mailer {
    Outbox { dir: PathBuf, from: Mailbox },
    Smtp(Arc<relay::Relay>),
}

pub(crate) fn message(from: Mailbox, to: &str, subject: &str, body: String) -> anyhow::Result<Message> {
    relay::build(from, to, subject, body)
}

impl Mailer {
    pub fn outbox(dir: PathBuf, from: &str) -> anyhow::Result<Self> {
        Ok(Mailer::Outbox { dir, from: from.parse()? })
    }

    /// Sends (dev: writes) or queues the mail; a relay that is down does
    /// not fail this.
    pub async fn send(&self, to: &str, subject: &str, body: String) -> anyhow::Result<()> {
        self.send_until(to, subject, body, None).await
    }

    /// As [`Self::send`], for a mail worthless after `expires_at` (ms): the
    /// relay's queue drops it then rather than send it late.
    pub async fn send_until(
        &self,
        to: &str,
        subject: &str,
        body: String,
        expires_at: Option<i64>,
    ) -> anyhow::Result<()> {
        match self {
            Mailer::Outbox { dir, from } => {
                let msg = message(from.clone(), to, subject, body)?;
                write_eml(dir.clone(), msg.formatted()).await
            }
            Mailer::Smtp(relay) => relay.send(to, subject, body, expires_at).await,
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
