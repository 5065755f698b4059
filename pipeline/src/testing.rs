//! Test helpers shared by stage tests: one deterministic rendering of a frame as CSV text, sorted, so that
//! tests compare data, not debug output.

use polars::prelude::*;

/// Renders `df` as CSV text (header + rows), sorted by all columns, decimals printed exactly.
pub fn frame_to_sorted_csv(df: &DataFrame) -> String {
    let mut df = df.clone();
    let names: Vec<PlSmallStr> = df.get_column_names().into_iter().cloned().collect();
    if !names.is_empty() && df.height() > 0 {
        df = df
            .sort(names.clone(), SortMultipleOptions::default().with_maintain_order(true))
            .expect("sorting a frame by its own columns");
    }
    frame_to_csv(&mut df)
}

/// Renders `df` as CSV text in its own row order.
pub fn frame_to_csv(df: &mut DataFrame) -> String {
    let mut buf = Vec::new();
    CsvWriter::new(&mut buf).include_header(true).finish(df).expect("writing CSV to memory");
    String::from_utf8(buf).expect("CSV writer emits UTF-8")
}

/// Collects `lf` and renders it sorted (see [`frame_to_sorted_csv`]).
pub fn lazy_to_sorted_csv(lf: LazyFrame) -> String {
    frame_to_sorted_csv(&lf.collect().expect("collecting a test plan"))
}
