//! The IO every format shares: atomic writes, checksums, positional
//! reads and the pipelined output file.

pub(crate) mod checksum;
pub(crate) mod pread;
pub(crate) mod stream;

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: to a temporary name in the same
/// directory, fsynced, then renamed over the final name, so a crash never
/// leaves a partial file under the final name.
///
/// # Errors
///
/// Any IO error, after removing the temporary file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
