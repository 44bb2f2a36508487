//! A look at a plugin file's ELF headers before the system's loader maps it.
//!
//! The loader trusts the headers: it maps each segment at the file offsets they give, and a
//! file cut short (an interrupted copy or download) makes it touch memory past the end of the
//! file, which kills the process with SIGBUS instead of returning an error. So singa first
//! checks that the file is a 64-bit little-endian ELF file whose program and section header
//! tables and loadable segments all lie inside it. (Damage inside the segments, such as a
//! corrupted relocation, is beyond what a header check can find.)

use std::io::Read;
use std::path::Path;

/// The size of an ELF64 file header.
const HEADER: usize = 64;
/// `PT_LOAD`: a segment the loader maps.
const PT_LOAD: u32 = 1;

fn u16_at(b: &[u8], at: usize) -> u64 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u64
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Whether `start .. start + count·size` lies within `len` bytes.
fn within(start: u64, count: u64, size: u64, len: u64) -> bool {
    count
        .checked_mul(size)
        .and_then(|n| n.checked_add(start))
        .is_some_and(|end| end <= len)
}

/// Checks the headers of the library at `path`; `Err` says, for the user, what is wrong.
pub(super) fn check(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot be read ({e})"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("cannot be read ({e})"))?
        .len();
    let mut header = [0u8; HEADER];
    if len < HEADER as u64 || file.read_exact(&mut header).is_err() {
        return Err(format!(
            "not a loadable shared library ({len} bytes, too short for an ELF header)"
        ));
    }
    if header[..4] != *b"\x7fELF" {
        return Err("not a loadable shared library (no ELF header)".into());
    }
    if header[4] != 2 || header[5] != 1 {
        return Err(
            "not a loadable shared library (not 64-bit little-endian ELF, as this singa is)".into(),
        );
    }
    let (phoff, phsize, phnum) = (
        u64_at(&header, 0x20),
        u16_at(&header, 0x36),
        u16_at(&header, 0x38),
    );
    let (shoff, shsize, shnum) = (
        u64_at(&header, 0x28),
        u16_at(&header, 0x3A),
        u16_at(&header, 0x3C),
    );
    let cut = |what: &str| {
        format!("not a loadable shared library (cut short: {what} lies past the end of its {len} bytes)")
    };
    if phsize < 56 || !within(phoff, phnum, phsize, len) {
        return Err(cut("its program header table"));
    }
    if shoff != 0 && !within(shoff, shnum, shsize, len) {
        return Err(cut("its section header table"));
    }
    let mut table = vec![0u8; (phnum * phsize) as usize];
    use std::io::Seek;
    file.seek(std::io::SeekFrom::Start(phoff))
        .and_then(|_| file.read_exact(&mut table))
        .map_err(|e| format!("cannot be read ({e})"))?;
    for entry in table.chunks_exact(phsize as usize) {
        let (kind, offset, size) = (u32_at(entry, 0), u64_at(entry, 8), u64_at(entry, 32));
        if kind == PT_LOAD && !within(offset, 1, size, len) {
            return Err(cut("a loadable segment"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_no_whole_library_are_named() {
        let dir = std::env::temp_dir().join(format!("singa-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let short = check(&write("short.so", b"\x7fELF")).unwrap_err();
        assert!(short.contains("too short for an ELF header"), "{short}");
        let text = check(&write("text.so", &[b'x'; 100])).unwrap_err();
        assert!(text.contains("no ELF header"), "{text}");
        // The running test binary is a whole ELF file; its first 4 KiB are not.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(check(&write("whole.so", &me)), Ok(()));
        let cut = check(&write("cut.so", &me[..4096])).unwrap_err();
        assert!(cut.contains("cut short"), "{cut}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
