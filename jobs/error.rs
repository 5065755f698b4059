//! How outcomes map to exit codes (DESIGN §7): 0 success, 1 ran but an invariant, threshold or commit failed,
//! 2 bad usage, configuration or input. Errors travel as `anyhow::Error`; a [`Failure`] anywhere in the chain,
//! or a configuration `PipelineError`, decides the code.

use std::fmt;

/// An outcome with a known exit code and a message that says what was wrong, where, and what to do.
#[derive(Debug)]
pub enum Failure {
    /// Exit 2: bad usage, configuration or input.
    Usage(String),
    /// Exit 1: the run ran but an invariant, a threshold or the commit failed.
    Invariant(String),
}

impl Failure {
    pub fn usage(msg: impl Into<String>) -> Self {
        Failure::Usage(msg.into())
    }
    pub fn invariant(msg: impl Into<String>) -> Self {
        Failure::Invariant(msg.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(m) | Failure::Invariant(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error chain: the first `Failure` or configuration `PipelineError` found decides;
/// anything else (I/O, Polars) is an input problem (2) unless proven otherwise.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return match f {
                Failure::Usage(_) => 2,
                Failure::Invariant(_) => 1,
            };
        }
        if let Some(p) = cause.downcast_ref::<pipeline::PipelineError>() {
            return if p.is_config() {
                2
            } else if matches!(p, pipeline::PipelineError::Invariant { .. }) {
                1
            } else {
                2
            };
        }
    }
    2
}

/// The most bytes of an offending input value a message quotes.
pub const QUOTE_BYTES: usize = 200;

/// At most [`QUOTE_BYTES`] of `s` (cut at a character boundary), with `…` when cut, control characters escaped:
/// how a message quotes a value that came from outside (a file name, a cell, an identifier).
pub fn clip(s: &str) -> String {
    let mut end = s.len().min(QUOTE_BYTES);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end].escape_debug().collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// Removes secrets from a message or log line: the user-info (`user:password@`) and the query string (an
/// Azure SAS token `?sv=...&sig=...`, presigned parameters) of every URL in it, and the values of
/// `key=value` credentials (`sig`, `AccountKey`, `SharedAccessSignature`, `password`, `secret`, `token`)
/// anywhere. Every message naming a warehouse or store goes through it.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        let end = after
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>' | ')' | ']' | '}'))
            .unwrap_or(after.len());
        let url = &after[..end];
        let auth_end = url.find(['/', '?', '#']).unwrap_or(url.len());
        let (auth, path) = url.split_at(auth_end);
        match auth.rfind('@') {
            Some(k) => {
                out.push_str("***@");
                out.push_str(&auth[k + 1..]);
            }
            None => out.push_str(auth),
        }
        match path.find('?') {
            Some(q) => {
                out.push_str(&path[..q]);
                out.push_str("?***");
            }
            None => out.push_str(path),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    redact_keys(&out)
}

fn redact_keys(text: &str) -> String {
    const KEYS: &[&str] = &["sig=", "accountkey=", "sharedaccesssignature=", "password=", "secret=", "token="];
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hit = KEYS.iter().find(|k| {
            lower[i..].starts_with(**k)
                && (i == 0 || !lower.as_bytes()[i - 1].is_ascii_alphanumeric())
        });
        match hit {
            Some(k) => {
                out.push_str(&text[i..i + k.len()]);
                out.push_str("***");
                i += k.len();
                let stop = text[i..]
                    .find(|c: char| c.is_whitespace() || matches!(c, '&' | ';' | '`' | '"' | '\'' | ','))
                    .map_or(text.len(), |e| i + e);
                i = stop;
            }
            None => {
                let c = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&text[i..i + c]);
                i += c;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{QUOTE_BYTES, clip, redact};

    #[test]
    fn clip_cuts_at_a_character_boundary_and_escapes() {
        let long = "é".repeat(300);
        let c = clip(&long);
        assert!(c.len() <= QUOTE_BYTES + '…'.len_utf8());
        assert!(c.ends_with('…'));
        assert_eq!(clip("a\nb"), "a\\nb");
        assert_eq!(clip("short"), "short");
    }

    #[test]
    fn secrets_in_urls_and_key_values_are_redacted() {
        let sas = "az://c/p?sv=2022-11-02&ss=b&sig=AbC%2Bdef%3D&se=2030";
        assert_eq!(redact(&format!("cannot reach `{sas}`: 403")), "cannot reach `az://c/p?***`: 403");
        assert_eq!(
            redact("GET https://acct.blob.core.windows.net/c/x?restype=container&sig=zz failed"),
            "GET https://acct.blob.core.windows.net/c/x?*** failed"
        );
        assert_eq!(redact("s3://user:pa55@host/b/p"), "s3://***@host/b/p");
        assert_eq!(redact("AccountKey=abc==;EndpointSuffix=x"), "AccountKey=***;EndpointSuffix=x");
        assert_eq!(redact("plain sig=xyz&a=1"), "plain sig=***&a=1");
        assert_eq!(redact("s3://bucket/prefix and /local/path"), "s3://bucket/prefix and /local/path");
        assert_eq!(redact("design=1 signature"), "design=1 signature");
    }
}
