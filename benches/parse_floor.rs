//! The floor for ingest: the time Polars takes merely to parse a daily-usage CSV as text (no typing, no hashing,
//! no writing). `benches/ingest_10m.sh` runs it beside `cspbill ingest` on the same file; ingest aims to stay
//! within 2× this floor. Run: `cargo bench --bench parse_floor -- FILE.csv`.

use std::time::Instant;

use polars::prelude::*;

fn main() -> PolarsResult<()> {
    let Some(path) = std::env::args().skip(1).find(|a| !a.starts_with("--")) else {
        eprintln!("usage: cargo bench --bench parse_floor -- FILE.csv");
        return Ok(());
    };
    let t = Instant::now();
    let lf = LazyCsvReader::new(PlRefPath::new(path.as_str()))
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .finish()?;
    // Touch every column so the reader parses every field, then count: a streaming collect keeps memory flat.
    let names: Vec<PlSmallStr> = lf.clone().collect_schema()?.iter_names().cloned().collect();
    let counts: Vec<Expr> = names.iter().map(|n| col(n.clone()).null_count().alias(n.clone())).collect();
    let out = lf.select(counts).collect_with_engine(Engine::Streaming)?.unwrap_single();
    let rows = LazyCsvReader::new(PlRefPath::new(path.as_str())).with_has_header(true).with_infer_schema_length(Some(0)).finish()?.select([len()]).collect()?;
    println!("parse_floor file={path} columns={} rows={} seconds={:.2}", out.width(), rows.column("len")?.get(0)?, t.elapsed().as_secs_f64());
    Ok(())
}
