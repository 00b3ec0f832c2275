//! Files comfix writes for the user (locks, specs, exports, the store's metadata): written
//! atomically, with the modes the user's umask gives — as any other program's files — not the
//! 0600 of a temporary file. Secrets (keys) are written 0600 by their own code.

use std::fs::Permissions;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A temporary file in `dir` that becomes a file others may read as the umask allows (0666 less
/// the umask) when persisted by rename.
pub fn temp_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let file = tempfile::Builder::new().prefix(".tmp").tempfile_in(dir)?;
    file.as_file()
        .set_permissions(Permissions::from_mode(0o666 & !umask()))?;
    Ok(file)
}

/// The process's umask: read from `/proc/self/status` (Linux ≥ 4.7), which changes nothing;
/// elsewhere set and set back at once.
pub fn umask() -> u32 {
    let from_proc = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
    from_proc.unwrap_or_else(|| {
        // SAFETY: umask(2) cannot fail; the old mask is set back at once.
        unsafe {
            let old = libc::umask(0o022);
            libc::umask(old);
            old as u32
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_temp_file_has_the_umask_s_mode() {
        let dir = tempfile::tempdir().unwrap();
        let temp = temp_in(dir.path()).unwrap();
        let path = dir.path().join("lock.json");
        temp.persist(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o666 & !umask());
        assert_ne!(mode, 0o600);
    }
}
