//! CSV output of `generate`, through Polars' `CsvWriter` (the project writes CSV via Polars): rows are
//! collected as text columns in batches of bounded size and each batch is appended to the file, so memory does
//! not grow with the number of rows.
//!
//! Every value is already formatted text (decimals are printed by `rust_decimal`, never through f64). An empty
//! cell is a null: Polars writes a null as nothing under minimal quoting and as `""` when every field is quoted,
//! which is what the real exports show; an empty *string* would come out as `""` under minimal quoting.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, bail};
use polars::prelude::*;

/// The byte layout of one kind of file.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub bom: bool,
    pub quote_always: bool,
    pub crlf: bool,
}

/// Billed daily rated usage as in the 2025 real slice: minimal quoting, CRLF, no BOM.
pub const PC_USAGE: Layout = Layout {
    bom: false,
    quote_always: false,
    crlf: true,
};
/// New-commerce invoice reconciliation as in the real 2021 file: UTF-8 BOM, CRLF, every field quoted.
pub const PC_INVOICE: Layout = Layout {
    bom: true,
    quote_always: true,
    crlf: true,
};
/// The MSP's own reference files: minimal quoting, LF, no BOM.
pub const REFERENCE: Layout = Layout {
    bom: false,
    quote_always: false,
    crlf: false,
};

/// Rows per batch handed to Polars: large enough to amortise, small enough to keep memory flat.
const BATCH_ROWS: usize = 16_384;

/// A CSV file being written batch by batch.
pub struct CsvOut {
    path: String,
    names: Vec<&'static str>,
    cols: Vec<StringChunkedBuilder>,
    rows_in_batch: usize,
    rows: u64,
    layout: Layout,
    writer: polars::io::csv::write::BatchedWriter<File>,
    schema: Schema,
}

impl CsvOut {
    pub fn create(path: &Path, names: &[&'static str], layout: Layout) -> Result<Self> {
        let file = File::create(path).with_context(|| {
            format!(
                "cannot create `{}`; check that --out is writable",
                path.display()
            )
        })?;
        let schema: Schema = names
            .iter()
            .map(|n| Field::new((*n).into(), DataType::String))
            .collect();
        let writer = CsvWriter::new(file)
            .include_bom(layout.bom)
            .include_header(true)
            .with_quote_style(if layout.quote_always {
                QuoteStyle::Always
            } else {
                QuoteStyle::Necessary
            })
            .with_line_terminator(if layout.crlf {
                "\r\n".into()
            } else {
                "\n".into()
            })
            .batched(&schema)?;
        Ok(Self {
            path: path.display().to_string(),
            names: names.to_vec(),
            cols: new_builders(names),
            rows_in_batch: 0,
            rows: 0,
            layout,
            writer,
            schema,
        })
    }

    /// Appends one row; `row[i]` is column `i`, empty text is an empty cell.
    pub fn row<S: AsRef<str>>(&mut self, row: &[S]) -> Result<()> {
        if row.len() != self.names.len() {
            bail!(
                "internal: row of {} cells for `{}` with {} columns",
                row.len(),
                self.path,
                self.names.len()
            );
        }
        for (b, v) in self.cols.iter_mut().zip(row) {
            let v = v.as_ref();
            if v.is_empty() {
                b.append_null();
            } else {
                if !self.layout.quote_always && v.contains('"') && !v.contains([',', '\n', '\r']) {
                    // Polars' minimal quoting quotes only for separators and line breaks; a lone quote would
                    // make an unreadable file. Our generator never writes such a cell (JSON cells always have
                    // two or more keys), so this is a bug in this module, not bad input.
                    bail!(
                        "internal: cell `{v}` of `{}` needs quoting that Polars does not give",
                        self.path
                    );
                }
                b.append_value(v);
            }
        }
        self.rows_in_batch += 1;
        self.rows += 1;
        if self.rows_in_batch >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.rows_in_batch == 0 {
            return Ok(());
        }
        let cols = std::mem::replace(&mut self.cols, new_builders(&self.names));
        let columns: Vec<Column> = cols
            .into_iter()
            .map(|b| b.finish().into_series().into_column())
            .collect();
        let df = DataFrame::new(self.rows_in_batch, columns)?;
        self.writer
            .write_batch(&df)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("writing `{}`", self.path))?;
        self.rows_in_batch = 0;
        Ok(())
    }

    /// Writes what is left and the header of an empty file; returns the number of data rows.
    pub fn finish(mut self) -> Result<u64> {
        self.flush()?;
        let _ = &self.schema;
        self.writer
            .finish()
            .map_err(anyhow::Error::from)
            .with_context(|| format!("writing `{}`", self.path))?;
        Ok(self.rows)
    }
}

fn new_builders(names: &[&'static str]) -> Vec<StringChunkedBuilder> {
    names
        .iter()
        .map(|n| StringChunkedBuilder::new((*n).into(), BATCH_ROWS))
        .collect()
}

/// Writes a small table in one go.
pub fn write_table(
    path: &Path,
    names: &[&'static str],
    rows: &[Vec<String>],
    layout: Layout,
) -> Result<u64> {
    let mut out = CsvOut::create(path, names, layout)?;
    for r in rows {
        out.row(r)?;
    }
    out.finish()
}
