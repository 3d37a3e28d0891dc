//! Writing outputs so that a reader never sees a half-written file or folder: each
//! file goes to a temporary name and is renamed into place, and each slide's folder
//! is built under a staging name and renamed whole when complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

/// A slide's output folder under construction: `OUT/.staging/<name>-<pid>`, renamed to
/// `OUT/<name>` by [`Staging::commit`]. Dropped without commit, it is removed.
pub struct Staging {
    dir: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl Staging {
    pub fn new(out: &Path, name: &str) -> Result<Self> {
        let root = out.join(".staging");
        let dir = root.join(format!("{name}-{}", std::process::id()));
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            dir,
            target: out.join(name),
            committed: false,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Moves the finished folder into place, replacing an older one if present.
    pub fn commit(mut self) -> Result<PathBuf> {
        if self.target.exists() {
            let old = self.dir.with_extension("old");
            fs::rename(&self.target, &old).map_err(|e| Error::io(&self.target, e))?;
            fs::rename(&self.dir, &self.target).map_err(|e| Error::io(&self.target, e))?;
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            fs::rename(&self.dir, &self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        self.committed = true;
        if let Some(root) = self.dir.parent() {
            // Only succeeds when no other slide is being staged.
            let _ = fs::remove_dir(root);
        }
        Ok(self.target.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.dir);
            if let Some(root) = self.dir.parent() {
                let _ = fs::remove_dir(root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_invisible_until_commit() {
        let out = tempfile::tempdir().unwrap();
        let st = Staging::new(out.path(), "s1").unwrap();
        write_atomic(&st.dir().join("a.txt"), b"hi").unwrap();
        assert!(!out.path().join("s1").exists());
        let final_dir = st.commit().unwrap();
        assert_eq!(fs::read(final_dir.join("a.txt")).unwrap(), b"hi");
        assert!(!out.path().join(".staging").exists());

        let st = Staging::new(out.path(), "s2").unwrap();
        drop(st);
        assert!(!out.path().join("s2").exists());
        assert!(!out.path().join(".staging").exists());
    }
}
