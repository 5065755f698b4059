//! Splitting a streamed table into one Parquet file per value of a key (per invoice), in one streaming pass and in
//! bounded memory. Used for the detail an XLSX export reads (`crate::exports::DetailByInvoice`) and for the
//! per-invoice FOCUS files (`crate::focus`).
//!
//! The streaming engine hands rows over in morsels of a few thousand; split over hundreds of invoices, writing
//! each piece as it comes gave row groups of a few dozen rows, and a 1M-row month spent minutes compressing them
//! (issue 10). Pieces are buffered per key and written (in row groups of `spool::ROW_GROUP_ROWS`) when a key holds
//! [`FLUSH_ROWS`] rows, or when all buffers together hold [`BUDGET_ROWS`] (then the largest goes first), so memory
//! is bounded by the budget, not by the month or the number of invoices. Row order within a key is the table's.
//!
//! The row-group layout of these files depends on morsel sizes, which the engine does not fix: a file that is
//! published is rewritten by [`finalise`] with the fixed row groups of every published table, so its bytes depend
//! only on its rows.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use polars::io::parquet::write::BatchedWriter;
use polars::prelude::*;

/// Rows of one key written at once.
pub const FLUSH_ROWS: usize = 65_536;
/// Rows buffered over all keys before the largest buffer is written.
pub const BUDGET_ROWS: usize = 131_072;
/// Split files of at most this many rows are finalised in memory; larger ones stream.
pub const IN_MEMORY_ROWS: usize = 32_768;

struct State {
    targets: HashMap<String, PathBuf>,
    schema: Schema,
    buffers: HashMap<String, (Vec<DataFrame>, usize)>,
    total: usize,
    writers: HashMap<String, BatchedWriter<fs::File>>,
}

impl State {
    fn flush(&mut self, key: &str) -> PolarsResult<()> {
        let Some((parts, rows)) = self.buffers.remove(key) else { return Ok(()) };
        self.total -= rows;
        if !self.writers.contains_key(key) {
            let path = &self.targets[key];
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(|e| polars_err!(ComputeError: "creating `{}`: {e}", parent.display()))?;
            }
            let f = fs::File::create(path).map_err(|e| polars_err!(ComputeError: "creating `{}`: {e}", path.display()))?;
            // Split files are temporary (finalised, or read back by the XLSX export): LZ4 and no statistics keep the
            // single-threaded callback cheap; the published bytes are written by `finalise`.
            let w = ParquetWriter::new(f)
                .with_compression(ParquetCompression::Lz4Raw)
                .with_statistics(StatisticsOptions::empty())
                .batched(&self.schema)?;
            self.writers.insert(key.to_string(), w);
        }
        let mut it = parts.into_iter();
        let Some(mut df) = it.next() else { return Ok(()) };
        for p in it {
            df.vstack_mut(&p)?;
        }
        // Row groups of the published size (the writer writes a row group per call): a reader of this file (the
        // streaming finalise, the XLSX detail sheets) decodes a few row groups ahead, so their size bounds its memory.
        df.rechunk_mut();
        if let Some(w) = self.writers.get_mut(key) {
            let mut offset = 0;
            while offset < df.height() {
                let n = crate::spool::ROW_GROUP_ROWS.min(df.height() - offset);
                w.write_batch(&df.slice(offset as i64, n))?;
                offset += n;
            }
        }
        Ok(())
    }

    fn push(&mut self, key: String, part: DataFrame) -> PolarsResult<()> {
        let h = part.height();
        let entry = self.buffers.entry(key.clone()).or_default();
        entry.0.push(part);
        entry.1 += h;
        let full = entry.1 >= FLUSH_ROWS;
        self.total += h;
        if full {
            self.flush(&key)?;
        }
        while self.total > BUDGET_ROWS {
            let Some(largest) = self.buffers.iter().max_by_key(|(k, (_, n))| (*n, (*k).clone())).map(|(k, _)| k.clone()) else { break };
            self.flush(&largest)?;
        }
        Ok(())
    }
}

/// Streams `lf` into one Parquet file per value of the string column `key`, at `targets[value]`. A row whose key
/// has no target fails the split, naming it (callers filter first when they want a subset). Returns the files
/// written (keys without rows get none).
pub fn split_by(lf: LazyFrame, key: &str, targets: HashMap<String, PathBuf>, what: &str) -> Result<HashMap<String, PathBuf>> {
    let schema = (*lf.clone().collect_schema()?).clone();
    let state = Arc::new(Mutex::new(State {
        targets,
        schema,
        buffers: HashMap::new(),
        total: 0,
        writers: HashMap::new(),
    }));
    let (s2, key2, what2) = (Arc::clone(&state), key.to_string(), what.to_string());
    let sink = lf.sink_batches(
        PlanCallback::new(move |df: DataFrame| {
            let mut st = s2.lock().map_err(|_| polars_err!(ComputeError: "{what2}: split state poisoned"))?;
            for part in df.partition_by_stable([key2.as_str()], true)? {
                let k = part.column(&key2)?.str()?.get(0).unwrap_or_default().to_string();
                if !st.targets.contains_key(&k) {
                    polars_bail!(ComputeError: "{what2}: rows with {key2} `{k}`, which has no target");
                }
                st.push(k, part)?;
            }
            Ok(false)
        }),
        true,
        None,
    )?;
    sink.collect_with_engine(Engine::Streaming).map_err(|e| anyhow::anyhow!("splitting {what}: {e}"))?;
    crate::spool::mem_probe(what);
    let mut st = state.lock().map_err(|_| anyhow::anyhow!("{what}: split state poisoned"))?;
    let keys: Vec<String> = st.buffers.keys().cloned().collect();
    for k in keys {
        st.flush(&k).map_err(|e| anyhow::anyhow!("splitting {what}: {e}"))?;
    }
    let mut written = HashMap::new();
    for (k, w) in std::mem::take(&mut st.writers) {
        w.finish().map_err(|e| anyhow::anyhow!("splitting {what}: finishing the file of `{k}`: {e}"))?;
        written.insert(k.clone(), st.targets[&k].clone());
    }
    Ok(written)
}

/// The rows of a split file, from its Parquet footer.
pub fn rows(split_file: &Path, what: &str) -> Result<usize> {
    let f = fs::File::open(split_file).map_err(|e| anyhow::anyhow!("{what}: reading `{}`: {e}", split_file.display()))?;
    ParquetReader::new(f).num_rows().map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Whether [`finalise`] streams a split file of `rows` rows (above [`IN_MEMORY_ROWS`]) instead of rewriting it in
/// memory. Callers that fan files out over the cores finalise these one at a time: each streaming rewrite runs on
/// every core already, and two at once held 2.4 GB of heap on a 10M-row month.
pub fn streams(rows: usize) -> bool {
    rows > IN_MEMORY_ROWS
}

/// Rewrites a split file to `target` with the fixed row groups and options of every published table, so its
/// bytes depend only on its rows (see the module note). A file of at most [`IN_MEMORY_ROWS`] rows is rewritten in
/// memory (starting the streaming engine for each of hundreds of small invoices cost more than the rows); a larger
/// one streams. Which way a file goes depends only on its row count, `rows` (from [`rows`]).
pub fn finalise(split_file: &Path, rows: usize, target: &Path, what: &str) -> Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(|e| anyhow::anyhow!("creating `{}`: {e}", parent.display()))?;
    }
    let open = || fs::File::open(split_file).map_err(|e| anyhow::anyhow!("{what}: reading `{}`: {e}", split_file.display()));
    if streams(rows) {
        return crate::spool::sink_parquet(crate::spool::scan(split_file)?, target, what);
    }
    let mut df = ParquetReader::new(open()?).finish().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
    df.rechunk_mut();
    let o = crate::spool::parquet_options();
    let f = fs::File::create(target).map_err(|e| anyhow::anyhow!("{what}: creating `{}`: {e}", target.display()))?;
    let write_err = |e: PolarsError| anyhow::anyhow!("{what}: writing `{}`: {e}", target.display());
    // One row group at a time: `ParquetWriter::finish` encodes every row group of the frame at once, which held
    // several times the file's rows in memory per thread of the fan-out (3.4 GB on a 3M-row month).
    let mut w = ParquetWriter::new(f).with_compression(o.compression).with_statistics(o.statistics).batched(df.schema()).map_err(write_err)?;
    let mut offset = 0;
    while offset < df.height() {
        let n = crate::spool::ROW_GROUP_ROWS.min(df.height() - offset);
        w.write_batch(&df.slice(offset as i64, n)).map_err(write_err)?;
        offset += n;
    }
    w.finish().map_err(write_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> DataFrame {
        let keys: Vec<String> = (0..n).map(|i| format!("k{}", i % 7)).collect();
        let vals: Vec<i64> = (0..n as i64).collect();
        df!("key" => keys, "v" => vals).expect("frame")
    }

    #[test]
    fn every_row_lands_in_its_keys_file_in_table_order_and_the_layout_does_not_change_the_bytes() {
        let dir = tempfile::tempdir().expect("tmp");
        // More rows than the budget, so buffers are flushed both when full and by the budget.
        let n = BUDGET_ROWS * 2 + 123;
        let src = dir.path().join("src.parquet");
        crate::spool::sink_parquet(frame(n).lazy(), &src, "test").expect("source");
        let targets: HashMap<String, PathBuf> =
            (0..7).map(|k| (format!("k{k}"), dir.path().join(format!("split/k{k}.parquet")))).collect();
        let written = split_by(crate::spool::scan(&src).expect("scan"), "key", targets, "test").expect("split");
        assert_eq!(written.len(), 7);
        let mut total = 0;
        for k in 0..7i64 {
            let df = crate::spool::collect(crate::spool::scan(&written[&format!("k{k}")]).expect("scan"), "t").expect("read");
            let v: Vec<i64> = df.column("v").expect("v").i64().expect("i64").into_no_null_iter().collect();
            // Independent truth: the values congruent to k mod 7, ascending.
            let want: Vec<i64> = (0..n as i64).filter(|x| x % 7 == k).collect();
            assert_eq!(v, want, "key k{k}");
            total += v.len();
        }
        assert_eq!(total, n);
        // The same rows written in one piece and finalised give the same bytes as the split file finalised.
        let whole = dir.path().join("whole.parquet");
        let k3: Vec<i64> = (0..n as i64).filter(|x| x % 7 == 3).collect();
        let keys = vec!["k3".to_string(); k3.len()];
        crate::spool::sink_parquet(df!("key" => keys, "v" => k3).expect("f").lazy(), &whole, "t").expect("whole");
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        finalise(&written["k3"], rows(&written["k3"], "t").unwrap(), &a, "t").expect("a");
        finalise(&whole, rows(&whole, "t").unwrap(), &b, "t").expect("b");
        assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
    }

    #[test]
    fn a_file_larger_than_a_row_group_is_finalised_to_the_same_bytes_however_it_was_split() {
        let dir = tempfile::tempdir().expect("tmp");
        let n = IN_MEMORY_ROWS + crate::spool::ROW_GROUP_ROWS + 17;
        let frame = || df!("key" => vec!["one"; n], "v" => (0..n as i64).collect::<Vec<_>>()).expect("frame");
        let src = dir.path().join("src.parquet");
        crate::spool::sink_parquet(frame().lazy(), &src, "t").expect("source");
        let targets: HashMap<String, PathBuf> = [("one".to_string(), dir.path().join("split.parquet"))].into();
        let written = split_by(crate::spool::scan(&src).expect("scan"), "key", targets, "t").expect("split");
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        finalise(&written["one"], rows(&written["one"], "t").unwrap(), &a, "t").expect("a");
        finalise(&src, rows(&src, "t").unwrap(), &b, "t").expect("b");
        assert_eq!(fs::read(&a).expect("a"), fs::read(&b).expect("b"));
        let back = crate::spool::collect(crate::spool::scan(&a).expect("scan"), "t").expect("read");
        assert_eq!(back.height(), n);
    }

    #[test]
    fn a_row_without_a_target_fails_the_split_naming_its_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let targets: HashMap<String, PathBuf> = [("k1".to_string(), dir.path().join("k1.parquet"))].into();
        let err = split_by(frame(20).lazy(), "key", targets, "the test table").expect_err("must fail");
        let msg = format!("{err:#}");
        assert!(msg.contains("has no target") && msg.contains("the test table"), "{msg}");
    }
}
