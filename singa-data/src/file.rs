//! Opening the files a user names: a directory, a device or a pipe given where a file is
//! expected gets a message that says so (not "No such device", and never an endless read of
//! `/dev/zero`).

use singa_core::{Error, Result};
use std::fs::File;
use std::path::Path;

/// Opens `path` for reading, refusing anything but a regular file (symbolic links followed).
pub fn open_regular(path: &Path) -> Result<File> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let kind = file.metadata().map_err(|e| Error::io(path, e))?.file_type();
    if kind.is_file() {
        return Ok(file);
    }
    let what = if kind.is_dir() {
        "is a directory"
    } else {
        "is not a regular file (a device, a pipe or a socket)"
    };
    Err(Error::io(path, format!("{what}; expected a file")))
}

/// Reads the whole regular file at `path` (see [`open_regular`]).
pub fn read_regular(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_read() {
        let dir = std::env::temp_dir();
        let e = read_regular(&dir).unwrap_err().to_string();
        assert!(e.contains("is a directory; expected a file"), "{e}");
        if Path::new("/dev/zero").exists() {
            let e = read_regular(Path::new("/dev/zero"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("/dev/zero: is not a regular file"), "{e}");
        }
    }
}
