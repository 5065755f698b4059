//! The object store under the warehouse: reads and conditional writes with errors that name the object, streaming
//! uploads hashed as they pass, pointer versions, publication, garbage collection and the period lock; and building
//! the store from a URL (local folder, S3, Azure Blob, GCS) with its retry policy.

use super::*;

impl Inner {
    pub(super) fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// A store operation that failed after the warehouse was opened: exit 1 (the run ran; its commit or a read
    /// of committed data failed), secrets redacted from the store's message.
    pub(super) fn store_err(&self, what: &str, path: &str, e: object_store::Error) -> anyhow::Error {
        Failure::invariant(redact(&format!(
            "{what} `{path}` in warehouse `{}` failed: {e}; {}",
            self.url,
            what_to_check(&self.url)
        )))
        .into()
    }

    /// Finishes the publication of the period's latest commit if it was interrupted; returns that commit.
    /// The caller holds the period's lock.
    pub(super) fn roll_forward(&self, period: Period) -> Result<Option<Commit>> {
        let Some((b, published)) = self.latest(period)? else {
            return Ok(None);
        };
        if !published {
            tracing::warn!(period = %period, run = %b.run_id, version = b.version, "rolling forward the publication of an interrupted commit");
            let before = if b.version > 1 {
                self.read_version(period, b.version - 1)?
            } else {
                None
            };
            self.publish(period, &b, before.as_ref(), None)?;
            self.sweep_staging(period, &b);
        }
        Ok(Some(b))
    }

    /// On a local folder, removes the staging files (`NAME#N`) a killed write or copy left: beside every file
    /// the commit publishes, and anywhere under `_data/period=P/`. Only this period's paths, which no one else
    /// writes while the caller holds the period's lock. Best effort.
    pub(super) fn sweep_staging(&self, period: Period, commit: &Commit) {
        let Some(root) = &self.local_root else {
            return;
        };
        let is_staging = |name: &str, base: Option<&str>| {
            name.rsplit_once('#').is_some_and(|(b, n)| {
                !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()) && base.is_none_or(|x| x == b)
            })
        };
        let mut targets: Vec<String> = commit.files.iter().map(|f| f.path.clone()).collect();
        targets.push(commit.manifest.clone());
        targets.push(version_path(period, commit.version, "published"));
        targets.push(version_dir_file(period, CURRENT_LIST));
        for t in targets {
            let path = root.join(&t);
            let (Some(dir), Some(base)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
                continue;
            };
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_str().is_some_and(|n| is_staging(n, Some(base))) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        // Under `_data/period=P/`: any staging file, then the folders left empty.
        fn walk(dir: &std::path::Path, is_staging: &dyn Fn(&str) -> bool) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, is_staging);
                    let _ = std::fs::remove_dir(&p); // only succeeds when empty
                } else if e.file_name().to_str().is_some_and(is_staging) {
                    let _ = std::fs::remove_file(&p);
                }
            }
        }
        walk(&root.join(format!("_data/period={period}")), &|n| is_staging(n, None));
    }

    pub(super) fn get_opt(&self, path: &str) -> Result<Option<Bytes>> {
        let p = store_path(path)?;
        tracing::debug!(op = "get", path, "store call");
        match self.block(async { self.store.get(&p).await?.bytes().await }) {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", path, e)),
        }
    }

    /// An object with its version tag (ETag, else version, else modification time), None when it does not exist.
    pub(super) fn get_tagged(&self, path: &str) -> Result<Option<(Bytes, String)>> {
        let p = store_path(path)?;
        let got = self.block(async {
            let r = self.store.get(&p).await?;
            let m = r.meta.clone();
            let tag = m.e_tag.or(m.version).unwrap_or_else(|| m.last_modified.to_rfc3339());
            Ok::<_, object_store::Error>((r.bytes().await?, tag))
        });
        match got {
            Ok(b) => Ok(Some(b)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("reading", path, e)),
        }
    }

    pub(super) fn get(&self, path: &str) -> Result<Bytes> {
        self.get_opt(path)?.ok_or_else(|| {
            Failure::invariant(format!(
                "`{path}` is missing from warehouse `{}` although a commit refers to it; re-run the period",
                self.url
            ))
            .into()
        })
    }

    pub(super) fn put_overwrite(&self, path: &str, bytes: Bytes) -> Result<()> {
        let p = store_path(path)?;
        tracing::debug!(op = "put", path, bytes = bytes.len(), "store call");
        self.block(self.store.put(&p, PutPayload::from_bytes(bytes)))
            .map_err(|e| self.store_err("writing", path, e))?;
        Ok(())
    }

    /// Whether an object exists.
    pub(super) fn exists(&self, path: &str) -> Result<bool> {
        let p = store_path(path)?;
        match self.block(self.store.head(&p)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.store_err("checking", path, e)),
        }
    }

    /// Streams a local file to `path` (one PUT when small, a multipart upload when large), hashing the bytes as
    /// they pass: returns (bytes, SHA-256 hex). Memory stays at the upload buffer, whatever the file's size.
    pub(super) fn upload_file(&self, path: &str, local: &std::path::Path) -> Result<(u64, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let p = store_path(path)?;
        let store = Arc::clone(&self.store);
        let res: std::result::Result<(u64, String), std::io::Error> = self.block(async move {
            let mut f = tokio::fs::File::open(local).await?;
            let mut w = object_store::buffered::BufWriter::with_capacity(store, p, 16 << 20);
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 4 << 20];
            let mut n = 0u64;
            loop {
                let k = f.read(&mut buf).await?;
                if k == 0 {
                    break;
                }
                h.update(&buf[..k]);
                w.write_all(&buf[..k]).await?;
                n += k as u64;
            }
            w.shutdown().await?;
            Ok((n, hex::encode(h.finalize())))
        });
        res.map_err(|e| {
            Failure::invariant(redact(&format!(
                "uploading `{}` to `{path}` in warehouse `{}` failed: {e}; {}",
                local.display(),
                self.url,
                what_to_check(&self.url)
            )))
            .into()
        })
    }

    /// Conditional create: false when the object already exists.
    pub(super) fn put_create(&self, path: &str, bytes: Bytes) -> Result<bool> {
        let p = store_path(path)?;
        tracing::debug!(op = "put_create", path, bytes = bytes.len(), "store call");
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self.block(self.store.put_opts(&p, PutPayload::from_bytes(bytes), opts)) {
            Ok(_) => Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok(false),
            Err(e) => Err(self.store_err("creating", path, e)),
        }
    }

    /// Copies an object within the store (server-side where the store has it).
    pub(super) fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (store_path(from)?, store_path(to)?);
        tracing::debug!(op = "copy", from, to, "store call");
        self.block(self.store.copy(&f, &t)).map_err(|e| self.store_err("copying", from, e))
    }

    pub(super) fn delete(&self, path: &str) -> Result<()> {
        let p = store_path(path)?;
        tracing::debug!(op = "delete", path, "store call");
        match self.block(self.store.delete(&p)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", path, e)),
        }
    }

    pub(super) fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = store_path(prefix)?;
        tracing::debug!(op = "list", prefix, "store call");
        let metas: Vec<_> = self
            .block(self.store.list(Some(&p)).try_collect::<Vec<_>>())
            .map_err(|e| self.store_err("listing", prefix, e))?;
        let mut out: Vec<String> = metas.into_iter().map(|m| m.location.to_string()).collect();
        out.sort();
        Ok(out)
    }

    pub(super) fn delete_prefix(&self, prefix: &str) -> Result<()> {
        for path in self.list(prefix)? {
            self.delete(&path)?;
        }
        Ok(())
    }

    /// The committed versions of a period, ascending.
    pub(super) fn versions(&self, period: Period) -> Result<Vec<u64>> {
        let dir = format!("_commits/period={period}/");
        let mut vs: Vec<u64> = self
            .list(&dir)?
            .iter()
            .filter_map(|p| {
                p.strip_prefix(&dir)?
                    .strip_prefix('v')?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()
            })
            .collect();
        vs.sort_unstable();
        Ok(vs)
    }

    pub(super) fn read_version(&self, period: Period, version: u64) -> Result<Option<Commit>> {
        let path = version_path(period, version, "json");
        let Some(bytes) = self.get_opt(&path)? else {
            return Ok(None);
        };
        let c = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::invariant(format!("commit pointer `{path}` in warehouse `{}` is not valid: {e}; restore it from the store's versioning or re-run the period", self.url))
        })?;
        Ok(Some(c))
    }

    /// The latest commit of a period and whether its publication finished.
    pub(super) fn latest(&self, period: Period) -> Result<Option<(Commit, bool)>> {
        let Some(&v) = self.versions(period)?.last() else {
            return Ok(None);
        };
        let Some(c) = self.read_version(period, v)? else {
            return Ok(None);
        };
        let published = self
            .get_opt(&version_path(period, v, "published"))?
            .is_some();
        Ok(Some((c, published)))
    }

    /// Step 4 of the protocol: make the Hive paths match `commit`. Idempotent, so a killed run is rolled forward by
    /// calling it again. Each table-period is one object replaced in one step; unchanged files are not touched.
    /// `stop_after`: stop (as if killed) after that many copies or deletions; returns false when it stopped.
    pub(super) fn publish(
        &self,
        period: Period,
        commit: &Commit,
        before: Option<&Commit>,
        stop_after: Option<usize>,
    ) -> Result<bool> {
        let mut budget = stop_after.unwrap_or(usize::MAX);
        // The consistent path for readers switches first: one atomic PUT of the new version's file list.
        self.put_overwrite(&version_dir_file(period, CURRENT_LIST), current_list(commit))?;
        let old: BTreeMap<&str, &FileEntry> = before
            .map(|b| b.files.iter().map(|f| (f.path.as_str(), f)).collect())
            .unwrap_or_default();
        for f in &commit.files {
            if old
                .get(f.path.as_str())
                .is_some_and(|o| o.sha256 == f.sha256)
            {
                continue;
            }
            if budget == 0 {
                return Ok(false);
            }
            budget -= 1;
            let (from, to) = (store_path(&f.data)?, store_path(&f.path)?);
            tracing::debug!(op = "copy", from = %f.data, to = %f.path, "store call");
            self.block(self.store.copy(&from, &to))
                .map_err(|e| self.store_err("publishing", &f.path, e))?;
        }
        let text = serde_json::to_vec_pretty(&commit.manifest_json)
            .context("serialising the run manifest")?;
        self.put_overwrite(&commit.manifest, Bytes::from(text))?;
        let new: BTreeSet<&str> = commit.files.iter().map(|f| f.path.as_str()).collect();
        for path in old.keys().filter(|p| !new.contains(*p)) {
            if budget == 0 {
                return Ok(false);
            }
            budget -= 1;
            self.delete(path)?;
        }
        if budget == 0 {
            return Ok(false);
        }
        self.put_overwrite(
            &version_path(period, commit.version, "published"),
            Bytes::new(),
        )?;
        Ok(true)
    }

    pub(super) fn collect_garbage(&self, period: Period, keep: &BTreeSet<String>) -> Result<()> {
        let dir = format!("_data/period={period}/");
        for path in self.list(&dir)? {
            let run = path
                .strip_prefix(&dir)
                .and_then(|r| r.split('/').next())
                .unwrap_or_default();
            if !keep.contains(run) {
                self.delete(&path)?;
            }
        }
        if let Some(c) = self.latest(period)?.map(|(c, _)| c) {
            self.sweep_staging(period, &c);
        }
        Ok(())
    }

    /// Takes the period's lock for `run_id`: None when taken, Some(holder) when another live run holds it.
    ///
    /// A stale lock (see `is_stale`) is broken at most once: the breaker first creates a break token named after
    /// that exact lock (its content and ETag) with a conditional create, and only the run that created the token
    /// deletes the lock. Two runs that both found the same stale lock cannot both delete, so neither can delete
    /// the other's fresh lock; the loser simply retries the create and finds the winner's lock.
    pub(super) fn try_lock(&self, period: Period, run_id: &str) -> Result<Option<LockInfo>> {
        let path = lock_path(period);
        let me = LockInfo {
            run_id: run_id.to_string(),
            host: hostname(),
            pid: std::process::id(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        let body = Bytes::from(serde_json::to_vec(&me).context("serialising the lock")?);
        // A few attempts: the holder may release, or a stale lock may be broken, between our create and read.
        for _ in 0..5 {
            if self.put_create(&path, body.clone())? {
                return Ok(None);
            }
            let Some((bytes, tag)) = self.get_tagged(&path)? else {
                continue;
            };
            let holder: Option<LockInfo> = serde_json::from_slice(&bytes).ok();
            match holder {
                Some(h) if !self.is_stale(&h) => return Ok(Some(h)),
                h => {
                    let mut id = Sha256::new();
                    id.update(&bytes);
                    id.update(tag.as_bytes());
                    let token = format!("_locks/breaks/period={period}/{}", hex::encode(id.finalize()));
                    if self.put_create(&token, body.clone())? {
                        tracing::warn!(period = %period, holder = ?h, "breaking a stale period lock");
                        self.delete(&path)?;
                    }
                }
            }
        }
        Err(Failure::invariant(format!(
            "could not take the lock of period {period} in warehouse `{}`: other runs keep taking it; retry later",
            self.url
        ))
        .into())
    }

    /// Stale when its process is gone on this host, or (holder elsewhere) it is older than the TTL.
    /// An unreadable lock counts as stale too: only a killed writer leaves one.
    pub(super) fn is_stale(&self, h: &LockInfo) -> bool {
        if h.host == hostname() && !pid_alive(h.pid) {
            return true;
        }
        match chrono::DateTime::parse_from_rfc3339(&h.since) {
            Ok(since) => {
                let age = chrono::Utc::now().signed_duration_since(since);
                age.to_std().is_ok_and(|a| a >= self.lock_ttl)
            }
            Err(_) => true,
        }
    }

    /// Releases the lock if it is still ours (a stale-lock breaker may have taken it over).
    pub(super) fn release_lock(&self, period: Period, run_id: &str) {
        let path = lock_path(period);
        let ours = matches!(self.get_opt(&path), Ok(Some(b)) if serde_json::from_slice::<LockInfo>(&b).is_ok_and(|h| h.run_id == run_id));
        if ours && let Err(e) = self.delete(&path) {
            tracing::warn!(period = %period, error = %redact(&format!("{e:#}")), "could not release the period lock");
        }
    }
}

/// Builds the store for a URL or a local folder, rooted at the URL's prefix.
pub(super) fn build_store(url: &str, options: &BTreeMap<String, String>) -> Result<Arc<dyn ObjectStore>> {
    let is_url = url.split_once("://").is_some_and(|(s, _)| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
    });
    if !is_url || url.starts_with("file://") {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        std::fs::create_dir_all(dir).map_err(|e| {
            Failure::usage(format!(
                "cannot create the warehouse folder `{dir}`: {e}; check the path and its permissions"
            ))
        })?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| {
            Failure::usage(format!(
                "cannot open the warehouse folder `{dir}`: {e}; check the path and its permissions"
            ))
        })?;
        // Deleting a file removes the folders it leaves empty (superseded runs under `_data/`, dropped tables).
        return Ok(Arc::new(fs.with_automatic_cleanup(true)));
    }
    let shown = redact(url);
    let mut parsed = url::Url::parse(url).map_err(|e| Failure::usage(format!("warehouse URL `{shown}` is not valid: {e}; use `s3://bucket/prefix`, `az://container/prefix` or `gs://bucket/prefix`")))?;
    // A query string is a credential (an Azure SAS token `?sv=...&sig=...`), never part of the location.
    let query = parsed.query().map(str::to_string);
    parsed.set_query(None);
    let url = parsed.as_str().to_string();
    let url = url.as_str();
    let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| {
        Failure::usage(format!(
            "warehouse URL `{shown}` is not supported: {e}; use a folder, `s3://`, `az://`, `abfs://` or `gs://`"
        ))
    })?;
    let bad_key = |k: &str, e: object_store::Error| {
        Failure::usage(redact(&format!(
            "warehouse option `{k}` is not known for `{shown}`: {e}; see the object_store configuration keys of that cloud"
        )))
    };
    let retry = retry_config();
    // Timeouts, unless the environment or the options set them. Not `with_client_options`: that would drop the
    // client settings `from_env` read (`AWS_ALLOW_HTTP`, proxies, ...).
    let timeouts = [
        (ClientConfigKey::ConnectTimeout, "5s"),
        (ClientConfigKey::Timeout, "120s"),
    ];
    let truthy = |v: Option<String>| {
        v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "on" | "yes" | "y"))
    };
    // The three clouds' builders differ only in their types: one recipe for all (from the environment, the URL,
    // retries, default timeouts, then the `[warehouse.options]` keys). A plain `http://` endpoint without
    // `allow_http` would fail every request with "builder error": say what to set instead.
    macro_rules! build {
        ($builder:ty, $key:path, $pre:expr, $endpoint:expr, $cloud:literal, $allow_env:literal) => {{
            let mut b = ($pre)(<$builder>::from_env().with_url(url).with_retry(retry));
            for (k, v) in timeouts {
                let k = $key(k);
                if b.get_config_value(&k).is_none() {
                    b = b.with_config(k, v);
                }
            }
            for (k, v) in options {
                b = b.with_config(k.parse().map_err(|e| bad_key(k, e))?, v);
            }
            let endpoint: Option<String> = ($endpoint)(&b);
            if let Some(ep) = endpoint.filter(|e| e.to_ascii_lowercase().starts_with("http://"))
                && !truthy(b.get_config_value(&$key(ClientConfigKey::AllowHttp)))
            {
                return Err(Failure::usage(format!(
                    "the {} endpoint `{}` is plain HTTP, which is refused unless allowed: set `allow_http = \"true\"` in `[warehouse] options` of cspbill.toml (or the environment variable `{}=true`), or use an https endpoint",
                    $cloud, redact(&ep), $allow_env
                ))
                .into());
            }
            Arc::new(b.build().map_err(|e| {
                Failure::usage(redact(&format!("cannot configure {} for `{shown}`: {e}; {}", $cloud, what_to_check(url))))
            })?)
        }};
    }
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey as S3Key};
    use object_store::azure::{AzureConfigKey as AzKey, MicrosoftAzureBuilder};
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => build!(
            AmazonS3Builder,
            S3Key::Client,
            |b: AmazonS3Builder| b,
            |b: &AmazonS3Builder| b.get_config_value(&S3Key::S3Endpoint).or_else(|| b.get_config_value(&S3Key::Endpoint)),
            "S3",
            "AWS_ALLOW_HTTP"
        ),
        ObjectStoreScheme::MicrosoftAzure => {
            // `az://container/prefix?sv=...&sig=...`: the SAS token of the URL, unless the options name one.
            let sas = query.filter(|q| q.contains("sig="));
            build!(
                MicrosoftAzureBuilder,
                AzKey::Client,
                |b: MicrosoftAzureBuilder| match &sas {
                    Some(v) if b.get_config_value(&AzKey::SasKey).is_none() => b.with_config(AzKey::SasKey, v),
                    _ => b,
                },
                |b: &MicrosoftAzureBuilder| {
                    if truthy(b.get_config_value(&AzKey::UseEmulator)) {
                        None
                    } else {
                        b.get_config_value(&AzKey::Endpoint)
                    }
                },
                "Azure",
                "AZURE_ALLOW_HTTP"
            )
        }
        ObjectStoreScheme::GoogleCloudStorage => build!(
            object_store::gcp::GoogleCloudStorageBuilder,
            object_store::gcp::GoogleConfigKey::Client,
            |b: object_store::gcp::GoogleCloudStorageBuilder| b,
            |_: &object_store::gcp::GoogleCloudStorageBuilder| None,
            "GCS",
            "GOOGLE_ALLOW_HTTP"
        ),
        other => {
            return Err(Failure::usage(format!("warehouse URL `{shown}` ({other:?}) is not supported; use a folder, `s3://`, `az://`, `abfs://` or `gs://`")).into());
        }
    };
    if prefix.as_ref().is_empty() {
        Ok(store)
    } else {
        Ok(Arc::new(PrefixStore::new(store, prefix)))
    }
}

/// The folder of a local warehouse URL (a path or `file://`), None for object-store URLs.
pub(super) fn local_dir(url: &str) -> Option<&str> {
    let is_url = url.split_once("://").is_some_and(|(s, _)| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '+')
    });
    (!is_url || url.starts_with("file://")).then(|| url.strip_prefix("file://").unwrap_or(url))
}

/// Bounded retries with exponential backoff: a store that stays down fails within about half a minute.
pub(super) fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(4),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(30),
    }
}

pub(super) fn what_to_check(url: &str) -> &'static str {
    match url.split_once("://").map(|(s, _)| s) {
        Some("s3" | "s3a") => {
            "check the URL, that the bucket exists, the credentials (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`) and that the store is up"
        }
        Some("az" | "abfs" | "abfss" | "azure") => {
            "check the URL, that the container exists, the credentials (`AZURE_STORAGE_ACCOUNT_NAME`, `AZURE_STORAGE_ACCOUNT_KEY` or a SAS / service principal) and that the store is up"
        }
        Some("gs") => {
            "check the URL, that the bucket exists, the credentials (`GOOGLE_SERVICE_ACCOUNT` or `GOOGLE_APPLICATION_CREDENTIALS`) and that the store is up"
        }
        _ => "check the folder exists and is writable",
    }
}
