//! Gateway keys (docs/design.md §11.2): what a tool presents to use this member's gateway.
//!
//! Beyond loopback the gateway refuses to start without at least one key; on loopback it asks for none unless
//! `[gateway] require_key` is set. Keys come from `--gateway-key` / `LENDMESH_GATEWAY_KEY` (named `cli`) and from
//! the keys file (`gateway.keys` in the home, mode 0600, refused when others may read it, as ssh refuses a private
//! key): one `name key` per line, a name per device, so one device can be revoked by removing its line —
//! `lendmesh gateway key add|list|remove` does it, and a running node reads the file again when it changes.
//!
//! A request presents a key the way tools already send API keys: `Authorization: Bearer <key>` (OpenAI SDKs,
//! `OPENAI_API_KEY`) or `x-api-key: <key>` (Anthropic SDKs, `ANTHROPIC_API_KEY`). It is compared with every key in
//! constant time, and never leaves the node: both headers are credentials (`protocol::scrub::CREDENTIAL_HEADERS`),
//! stripped before a request goes to an upstream or a lender.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use subtle::ConstantTimeEq;
use tracing::warn;
use zeroize::Zeroizing;

/// The keys file in the home.
pub const KEYS_FILE: &str = "gateway.keys";
/// Largest keys file read.
pub const MAX_KEYS_FILE_BYTES: u64 = 64 * 1024;
/// Most keys held.
pub const MAX_KEYS: usize = 256;
/// Shortest key accepted (a generated one is 52 characters).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 256;
/// How often a running node looks at the keys file for changes, at most.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// A key and the device it belongs to. `Debug` shows the name only.
#[derive(Clone, PartialEq, Eq)]
pub struct NamedKey {
    /// The device's name (1 to 64 of `A-Z a-z 0-9 . _ -`).
    pub name: String,
    key: Zeroizing<String>,
}

impl std::fmt::Debug for NamedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamedKey({})", self.name)
    }
}

impl NamedKey {
    /// Checks the name and the key (16 to 256 visible ASCII characters).
    pub fn new(name: &str, key: &str) -> Result<NamedKey, String> {
        check_name(name)?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "the key of {name:?} must be {MIN_KEY_LEN} to {MAX_KEY_LEN} visible ASCII characters without spaces"
            ));
        }
        Ok(NamedKey {
            name: name.to_string(),
            key: Zeroizing::new(key.to_string()),
        })
    }

    /// A fresh random key for `name` (`lmk_` and 48 hex digits: 192 bits).
    pub fn generate(name: &str) -> Result<NamedKey, String> {
        let mut bytes = Zeroizing::new([0u8; 24]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        NamedKey::new(name, &format!("lmk_{}", hex::encode(bytes.as_ref())))
    }

    /// The secret itself (to print once, or write to the keys file).
    pub fn secret(&self) -> &str {
        &self.key
    }
}

/// Checks a device name.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{name:?} is not a key name: use 1 to 64 letters, digits, '.', '_' or '-'"
        ));
    }
    Ok(())
}

/// Reads a keys file's text: `name key` per line; blank lines and `#` comments are skipped.
pub fn parse(text: &str) -> Result<Vec<NamedKey>, String> {
    let mut keys: Vec<NamedKey> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(name), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("line {}: expected `name key`", i + 1));
        };
        let k = NamedKey::new(name, key).map_err(|e| format!("line {}: {e}", i + 1))?;
        if keys.iter().any(|o| o.name == k.name) {
            return Err(format!("line {}: the name {name:?} is used twice", i + 1));
        }
        keys.push(k);
        if keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
    }
    Ok(keys)
}

/// The keys file's text for `keys`.
pub fn render(keys: &[NamedKey]) -> Zeroizing<String> {
    let mut s = Zeroizing::new(String::from(
        "# lendmesh gateway keys: `name key` per line (lendmesh gateway key add|list|remove). Keep this file 0600.\n",
    ));
    for k in keys {
        s.push_str(&k.name);
        s.push(' ');
        s.push_str(k.secret());
        s.push('\n');
    }
    s
}

pub use crate::home::check_private;

/// Reads the keys file at `path` (none there: no keys), refusing it when others may read it or it is malformed.
pub fn load_file(path: &Path) -> anyhow::Result<Vec<NamedKey>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    check_private(path)?;
    let bytes = Zeroizing::new(crate::home::read_limited(path, MAX_KEYS_FILE_BYTES)?);
    let text = std::str::from_utf8(&bytes).map_err(|_| anyhow::anyhow!("{} is not UTF-8", path.display()))?;
    parse(text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Adds a fresh key for `name` to the keys file (0600, written atomically); returns it.
pub fn add(path: &Path, name: &str) -> anyhow::Result<NamedKey> {
    let mut keys = load_file(path)?;
    if keys.iter().any(|k| k.name == name) {
        anyhow::bail!(
            "{} already has a key named {name:?}; remove it first or pick another name",
            path.display()
        );
    }
    let key = NamedKey::generate(name).map_err(anyhow::Error::msg)?;
    keys.push(key.clone());
    if keys.len() > MAX_KEYS {
        anyhow::bail!("{} already holds {MAX_KEYS} keys", path.display());
    }
    crate::home::write_secret(path, render(&keys).as_bytes())?;
    Ok(key)
}

/// Removes the key named `name`; false if there was none.
pub fn remove(path: &Path, name: &str) -> anyhow::Result<bool> {
    let mut keys = load_file(path)?;
    let before = keys.len();
    keys.retain(|k| k.name != name);
    if keys.len() == before {
        return Ok(false);
    }
    crate::home::write_secret(path, render(&keys).as_bytes())?;
    Ok(true)
}

/// Where a request presents a key: `Authorization: Bearer <key>`, else `x-api-key`.
pub fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    bearer.or_else(|| {
        headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    })
}

#[derive(Debug)]
struct FileState {
    checked: Instant,
    stamp: Option<(SystemTime, u64)>,
    keys: Vec<NamedKey>,
}

/// The keys a running gateway accepts: the fixed ones and the keys file's, read again when the file changes.
#[derive(Debug)]
pub struct GatewayKeys {
    required: bool,
    fixed: Vec<NamedKey>,
    file: Option<PathBuf>,
    state: Mutex<FileState>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl GatewayKeys {
    /// Loads the keys; `required` asks for a key on every request. A bad keys file is an error here (at start).
    pub fn new(fixed: Vec<NamedKey>, file: Option<PathBuf>, required: bool) -> anyhow::Result<GatewayKeys> {
        let keys = match &file {
            Some(p) => load_file(p)?,
            None => Vec::new(),
        };
        Ok(GatewayKeys {
            required,
            fixed,
            state: Mutex::new(FileState {
                checked: Instant::now(),
                stamp: file.as_deref().and_then(stamp),
                keys,
            }),
            file,
        })
    }

    /// Whether requests must present a key.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Keys accepted now.
    pub fn count(&self) -> usize {
        self.fixed.len() + self.state.lock().map_or(0, |s| s.keys.len())
    }

    /// The name of the key `presented` matches, if any. Every key is compared, in constant time; the keys file is
    /// read again first when it changed (looked at once a second at most; a file that turned bad keeps the keys
    /// read before, with a warning).
    pub fn check(&self, presented: &str) -> Option<String> {
        let Ok(mut state) = self.state.lock() else {
            return None;
        };
        if let Some(path) = &self.file
            && state.checked.elapsed() >= RELOAD_EVERY
        {
            state.checked = Instant::now();
            let now = stamp(path);
            if now != state.stamp {
                match load_file(path) {
                    Ok(keys) => {
                        state.keys = keys;
                        state.stamp = now;
                    }
                    Err(e) => {
                        warn!(%e, "the gateway keys file changed and cannot be read; keeping the keys read before")
                    }
                }
            }
        }
        let mut found = None;
        for k in self.fixed.iter().chain(state.keys.iter()) {
            if bool::from(k.secret().as_bytes().ct_eq(presented.as_bytes())) && found.is_none() {
                found = Some(k.name.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_files_parse_render_and_refuse_what_is_wrong() {
        let a = NamedKey::generate("laptop").unwrap();
        assert!(a.secret().starts_with("lmk_") && a.secret().len() == 52);
        assert_eq!(
            format!("{a:?}"),
            "NamedKey(laptop)",
            "Debug never shows the secret"
        );
        let text = render(&[a.clone(), NamedKey::new("phone", "0123456789abcdef").unwrap()]);
        let back = parse(&text).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0], a);
        for (bad, why) in [
            ("laptop", "expected `name key`"),
            ("laptop k1 k2", "expected `name key`"),
            ("laptop short", "16 to 256"),
            ("lap/top 0123456789abcdef", "not a key name"),
            ("a 0123456789abcdef\na 0123456789abcdef", "used twice"),
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn the_file_is_private_and_read_again_when_it_changes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let laptop = add(&path, "laptop").unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(add(&path, "laptop").is_err(), "one key per name");
        let keys = GatewayKeys::new(
            vec![NamedKey::new("cli", "cli-key-0123456789").unwrap()],
            Some(path.clone()),
            true,
        )
        .unwrap();
        assert_eq!(keys.check(laptop.secret()).as_deref(), Some("laptop"));
        assert_eq!(keys.check("cli-key-0123456789").as_deref(), Some("cli"));
        assert_eq!(keys.check("lmk_wrong"), None);
        assert_eq!(keys.check(""), None);
        // Revoked: after the file changes, the key no longer opens the gateway.
        assert!(remove(&path, "laptop").unwrap());
        keys.state.lock().unwrap().checked = Instant::now().checked_sub(RELOAD_EVERY).unwrap();
        assert_eq!(keys.check(laptop.secret()), None);
        // Others may read it: refused, as ssh refuses a private key.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && e.contains("0644"), "{e}");
    }
}
