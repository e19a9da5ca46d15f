//! Webhook delivery benchmark (written by a helper).

pub async fn run(_seconds: u64) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
