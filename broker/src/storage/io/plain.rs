//! The plain backend: positional reads and writes and fdatasync on tokio's blocking pool.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io::Error::other(format!("blocking I/O task failed: {e}")))?
}

pub async fn write_at(file: &Arc<File>, offset: u64, data: Bytes) -> io::Result<()> {
    let file = file.clone();
    blocking(move || file.write_all_at(&data, offset)).await
}

pub async fn read_at(file: &Arc<File>, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let file = file.clone();
    blocking(move || {
        let mut buf = vec![0u8; len];
        let mut filled = 0;
        while filled < len {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        Ok(buf)
    })
    .await
}

pub async fn sync_all(files: &[Arc<File>]) -> io::Result<()> {
    let files = files.to_vec();
    blocking(move || files.iter().try_for_each(|f| f.sync_data())).await
}
