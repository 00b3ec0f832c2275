//! A cache in a directory: a USB disk, NFS, a network volume. Every object is written to
//! `tmp/` first, made durable, then renamed into place.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::Backend;
use crate::closure::{io, ClosureError};

/// The most a metadata file of a cache holds (a path's entry, the cache's description).
const METADATA_LIMIT: u64 = 16 << 20;

pub struct DirBackend {
    root: PathBuf,
}

impl DirBackend {
    pub fn new(root: PathBuf) -> DirBackend {
        DirBackend { root }
    }

    fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

impl Backend for DirBackend {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn prepare(&self) -> Result<(), ClosureError> {
        for dir in ["paths", "archives", "channels", "tmp"] {
            let at = self.root.join(dir);
            fs::create_dir_all(&at).map_err(io(&at))?;
        }
        Ok(())
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ClosureError> {
        let path = self.root.join(key);
        // Metadata: small files. A FIFO or a device planted in the cache is refused, not waited on.
        match crate::files::read_regular(&path, METADATA_LIMIT) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn write(&self, key: &str, bytes: Vec<u8>) -> Result<(), ClosureError> {
        let to = self.root.join(key);
        let tmp = self.tmp();
        let mut temp = crate::files::temp_in(&tmp).map_err(io(&tmp))?;
        temp.write_all(&bytes).map_err(io(&to))?;
        temp.as_file().sync_all().map_err(io(&to))?;
        temp.persist(&to).map_err(|e| io(&to)(e.error))?;
        Ok(())
    }

    fn size(&self, key: &str) -> Result<Option<u64>, ClosureError> {
        let path = self.root.join(key);
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn list(&self, dir: &str) -> Result<Vec<(String, SystemTime)>, ClosureError> {
        let at = self.root.join(dir);
        let entries = match fs::read_dir(&at) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&at)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&at))?;
            let written = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io(entry.path()))?;
            names.push((entry.file_name().to_string_lossy().into_owned(), written));
        }
        Ok(names)
    }

    fn delete(&self, key: &str) -> Result<(), ClosureError> {
        let path = self.root.join(key);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&path)(e)),
            _ => Ok(()),
        }
    }

    fn upload(
        &self,
        key: &str,
        _work: &Path,
        produce: &mut dyn FnMut(&mut dyn Write) -> Result<(), ClosureError>,
    ) -> Result<u64, ClosureError> {
        let to = self.root.join(key);
        let tmp = self.tmp();
        let mut temp = crate::files::temp_in(&tmp).map_err(io(&tmp))?;
        {
            let mut out = std::io::BufWriter::new(temp.as_file_mut());
            produce(&mut out)?;
            out.flush().map_err(io(&to))?;
        }
        temp.as_file().sync_all().map_err(io(&to))?;
        let size = temp.as_file().metadata().map_err(io(&to))?.len();
        temp.persist(&to).map_err(|e| io(&to)(e.error))?;
        Ok(size)
    }

    fn open(&self, key: &str) -> Result<Option<Box<dyn Read + Send + '_>>, ClosureError> {
        let path = self.root.join(key);
        match crate::files::open_regular(&path) {
            Ok(file) => Ok(Some(Box::new(std::io::BufReader::new(file)))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }
}
