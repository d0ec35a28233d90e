//! Just enough of ELF64 (little-endian, x86-64) to put a dynamically linked
//! executable in an image without a base image: which shared libraries it
//! needs (`PT_INTERP`, `DT_NEEDED`), and a stripped copy. Stripping keeps
//! every loadable byte and drops what lies after the last segment — the
//! section headers, symbol tables and debug info, which only debuggers read —
//! so the kernel and the dynamic loader see exactly the same program.

use crate::PackageError;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// What the dynamic loader needs to run a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linkage {
    /// The program interpreter (`/lib64/ld-linux-x86-64.so.2`), for executables.
    pub interpreter: Option<String>,
    /// Sonames of the libraries it needs, in `DT_NEEDED` order.
    pub needed: Vec<String>,
}

struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

struct Elf<'a> {
    bytes: &'a [u8],
    segments: Vec<Segment>,
}

fn bad(what: &str, reason: impl Into<String>) -> PackageError {
    PackageError::Elf {
        file: what.to_owned(),
        reason: reason.into(),
    }
}

impl<'a> Elf<'a> {
    fn parse(what: &str, bytes: &'a [u8]) -> Result<Elf<'a>, PackageError> {
        if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
            return Err(bad(what, "not an ELF file"));
        }
        if bytes[4] != 2 || bytes[5] != 1 {
            return Err(bad(what, "not a 64-bit little-endian ELF file"));
        }
        let phoff = u64_at(bytes, 0x20).ok_or_else(|| bad(what, "truncated header"))?;
        let phentsize = u16_at(bytes, 0x36).ok_or_else(|| bad(what, "truncated header"))? as u64;
        let phnum = u16_at(bytes, 0x38).ok_or_else(|| bad(what, "truncated header"))? as u64;
        if phentsize < 56 {
            return Err(bad(what, format!("program header size {phentsize} < 56")));
        }
        let mut segments = Vec::with_capacity(phnum as usize);
        for i in 0..phnum {
            let at = phoff
                .checked_add(i * phentsize)
                .and_then(|a| usize::try_from(a).ok())
                .ok_or_else(|| bad(what, "program header offset overflows"))?;
            let field = |off: usize| {
                u64_at(bytes, at + off).ok_or_else(|| {
                    bad(
                        what,
                        format!("program header {i} at offset {at} is truncated"),
                    )
                })
            };
            let segment = Segment {
                kind: u32_at(bytes, at).ok_or_else(|| bad(what, "truncated program header"))?,
                offset: field(0x08)?,
                vaddr: field(0x10)?,
                filesz: field(0x20)?,
            };
            if segment
                .offset
                .checked_add(segment.filesz)
                .is_none_or(|end| end > bytes.len() as u64)
            {
                return Err(bad(
                    what,
                    format!(
                        "segment {i} (offset {}, size {}) lies past the end",
                        segment.offset, segment.filesz
                    ),
                ));
            }
            segments.push(segment);
        }
        Ok(Elf { bytes, segments })
    }

    fn content(&self, s: &Segment) -> &'a [u8] {
        &self.bytes[s.offset as usize..(s.offset + s.filesz) as usize]
    }

    /// The file offset of virtual address `vaddr`.
    fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.segments
            .iter()
            .filter(|s| s.kind == PT_LOAD)
            .find(|s| vaddr >= s.vaddr && vaddr < s.vaddr + s.filesz)
            .map(|s| s.offset + (vaddr - s.vaddr))
    }

    fn linkage(&self, what: &str) -> Result<Linkage, PackageError> {
        let interpreter = self
            .segments
            .iter()
            .find(|s| s.kind == PT_INTERP)
            .map(|s| {
                c_str(self.content(s), 0).ok_or_else(|| bad(what, "PT_INTERP is not a string"))
            })
            .transpose()?;
        let Some(dynamic) = self.segments.iter().find(|s| s.kind == PT_DYNAMIC) else {
            return Ok(Linkage {
                interpreter,
                needed: Vec::new(),
            });
        };
        let entries = self.content(dynamic);
        let mut strtab = None;
        let mut needed_offsets = Vec::new();
        for entry in entries.chunks_exact(16) {
            let tag = u64_at(entry, 0).unwrap_or(DT_NULL);
            let value = u64_at(entry, 8).unwrap_or(0);
            match tag {
                DT_NULL => break,
                DT_NEEDED => needed_offsets.push(value),
                DT_STRTAB => strtab = Some(value),
                _ => {}
            }
        }
        let mut needed = Vec::with_capacity(needed_offsets.len());
        if !needed_offsets.is_empty() {
            let strtab = strtab
                .and_then(|v| self.file_offset(v))
                .ok_or_else(|| bad(what, "DT_STRTAB is missing or outside every segment"))?;
            for off in needed_offsets {
                let at = usize::try_from(strtab + off)
                    .map_err(|_| bad(what, "DT_NEEDED offset overflows"))?;
                needed.push(
                    c_str(self.bytes, at)
                        .ok_or_else(|| bad(what, format!("DT_NEEDED at {at} is not a string")))?,
                );
            }
        }
        Ok(Linkage {
            interpreter,
            needed,
        })
    }
}

/// The libraries `bytes` (an ELF file named `what` in errors) needs.
pub fn linkage(what: &str, bytes: &[u8]) -> Result<Linkage, PackageError> {
    Elf::parse(what, bytes)?.linkage(what)
}

/// `bytes` without what follows its last segment: no section headers, no
/// symbols, no debug info. The ELF header's section fields are zeroed, which
/// the ELF specification allows for a file with no section header table.
pub fn strip(what: &str, bytes: &[u8]) -> Result<Vec<u8>, PackageError> {
    let elf = Elf::parse(what, bytes)?;
    let phdrs_end = u64_at(bytes, 0x20).unwrap_or(0)
        + u64::from(u16_at(bytes, 0x36).unwrap_or(0)) * u64::from(u16_at(bytes, 0x38).unwrap_or(0));
    let end = elf
        .segments
        .iter()
        .map(|s| s.offset + s.filesz)
        .chain([phdrs_end, 64])
        .max()
        .unwrap_or(64) as usize;
    let mut out = bytes[..end.min(bytes.len())].to_vec();
    // e_shoff (8 bytes at 0x28), e_shentsize/e_shnum/e_shstrndx (2 each at 0x3a..0x40).
    out[0x28..0x30].fill(0);
    out[0x3a..0x40].fill(0);
    Ok(out)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn c_str(b: &[u8], at: usize) -> Option<String> {
    let rest = b.get(at..)?;
    let len = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..len].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn this_exe() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn reads_the_interpreter_and_libc_of_this_test_binary() {
        let l = linkage("test", &this_exe()).unwrap();
        assert!(
            l.interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-linux")),
            "{l:?}"
        );
        assert!(l.needed.iter().any(|n| n.starts_with("libc.so")), "{l:?}");
    }

    #[test]
    fn stripping_keeps_the_linkage_and_drops_the_section_table() {
        let exe = this_exe();
        let stripped = strip("test", &exe).unwrap();
        assert!(
            stripped.len() < exe.len(),
            "{} !< {}",
            stripped.len(),
            exe.len()
        );
        assert_eq!(
            linkage("s", &stripped).unwrap(),
            linkage("e", &exe).unwrap()
        );
        assert_eq!(u16_at(&stripped, 0x3c), Some(0), "e_shnum");
    }

    #[test]
    fn stripped_binary_still_runs() {
        // A small real program: `true` from coreutils, stripped here, run.
        let exe = std::fs::read("/bin/true").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("true");
        std::fs::write(&path, strip("true", &exe).unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            std::process::Command::new(&path)
                .status()
                .unwrap()
                .success()
        );
    }

    #[test]
    fn malformed_files_are_errors_naming_the_problem() {
        assert!(
            linkage("x", b"hello")
                .unwrap_err()
                .to_string()
                .contains("not an ELF")
        );
        let mut exe = this_exe();
        // A program header count that runs past the end of the file.
        exe[0x38..0x3a].copy_from_slice(&u16::MAX.to_le_bytes());
        let near_end = (exe.len() - 100) as u64;
        exe[0x20..0x28].copy_from_slice(&near_end.to_le_bytes());
        let e = linkage("x", &exe).unwrap_err().to_string();
        assert!(e.contains("truncated") || e.contains("past the end"), "{e}");
    }
}
