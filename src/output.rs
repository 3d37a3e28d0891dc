//! Writing outputs so that a reader never sees a half-written file or folder: each
//! file goes to a temporary name and is renamed into place, and each slide's folder
//! is built under a staging name and renamed whole when complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Opens (creating) `path` and takes an exclusive `flock` on it, held until the file is
/// dropped or the process ends however it ends; `None` when another process holds it.
pub fn try_flock(path: &Path) -> Result<Option<File>> {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(fs::TryLockError::WouldBlock) => Ok(None),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(path, e)),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A buffered file that names its path in every error.
pub struct OutFile {
    path: PathBuf,
    inner: BufWriter<File>,
}

impl OutFile {
    pub fn create(path: &Path) -> Result<Self> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            inner: BufWriter::with_capacity(1 << 20, f),
        })
    }

    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.inner
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        &mut self.inner
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn finish(self) -> Result<()> {
        let path = self.path;
        let f = self
            .inner
            .into_inner()
            .map_err(|e| Error::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&path, e))
    }
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// A slide's output folder under construction: `STAGING/<name>`, renamed to
/// `OUT/<name>` by [`Staging::commit`]. Dropped without commit, it is removed. The
/// caller holds the slide's lock, so whatever a killed worker left at `STAGING/<name>`
/// is stale and is cleared first.
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    replaced: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn new(staging: &Path, out: &Path, name: &str) -> Result<Self> {
        let dir = staging.join(name);
        let replaced = staging.join(".replaced").join(name);
        for stale in [&dir, &replaced] {
            if stale.exists() {
                fs::remove_dir_all(stale).map_err(|e| Error::io(stale, e))?;
            }
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            dir,
            target: out.join(name),
            replaced,
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the finished folder into place, replacing an older one if present.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = &self.replaced;
            if let Some(parent) = old.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            fs::rename(&self.target, old).map_err(|e| Error::io(&self.target, e))?;
            fs::rename(&self.dir, &self.target).map_err(|e| Error::io(&self.target, e))?;
            fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        } else {
            fs::rename(&self.dir, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_invisible_until_commit() {
        let out = tempfile::tempdir().unwrap();
        let staging = out.path().join(".histomap/staging");
        let st = Staging::new(&staging, out.path(), "s1").unwrap();
        write_atomic(&st.dir().join("a.txt"), b"hi").unwrap();
        assert!(!out.path().join("s1").exists());
        let final_dir = st.commit().unwrap();
        assert_eq!(fs::read(final_dir.join("a.txt")).unwrap(), b"hi");

        // A second run replaces the folder whole.
        let st = Staging::new(&staging, out.path(), "s1").unwrap();
        write_atomic(&st.dir().join("b.txt"), b"new").unwrap();
        st.commit().unwrap();
        assert!(!out.path().join("s1/a.txt").exists());
        assert_eq!(fs::read(out.path().join("s1/b.txt")).unwrap(), b"new");

        let st = Staging::new(&staging, out.path(), "s2").unwrap();
        drop(st);
        assert!(!out.path().join("s2").exists());
        assert_eq!(fs::read_dir(&staging).unwrap().count(), 1, "only .replaced");
    }

    #[test]
    fn staging_clears_what_a_killed_worker_left() {
        let out = tempfile::tempdir().unwrap();
        let staging = out.path().join("staging");
        fs::create_dir_all(staging.join("s")).unwrap();
        fs::write(staging.join("s/partial.png"), b"half").unwrap();
        let st = Staging::new(&staging, out.path(), "s").unwrap();
        assert_eq!(fs::read_dir(st.dir()).unwrap().count(), 0);
    }
}
