//! `codestorage backup`, `restore`, `export-refs` and `import-refs`: the operator's side of
//! [`crate::backup`] and of [`codestorage_store::refs_text`].

use std::path::Path;

use anyhow::{Context as _, Result, bail};
use futures_util::TryStreamExt as _;

use super::Client;
use crate::backup::{self, Manifest};

/// `backup --to DIR`: stream a backup from the running server into the new directory `to`.
pub async fn backup(client: &Client, to: &Path) -> Result<Manifest> {
    if std::fs::read_dir(to).is_ok_and(|mut e| e.next().is_some()) {
        bail!("{} is not empty; choose a new directory", to.display());
    }
    let resp = client.get_raw("/api/v1/admin/backup").await?;
    let status = resp.status().as_u16();
    if status != 200 {
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        return Err(Client::fail(status, &value));
    }
    let stream = resp.bytes_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    let bridge = tokio_util::io::SyncIoBridge::new(reader);
    let to = to.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut input = std::io::BufReader::with_capacity(256 << 10, bridge);
        backup::unpack(&mut input, &to)
    })
    .await
    .context("the backup task failed")?
    .context("receiving the backup")
}

/// `restore --from DIR` into the data directory `data` (server stopped).
pub fn restore(from: &Path, data: &Path) -> Result<Manifest> {
    backup::restore(from, data)
        .with_context(|| format!("restoring {} into {}", from.display(), data.display()))
}

/// `export-refs`: the refs of the data directory as text.
pub fn export_refs(data: &Path, repo: Option<&str>) -> Result<String> {
    if !data.join("repos").is_dir() {
        bail!("{} is not a codestorage data directory", data.display());
    }
    Ok(codestorage_store::refs_text::export(data, repo)?)
}

/// `export-refs --from-server`: the refs as the running server lists them.
pub async fn export_refs_from_server(client: &Client, repo: Option<&str>) -> Result<String> {
    let path = match repo {
        Some(r) => format!("/api/v1/admin/refs?repo={}", super::encode_name(r)),
        None => "/api/v1/admin/refs".to_owned(),
    };
    let resp = client.get_raw(&path).await?;
    let status = resp.status().as_u16();
    let text = resp.text().await.context("reading the response")?;
    if status != 200 {
        let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        return Err(Client::fail(status, &value));
    }
    Ok(text)
}

/// `import-refs FILE` on the stopped data directory `data`.
pub fn import_refs(
    data: &Path,
    file: &Path,
    adopt: bool,
) -> Result<codestorage_store::refs_text::ImportReport> {
    let meta = std::fs::metadata(file).with_context(|| format!("reading {}", file.display()))?;
    if meta.len() > codestorage_store::refs_text::MAX_IMPORT_BYTES as u64 {
        bail!(
            "{} is larger than {} bytes",
            file.display(),
            codestorage_store::refs_text::MAX_IMPORT_BYTES
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    if !data.join("repos").is_dir() {
        bail!("{} is not a codestorage data directory", data.display());
    }
    let store = codestorage_store::Store::open(data).with_context(|| {
        format!(
            "opening {} (import-refs needs the server stopped)",
            data.display()
        )
    })?;
    if adopt {
        for (repo, pack) in codestorage_store::refs_text::adopt_packs(&store)? {
            println!("adopted {pack} into {repo}");
        }
    }
    let report = codestorage_store::refs_text::import(&store, &text)?;
    store.wait_idle();
    store.index().flush()?;
    Ok(report)
}
