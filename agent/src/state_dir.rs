//! The agent's state directory, where the file checkpoints and the spool live. It is checked at
//! start: an agent that cannot keep its place would send every file again after each restart.
//! One agent owns it at a time: two would each send every line, and race on the checkpoints.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Checks `dir` (`check`) and locks it for this agent until the returned file is dropped (or the
/// process dies: the kernel lets go of the lock).
pub fn claim(dir: &Path) -> anyhow::Result<File> {
    check(dir)?;
    let path = dir.join(".lock");
    let lock = File::create(&path).map_err(|e| {
        anyhow::anyhow!(
            "agent state dir {}: cannot create its lock: {e}",
            path.display()
        )
    })?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "agent state dir {}: in use by another agent; give each agent its own \
             ([agent] state_dir, --state-dir)",
            dir.display()
        )
    })?;
    Ok(lock)
}

/// Creates `dir` if needed and proves the agent can write state there as it will (a file
/// written, synced and renamed into place).
fn check(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "agent state dir {}: is not a directory; the file checkpoints and the spool need \
             one ([agent] state_dir, --state-dir)",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            let probe = dir.join(".writable");
            write_atomically(&probe, b"")?;
            std::fs::remove_file(&probe)
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "agent state dir {}: cannot write there ({e}); the file checkpoints and the \
                 spool need it ([agent] state_dir, --state-dir)",
                dir.display()
            )
        })
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new whole: written to a
/// temporary file, synced, renamed over, and the directory synced. An error names the file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let named =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", tmp.display()));
    let mut file = std::fs::File::create(&tmp).map_err(named)?;
    file.write_all(bytes).map_err(named)?;
    file.sync_all().map_err(named)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dir_the_agent_cannot_write_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        check(&tmp.path().join("state")).unwrap();
        assert!(tmp.path().join("state").is_dir());
        assert!(!tmp.path().join("state/.writable").exists());
        // Under a regular file: no one can make it, root included.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let refused = check(&file.join("state")).unwrap_err().to_string();
        assert!(
            refused.contains(&file.join("state").display().to_string()),
            "{refused}"
        );
        assert!(refused.contains("state_dir"), "{refused}");
        let refused = check(&file).unwrap_err().to_string();
        assert!(refused.contains("is not a directory"), "{refused}");
    }

    #[test]
    fn one_agent_at_a_time_holds_the_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let first = claim(tmp.path()).unwrap();
        let refused = claim(tmp.path()).unwrap_err().to_string();
        assert!(refused.contains("in use by another agent"), "{refused}");
        drop(first);
        claim(tmp.path()).unwrap();
    }
}
