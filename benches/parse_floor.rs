//! The floor: the time Polars' streaming engine takes merely to parse daily-usage CSVs with every column as text
//! (no typing, no hashing, no writing). `benches/compare.sh` runs it beside `cspbill run --mode close` and the
//! DuckDB close on the same files (issue 10: cspbill within 3× this floor).
//! Run: `cargo bench --bench parse_floor -- FILE.csv [FILE.csv ...]`.
//!
//! Every column is read as `String` (an explicit all-String schema from the header: no inference) and each one's
//! `null_count` is taken together with the row count in one streaming pass per file, so the reader must split and
//! materialise every field of every row while memory stays flat.

use std::time::Instant;

use polars::prelude::*;

fn main() -> PolarsResult<()> {
    let paths: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if paths.is_empty() {
        eprintln!("usage: cargo bench --bench parse_floor -- FILE.csv [FILE.csv ...]");
        return Ok(());
    }
    let all = Instant::now();
    let mut total_rows = 0u64;
    for path in &paths {
        let t = Instant::now();
        // The header alone, to build the all-String schema.
        let header = LazyCsvReader::new(PlRefPath::new(path.as_str()))
            .with_has_header(true)
            .with_infer_schema_length(Some(0))
            .finish()?
            .collect_schema()?;
        let schema: Schema = header.iter_names().map(|n| Field::new(n.clone(), DataType::String)).collect();
        let lf = LazyCsvReader::new(PlRefPath::new(path.as_str()))
            .with_has_header(true)
            .with_schema(Some(Arc::new(schema.clone())))
            .finish()?;
        let mut exprs: Vec<Expr> = schema.iter_names().map(|n| col(n.clone()).null_count().alias(n.clone())).collect();
        exprs.push(len().cast(DataType::UInt64).alias("__rows"));
        let out = lf.select(exprs).collect_with_engine(Engine::Streaming)?.unwrap_single();
        let rows = out.column("__rows")?.u64()?.get(0).unwrap_or(0);
        total_rows += rows;
        println!(
            "parse_floor file={path} columns={} rows={rows} seconds={:.2} engine=streaming schema=all-String",
            schema.len(),
            t.elapsed().as_secs_f64()
        );
    }
    println!("parse_floor files={} rows={total_rows} seconds={:.2}", paths.len(), all.elapsed().as_secs_f64());
    Ok(())
}
