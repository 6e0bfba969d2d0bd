//! The binary is statically linked: nothing to install beside it on an air-gapped host.

use crate::harness::BIN;
use std::process::Command;

#[test]
fn binary_is_statically_linked() {
    let out = Command::new("ldd")
        .arg(BIN)
        .output()
        .expect("ldd is part of every Debian install (libc-bin)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd says the binary is dynamic:\n{text}"
    );
    let bytes = std::fs::read(BIN).unwrap();
    assert!(
        !has_interpreter(&bytes),
        "the ELF file asks for a dynamic loader (PT_INTERP)"
    );
    eprintln!("binary {BIN}: {} bytes", bytes.len());
}

/// Whether an ELF64 little-endian file has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}
