//! A checkpoint in a local JSON file, replaced atomically (write, fsync, rename, fsync dir).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{document, Checkpoint, CheckpointError};

#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: PathBuf) -> Self {
        FileStore { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> CheckpointError {
        CheckpointError::Io {
            path: self.path.display().to_string(),
            source,
        }
    }

    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let c = document::parse(&text).map_err(|reason| CheckpointError::Corrupt {
            path: self.path.display().to_string(),
            reason,
        })?;
        Ok(Some(c))
    }

    pub fn save(&self, c: &Checkpoint) -> Result<(), CheckpointError> {
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        let tmp = self.path.with_extension("tmp");
        let body = document::to_text(c).into_bytes();
        {
            let mut f = std::fs::File::create(&tmp).map_err(|e| self.io(e))?;
            f.write_all(&body).map_err(|e| self.io(e))?;
            f.sync_all().map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| self.io(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::BinlogPosition;

    #[test]
    fn round_trip_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("cp.json"));
        assert_eq!(s.load().unwrap(), None);
        let p = BinlogPosition {
            event: 2,
            row: 7,
            gtid: Some("0-1-9".into()),
            ..BinlogPosition::new("b.000001", 42)
        };
        s.save(&Checkpoint::new(p.clone())).unwrap();
        assert_eq!(s.load().unwrap(), Some(Checkpoint::new(p)));
        std::fs::write(s.path(), "{").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("is not a valid checkpoint"), "{e}");
    }
}
