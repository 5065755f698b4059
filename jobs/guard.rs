//! Input safety: what cspbill agrees to read from a period's input folder, before any parser sees a byte.
//!
//! - Only regular files (and folders) are read: a FIFO would block the run forever, a device (`/dev/zero`) never
//!   ends, a socket cannot be read. Each is exit 2 naming the path.
//! - A symbolic link is followed only when its target stays inside the input folder, unless the configuration
//!   says `follow_symlinks = true` (a link to `/etc/passwd` or to another customer's folder is refused).
//! - Sizes are bounded by [`Limits`] (`[limits]` in `cspbill.toml`, sane defaults): the longest CSV record or
//!   JSON line, the columns of a CSV header, the bytes of one JSON document or decompressed v2 blob. A file past
//!   a limit is exit 2 naming the file, the line and the key to raise, never an out-of-memory abort.
//! - Messages quote at most `error::QUOTE_BYTES` of any offending input (`error::clip`), and nothing of a file that
//!   is not a recognised export.
//!
//! The limits are installed once per process by `Config::load` ([`install`]) and read where files are read
//! ([`limits`]); readers that never load a configuration (tests, `late` re-statements before a config exists)
//! get the defaults.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use anyhow::Result;
use serde::Deserialize;

use crate::error::Failure;

/// Bounds on what input reading accepts (`[limits]` in `cspbill.toml`). Every key is optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The longest CSV record (header included) or JSON line, in bytes. Default 1 MiB: a Partner Center usage
    /// row is about 2 KB even with long tags.
    pub max_record_bytes: u64,
    /// The most columns a CSV header may have. Default 1,000 (Partner Center files have 50 to 70).
    pub max_columns: u64,
    /// The largest JSON document (a v1 page, a JSON-lines file) or decompressed v2 blob, in bytes: each is
    /// parsed in memory. Default 1 GiB.
    pub max_json_bytes: u64,
    /// Follow symbolic links that lead out of the input folder. Default false.
    pub follow_symlinks: bool,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        max_record_bytes: 1 << 20,
        max_columns: 1_000,
        max_json_bytes: 1 << 30,
        follow_symlinks: false,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

static LIMITS: RwLock<Limits> = RwLock::new(Limits::DEFAULT);

/// Sets the limits for the rest of the process (called when the configuration is loaded).
pub fn install(l: &Limits) {
    if let Ok(mut g) = LIMITS.write() {
        *g = *l;
    }
}

/// The limits in force.
pub fn limits() -> Limits {
    LIMITS.read().map(|g| *g).unwrap_or_default()
}

fn refuse(msg: String) -> anyhow::Error {
    Failure::usage(msg).into()
}

/// What an entry of the input folder is, once checked.
pub enum Entry {
    File(PathBuf),
    Dir(PathBuf),
}

/// Checks one entry of the input folder `root` (found by listing it): a regular file or a folder, reached
/// without leaving `root` through a link unless `follow_symlinks`. Returns the path to read (the link itself:
/// its name is what the run reports). Anything else is exit 2 naming it.
pub fn check_entry(root: &Path, path: &Path) -> Result<Entry> {
    let shown = path.display();
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| refuse(format!("cannot read `{shown}`: {e}; check its permissions")))?;
    if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(path).map_err(|e| {
            refuse(format!(
                "`{shown}` is a symbolic link that cannot be followed ({e}): remove it or point it at an export"
            ))
        })?;
        let inside = std::fs::canonicalize(root).is_ok_and(|r| target.starts_with(r));
        if !inside && !limits().follow_symlinks {
            return Err(refuse(format!(
                "`{shown}` is a symbolic link leading out of the input folder `{}`: copy the export into the folder, \
                 or set `follow_symlinks = true` under `[limits]` in cspbill.toml if links are how your exports arrive",
                root.display()
            )));
        }
    }
    // The type of what is finally read (after links).
    let meta = std::fs::metadata(path)
        .map_err(|e| refuse(format!("cannot read `{shown}`: {e}; check its permissions")))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        return Ok(Entry::Dir(path.to_path_buf()));
    }
    if ft.is_file() {
        return Ok(Entry::File(path.to_path_buf()));
    }
    Err(refuse(format!(
        "`{shown}` is not a regular file ({}): cspbill reads only regular files; remove it from the input folder",
        special_kind(&ft)
    )))
}

fn special_kind(ft: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return "a named pipe";
        }
        if ft.is_char_device() || ft.is_block_device() {
            return "a device";
        }
        if ft.is_socket() {
            return "a socket";
        }
    }
    let _ = ft;
    "a special file"
}

/// Reads a whole JSON input file, refusing one larger than `max_json_bytes` before reading it.
pub fn read_json_file(path: &Path, name: &str) -> Result<Vec<u8>> {
    let max = limits().max_json_bytes;
    let file = std::fs::File::open(path).map_err(|e| refuse(format!("cannot open `{name}`: {e}")))?;
    read_bounded(file, max, name, "JSON file", "cannot be read")
}

/// Decompresses a gzip stream, refusing one that inflates past `max_json_bytes` (a zip bomb stops there, with
/// at most that much memory used).
pub fn gunzip_bounded(r: impl Read, name: &str) -> Result<Vec<u8>> {
    let max = limits().max_json_bytes;
    let dec = flate2::read::GzDecoder::new(r);
    read_bounded(dec, max, name, "decompressed blob", "not a valid gzip blob")
}

fn read_bounded(r: impl Read, max: u64, name: &str, what: &str, bad: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(max.saturating_add(1)).read_to_end(&mut out).map_err(|e| {
        refuse(format!("`{name}`: {bad} ({e}): download it again from Partner Center"))
    })?;
    if out.len() as u64 > max {
        return Err(refuse(format!(
            "`{name}`: the {what} is larger than {max} bytes (`max_json_bytes`): if the export is genuine, raise \
             `max_json_bytes` under `[limits]` in cspbill.toml"
        )));
    }
    Ok(out)
}

/// Fails when a record is longer than `max_record_bytes`.
pub fn record_too_long(name: &str, line: u64, max: u64) -> anyhow::Error {
    refuse(format!(
        "`{name}`: line {line}: a record longer than {max} bytes (`max_record_bytes`): the file is damaged or not an \
         export; if it is genuine, raise `max_record_bytes` under `[limits]` in cspbill.toml"
    ))
}

/// Fails when a record has more than `max_columns` fields.
pub fn too_many_columns(name: &str, line: u64, max: u64) -> anyhow::Error {
    refuse(format!(
        "`{name}`: line {line}: more than {max} columns (`max_columns`): the file is damaged or not an export; if it \
         is genuine, raise `max_columns` under `[limits]` in cspbill.toml"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gunzip_stops_at_the_limit() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&vec![b'a'; 10_000]).unwrap();
        let gz = enc.finish().unwrap();
        let e = read_bounded(flate2::read::GzDecoder::new(&gz[..]), 1_000, "b.json.gz", "decompressed blob", "bad")
            .unwrap_err();
        assert!(format!("{e}").contains("max_json_bytes"), "{e}");
        assert_eq!(read_bounded(flate2::read::GzDecoder::new(&gz[..]), 10_000, "b", "x", "bad").unwrap().len(), 10_000);
    }
}
