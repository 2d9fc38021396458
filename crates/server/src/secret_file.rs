//! Files that hold secrets (the admin token, the master key): written
//! readable by the owner only, atomically.

use std::io::Write;
use std::path::Path;

use shellwego_core::Error;

/// Write `token` to `path` readable by the owner only, atomically.
pub(crate) fn write_secret_file(path: &Path, token: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    // A fresh file every time, so that its mode is ours even if an old
    // temp file was left behind.
    let _ = std::fs::remove_file(&tmp);
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let res = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|e| Error::Internal(format!("cannot write {}: {e}", path.display())))
}
