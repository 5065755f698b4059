//! A run's transaction on one period: files written under run-unique names, the commit point (a conditional
//! create of the next pointer version), publication for readers, and what a dropped run leaves behind.

use super::*;

impl Txn {
    pub fn period(&self) -> Period {
        self.period
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The commit this run builds on (the period's latest), if any; `closed` says the period must not be rewritten.
    pub fn previous(&self) -> Option<&Commit> {
        self.base.as_ref()
    }

    /// Writes one table of the period (zstd Parquet, without the `period` column, which the Hive path carries)
    /// under the run's private prefix. Published by `commit` at `zone/TABLE/period=P/part-0.parquet`.
    pub fn write_table(
        &mut self,
        table: &str,
        zone: Zone,
        df: &mut DataFrame,
    ) -> Result<TableOutput> {
        check_table_target(table, zone)?;
        let period = self.period;
        let period_column = df.get_column_index(PERIOD_COLUMN);
        let mut body = match period_column {
            Some(_) => {
                let values = df.column(PERIOD_COLUMN)?.cast(&DataType::String)?;
                let values = values.str()?;
                let want = period.to_string();
                if let Some(bad) = values.iter().find(|v| *v != Some(want.as_str())) {
                    return Err(Failure::invariant(format!(
                        "table `{table}` has a row of period `{}` in a write for period {period}; every row must belong to the period written",
                        bad.unwrap_or("null")
                    ))
                    .into());
                }
                df.drop(PERIOD_COLUMN)?
            }
            None => df.clone(),
        };
        let rows = body.height() as u64;
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf)
            .with_compression(parquet_compression())
            .finish(&mut body)
            .with_context(|| format!("encoding table `{table}` as Parquet"))?;
        let path = table_path(table, zone, period);
        let entry = self.stage(
            &path,
            Bytes::from(buf),
            Some((table, zone)),
            Some(rows),
            period_column,
        )?;
        Ok(TableOutput {
            table: table.to_string(),
            zone: zone.dir().to_string(),
            path,
            rows,
            bytes: entry.bytes,
            sha256: entry.sha256,
        })
    }

    /// Writes a table given as a lazy plan. The plan is collected in memory: a billing period's tables fit, and
    /// the file must be hashed and written whole anyway.
    pub fn write_table_lazy(
        &mut self,
        table: &str,
        zone: Zone,
        lf: LazyFrame,
    ) -> Result<TableOutput> {
        let mut df = lf
            .collect()
            .with_context(|| format!("computing table `{table}`"))?;
        self.write_table(table, zone, &mut df)
    }

    /// Writes a table spooled as a Parquet file (already without the `period` column, which was at
    /// `period_column`), streaming it to the run's private prefix and hashing it on the way. Published by `commit`
    /// at `zone/TABLE/period=P/part-0.parquet`.
    pub fn write_table_file(
        &mut self,
        table: &str,
        zone: Zone,
        local: &std::path::Path,
        period_column: Option<usize>,
    ) -> Result<TableOutput> {
        check_table_target(table, zone)?;
        let rows = {
            let f = std::fs::File::open(local)
                .with_context(|| format!("opening the spooled table `{}`", local.display()))?;
            ParquetReader::new(f)
                .num_rows()
                .with_context(|| format!("reading the row count of `{}`", local.display()))? as u64
        };
        let path = table_path(table, zone, self.period);
        let data = format!("{}/{path}", run_prefix(self.period, &self.run_id));
        let (bytes, sha256) = self.wh.upload_file(&data, local)?;
        let entry = FileEntry {
            path: path.clone(),
            data,
            table: Some(table.to_string()),
            zone: Some(zone.dir().to_string()),
            rows: Some(rows),
            bytes,
            sha256: sha256.clone(),
            period_column,
        };
        self.files.insert(path.clone(), entry);
        Ok(TableOutput { table: table.to_string(), zone: zone.dir().to_string(), path, rows, bytes, sha256 })
    }

    /// Writes a local file (an export) at `rel_path` below the root, streamed and hashed; published with the
    /// commit.
    pub fn put_local_file(&mut self, rel_path: &str, local: &std::path::Path) -> Result<FileEntry> {
        check_rel_path(rel_path, false)?;
        let data = format!("{}/{rel_path}", run_prefix(self.period, &self.run_id));
        let (bytes, sha256) = self.wh.upload_file(&data, local)?;
        let entry = FileEntry {
            path: rel_path.to_string(),
            data,
            table: None,
            zone: None,
            rows: None,
            bytes,
            sha256,
            period_column: None,
        };
        self.files.insert(rel_path.to_string(), entry.clone());
        Ok(entry)
    }

    /// Lets this run commit a new version of a closed period: for the privacy jobs only (`jobs/privacy/`), which
    /// rewrite personal or expired data and check that every invoice figure stays the same. The new version
    /// stays closed when the caller commits with `close = true`.
    pub fn allow_closed_rewrite(&mut self) {
        self.rewrite_closed = true;
    }

    /// Carries a file of the previous commit into this run unchanged: a server-side copy of its data to this
    /// run's private prefix (the old run's data is collected two commits later), same path, rows and checksum.
    pub fn carry_file(&mut self, entry: &FileEntry) -> Result<()> {
        let data = format!("{}/{}", run_prefix(self.period, &self.run_id), entry.path);
        let (from, to) = (store_path(&entry.data)?, store_path(&data)?);
        self.wh
            .block(self.wh.store.copy(&from, &to))
            .map_err(|e| self.wh.store_err("copying", &entry.data, e))?;
        self.files.insert(entry.path.clone(), FileEntry { data, ..entry.clone() });
        Ok(())
    }

    /// Writes any other file of the run (exports) at `rel_path` below the root, published with the commit.
    /// Every segment is checked: no `..`, no absolute paths, nothing under `_`-prefixed internal folders or `raw/`.
    pub fn put_file(&mut self, rel_path: &str, bytes: Bytes) -> Result<()> {
        check_rel_path(rel_path, false)?;
        self.stage(rel_path, bytes, None, None, None)?;
        Ok(())
    }

    fn stage(
        &mut self,
        path: &str,
        bytes: Bytes,
        table: Option<(&str, Zone)>,
        rows: Option<u64>,
        period_column: Option<usize>,
    ) -> Result<FileEntry> {
        let data = format!("{}/{path}", run_prefix(self.period, &self.run_id));
        let entry = FileEntry {
            path: path.to_string(),
            data: data.clone(),
            table: table.map(|(t, _)| t.to_string()),
            zone: table.map(|(_, z)| z.dir().to_string()),
            rows,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            period_column,
        };
        self.wh.put_overwrite(&data, bytes)?;
        self.files.insert(path.to_string(), entry.clone());
        Ok(entry)
    }

    /// Publishes the run: the commit point (the next pointer version, created
    /// conditionally: exactly one of two concurrent runs wins, the other gets exit 1), then the Hive copies for
    /// readers without cspbill and `_runs/<run>.json`, then cleanup of data two runs old, then the lock is released.
    pub fn commit(self, manifest: serde_json::Value, close: bool) -> Result<Commit> {
        let commit = self.commit_until(manifest, close, None)?;
        commit.ok_or_else(|| {
            anyhow::anyhow!("commit stopped without a crash point (bug in `Txn::commit`)")
        })
    }

    /// `commit`, stopping dead at `crash` as a killed process would (lock and files left as they are). For the
    /// fault-injection tests; returns None when it stopped.
    #[doc(hidden)]
    pub fn commit_until(
        mut self,
        manifest: serde_json::Value,
        close: bool,
        crash: Option<CrashPoint>,
    ) -> Result<Option<Commit>> {
        let wh = Arc::clone(&self.wh);
        let period = self.period;
        if let Some(b) = &self.base
            && b.closed
            && !self.rewrite_closed
        {
            return Err(Failure::invariant(format!(
                "period {period} was closed by run `{}` (commit {}); a closed period is never rewritten: bill late data as adjustments in an open period",
                b.run_id, b.version
            ))
            .into());
        }
        let version = self.base.as_ref().map_or(1, |b| b.version + 1);
        let commit = Commit {
            period: period.to_string(),
            version,
            run_id: self.run_id.clone(),
            manifest: format!("_runs/{}.json", self.run_id),
            manifest_json: manifest,
            closed: close,
            previous_run: self.base.as_ref().map(|b| b.run_id.clone()),
            files: self.files.values().cloned().collect(),
        };
        if crash == Some(CrashPoint::BeforePointer) {
            self.finished = true;
            return Ok(None);
        }
        let pointer = version_path(period, version, "json");
        let text = serde_json::to_vec_pretty(&commit).context("serialising the commit pointer")?;
        // The commit point. From here on this run's data is never deleted by this run (see `commit_attempted`).
        self.commit_attempted = true;
        let created = wh.put_create(&pointer, Bytes::from(text));
        if !matches!(created, Ok(true)) {
            // Lost the race, or an ambiguous answer (a timeout or reset after the write landed, or a retry of our
            // own landed write reporting that it exists): the pointer read back decides.
            let found = wh.read_version(period, version);
            match (&created, found) {
                (_, Ok(Some(c))) if c.run_id == self.run_id => {
                    tracing::warn!(period = %period, version, "the commit pointer write reported a failure but landed; carrying on");
                }
                (Ok(_), Ok(Some(c))) | (Err(_), Ok(Some(c))) => {
                    // Another run owns version N+1 and pointers are create-once: ours can never land, so this
                    // run's data is certainly unreferenced and is removed on drop.
                    self.commit_attempted = false;
                    return Err(Failure::invariant(format!(
                        "another run (`{}`) committed period {period} first as version {version}; this run `{}` published nothing: re-run the period if its inputs changed",
                        c.run_id, self.run_id
                    ))
                    .into());
                }
                (_, found) => {
                    let why = match (&created, &found) {
                        (Err(e), _) => format!("{e:#}"),
                        (_, Err(e)) => format!("{e:#}"),
                        _ => "the store reported that the pointer exists, but it cannot be read".into(),
                    };
                    return Err(Failure::invariant(redact(&format!(
                        "the commit of period {period} (version {version}, run `{}`) could not be confirmed: {why}; its data is kept under `{}` in case the pointer landed: run the period again (the next run completes or supersedes it)",
                        self.run_id,
                        run_prefix(period, &self.run_id)
                    )))
                    .into());
                }
            }
        }
        if crash == Some(CrashPoint::AfterPointer) {
            self.finished = true;
            return Ok(None);
        }
        let copies = match crash {
            Some(CrashPoint::DuringPublish(n)) => Some(n),
            _ => None,
        };
        let published = wh.publish(period, &commit, self.base.as_ref(), copies).map_err(|e| {
            Failure::invariant(redact(&format!(
                "period {period} was committed (version {version}, run `{}`) but publishing it for readers failed: {e:#}; the next command on the period completes it",
                self.run_id
            )))
        })?;
        if !published {
            self.finished = true;
            return Ok(None);
        }
        if crash == Some(CrashPoint::BeforeCleanup) {
            self.finished = true;
            return Ok(None);
        }
        // Keep the data of this run and the previous one (a reader that read the previous pointer a moment ago
        // may still be reading it); anything older of this period is garbage.
        let mut keep = BTreeSet::from([self.run_id.clone()]);
        keep.extend(commit.previous_run.clone());
        if let Err(e) = wh.collect_garbage(period, &keep) {
            tracing::warn!(period = %period, error = %redact(&format!("{e:#}")), "could not remove old run data; the next commit retries");
        }
        self.finished = true;
        wh.release_lock(period, &self.run_id);
        Ok(Some(commit))
    }
}

/// Where `Txn::commit_until` stops, as if the process were killed there.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    BeforePointer,
    AfterPointer,
    /// After this many Hive copies or deletions of the publish step.
    DuringPublish(usize),
    BeforeCleanup,
}

impl Drop for Txn {
    /// A run dropped without commit publishes nothing: its private data is removed (best effort: what remains is
    /// unreferenced garbage, removed by a later commit) and the lock is released.
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if self.commit_attempted {
            // The pointer may reference this data (an ambiguous commit): keep it, release the lock only.
            self.wh.release_lock(self.period, &self.run_id);
            return;
        }
        let prefix = run_prefix(self.period, &self.run_id);
        if let Err(e) = self.wh.delete_prefix(&prefix) {
            tracing::warn!(run = %self.run_id, error = %redact(&format!("{e:#}")), "could not remove the data of an abandoned run");
        }
        self.wh.release_lock(self.period, &self.run_id);
    }
}
