//! The node's home directory: where it lives, and writing secret files safely.
//!
//! Default: `$LENDMESH_HOME`, else `$XDG_DATA_HOME/lendmesh`, else `~/.local/share/lendmesh` (on macOS
//! `~/Library/Application Support/lendmesh`). The directory is created 0700; secret files are written 0600 through a
//! temporary file, fsync and rename, so a crash leaves either the old or the new file, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Resolves the home directory from a flag, the environment, or the platform default.
pub fn resolve(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("LENDMESH_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p).join("lendmesh"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!("cannot find a home directory: set LENDMESH_HOME or pass --home DIR")
        })?;
    let base = PathBuf::from(home);
    Ok(if cfg!(target_os = "macos") {
        base.join("Library/Application Support/lendmesh")
    } else {
        base.join(".local/share/lendmesh")
    })
}

/// Creates the home directory (mode 0700) if needed.
pub fn ensure_dir(home: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(home)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Restricts a file to its owner (0600).
pub fn restrict_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The permission bits of `path` when anyone but its owner may read or write it (`None`: private, or not Unix).
pub fn others_may_access(path: &Path) -> std::io::Result<Option<u32>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Ok(Some(mode));
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(None)
}

/// Refuses a secret file that anyone but its owner may read or write (as ssh refuses a private key), naming the fix.
pub fn check_private(path: &Path) -> anyhow::Result<()> {
    let mode = others_may_access(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    if let Some(mode) = mode {
        anyhow::bail!(
            "{} holds secrets but its mode is {mode:04o}: others may read it. Run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// Writes a secret file atomically with mode 0600 (temp file in the same directory, fsync, rename, fsync dir).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    restrict_file(&tmp)?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads a file of at most `limit` bytes, refusing larger ones before reading them.
pub fn read_limited(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let len = f.metadata()?.len();
    if len > limit {
        anyhow::bail!("{} is {len} bytes, more than the {limit} allowed", path.display());
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        anyhow::bail!("{} grew beyond {limit} bytes while being read", path.display());
    }
    Ok(buf)
}

/// The file holding the running node's local admin token (mode 0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The file naming the running node's API address.
pub const API_ADDR_FILE: &str = "api.addr";

/// Writes a fresh local admin token (0600) and the API's address into the home; returns the token. Whoever can
/// read the home (the node's own user) can administer the running node through its API, as it could the stopped
/// node's store.
pub fn write_admin_access(home: &Path, api_addr: std::net::SocketAddr) -> std::io::Result<String> {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let token = hex::encode(bytes);
    write_secret(&home.join(ADMIN_TOKEN_FILE), token.as_bytes())?;
    write_secret(&home.join(API_ADDR_FILE), api_addr.to_string().as_bytes())?;
    Ok(token)
}

/// The running node's API address and admin token, as [`write_admin_access`] left them.
pub fn read_admin_access(home: &Path) -> anyhow::Result<(String, String)> {
    let addr = read_limited(&home.join(API_ADDR_FILE), 256)?;
    let token = read_limited(&home.join(ADMIN_TOKEN_FILE), 256)?;
    Ok((
        String::from_utf8_lossy(&addr).trim().to_string(),
        String::from_utf8_lossy(&token).trim().to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_0600_and_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("invite.txt");
        write_secret(&p, b"one").unwrap();
        write_secret(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left behind"
        );
        assert!(read_limited(&p, 2).is_err());
        assert_eq!(read_limited(&p, 3).unwrap(), b"two");
    }
}
