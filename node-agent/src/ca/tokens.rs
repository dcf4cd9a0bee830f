//! Bootstrap tokens (local mode): how a node agent proves which node it is
//! when there is no Kubernetes API server to review a ServiceAccount token.
//!
//! `warren-node-agent ca issue-token --node NODE` creates one and prints
//! it; the testbed hands it to that node's agent. The state folder keeps
//! only the token's SHA-256 (`tokens/<hash>.json`: node and expiry), so
//! reading the folder does not give anyone a usable token. A token names
//! one node and expires; expired records are deleted when the next token is
//! issued.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{persist, x509::hex};

/// Tokens start with this, so a misplaced one is recognisable.
const PREFIX: &str = "warren-bootstrap-";
const SECRET_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: not a token record: {reason}", path.display())]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0:?} is not a node name (lowercase letters, digits, '-' and '.')")]
    BadNode(String),
    #[error("the token is not a Warren bootstrap token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("the token of node {node} expired {ago}s ago")]
    Expired { node: String, ago: u64 },
}

/// What the folder keeps for one token.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    node: String,
    /// Seconds since the epoch.
    issued_at: u64,
    expires_at: u64,
}

/// The bootstrap tokens of one CA state folder.
#[derive(Clone, Debug)]
pub struct Tokens {
    dir: PathBuf,
}

impl Tokens {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("tokens"),
        }
    }

    /// Creates a token for `node`, valid for `ttl` from `now`, and returns
    /// it (the only time it is visible).
    pub fn issue(&self, node: &str, ttl: Duration, now: SystemTime) -> Result<String, TokenError> {
        if !valid_node(node) {
            return Err(TokenError::BadNode(node.to_owned()));
        }
        persist::ensure_dir(&self.dir).map_err(|source| TokenError::Io {
            path: self.dir.clone(),
            source,
        })?;
        self.prune(now);
        let secret: [u8; SECRET_BYTES] = rand::random();
        let token = format!("{PREFIX}{}", hex(&secret));
        let issued_at = seconds(now);
        let record = Record {
            node: node.to_owned(),
            issued_at,
            expires_at: issued_at.saturating_add(ttl.as_secs()),
        };
        let path = self.record_path(&token);
        let text = serde_json::to_vec_pretty(&record).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        persist::write_atomic(&path, &text, persist::PRIVATE)
            .map_err(|source| TokenError::Io { path, source })?;
        Ok(token)
    }

    /// The node a token authenticates, if it is known and not expired.
    pub fn check(&self, token: &str, now: SystemTime) -> Result<String, TokenError> {
        let secret = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
        if secret.len() != SECRET_BYTES * 2 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TokenError::Malformed);
        }
        // Looked up by hash: no comparison of secrets, and the name of the
        // file never depends on untrusted characters.
        let path = self.record_path(token);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(TokenError::Unknown),
            Err(source) => return Err(TokenError::Io { path, source }),
        };
        let record: Record = serde_json::from_slice(&text).map_err(|e| TokenError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let now = seconds(now);
        if now >= record.expires_at {
            return Err(TokenError::Expired {
                node: record.node,
                ago: now - record.expires_at,
            });
        }
        Ok(record.node)
    }

    fn record_path(&self, token: &str) -> PathBuf {
        let hash = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        self.dir.join(format!("{}.json", hex(hash.as_ref())))
    }

    /// Deletes records of expired tokens (best effort: a leftover record is
    /// harmless, it only ever answers "expired").
    fn prune(&self, now: SystemTime) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let now = seconds(now);
        for entry in entries.flatten() {
            let path = entry.path();
            let expired = fs::read(&path)
                .ok()
                .and_then(|t| serde_json::from_slice::<Record>(&t).ok())
                .is_some_and(|r| r.expires_at <= now);
            if expired {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && node.len() <= 253
        && node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_node_until_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let token = tokens.issue("node-a", Duration::from_secs(60), t0).unwrap();
        assert_eq!(tokens.check(&token, t0).unwrap(), "node-a");
        assert_eq!(
            tokens.check(&token, t0 + Duration::from_secs(59)).unwrap(),
            "node-a"
        );
        let err = tokens
            .check(&token, t0 + Duration::from_secs(70))
            .unwrap_err();
        assert!(
            matches!(err, TokenError::Expired { ref node, ago: 10 } if node == "node-a"),
            "{err}"
        );
        // The folder holds no usable secret.
        for entry in fs::read_dir(dir.path().join("tokens")).unwrap() {
            let text = fs::read_to_string(entry.unwrap().path()).unwrap();
            assert!(!text.contains(token.trim_start_matches(PREFIX)), "{text}");
        }
    }

    #[test]
    fn unknown_malformed_and_pruned_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::new(dir.path());
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let old = tokens.issue("node-a", Duration::from_secs(1), t0).unwrap();
        let forged = format!("{PREFIX}{}", "ab".repeat(SECRET_BYTES));
        assert!(matches!(
            tokens.check(&forged, t0),
            Err(TokenError::Unknown)
        ));
        assert!(matches!(
            tokens.check("../../etc/passwd", t0),
            Err(TokenError::Malformed)
        ));
        assert!(matches!(
            tokens.issue("Node_A", Duration::from_secs(1), t0),
            Err(TokenError::BadNode(_))
        ));
        // Issuing later prunes the expired record: it is then unknown.
        tokens
            .issue(
                "node-b",
                Duration::from_secs(60),
                t0 + Duration::from_secs(5),
            )
            .unwrap();
        assert!(matches!(tokens.check(&old, t0), Err(TokenError::Unknown)));
    }
}
