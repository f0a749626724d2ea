//! Names longer than vm-fdt writes (the devicetree specification's 31
//! characters), which Linux and QEMU use all the same: the tree is written
//! with placeholders that these replace in the finished blob. vm-fdt lays
//! the blob out as header, reserve map, structure block, strings block.

/// A blob these cannot rename in: the name that was to be replaced.
#[derive(Debug)]
pub struct Malformed(pub String);

const FDT_BEGIN_NODE: u32 = 1;

fn header_field(blob: &[u8], offset: usize) -> Option<usize> {
    let bytes = blob.get(offset..offset + 4)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?) as usize)
}

fn set_header_field(blob: &mut [u8], offset: usize, value: usize) {
    blob[offset..offset + 4].copy_from_slice(&(value as u32).to_be_bytes());
}

/// Replaces the name of the node called `from` (which must be unique) with
/// `to`, growing the structure block and fixing the header.
pub(super) fn rename_node(blob: &[u8], from: &str, to: &str) -> Result<Vec<u8>, Malformed> {
    let malformed = || Malformed(from.to_string());
    let structs = header_field(blob, OFF_DT_STRUCT).ok_or_else(malformed)?;
    let strings = header_field(blob, OFF_DT_STRINGS).ok_or_else(malformed)?;
    let struct_size = header_field(blob, SIZE_DT_STRUCT).ok_or_else(malformed)?;
    let mut needle = FDT_BEGIN_NODE.to_be_bytes().to_vec();
    needle.extend_from_slice(from.as_bytes());
    needle.push(0);
    let block = blob
        .get(structs..structs + struct_size)
        .ok_or_else(malformed)?;
    let at = structs
        + block
            .windows(needle.len())
            .position(|window| window == needle.as_slice())
            .ok_or_else(malformed)?;
    let padded = |name: &str| (name.len() + 1).div_ceil(4) * 4;
    let old_end = at + 4 + padded(from);
    let mut out = Vec::with_capacity(blob.len() + padded(to));
    out.extend_from_slice(&blob[..at + 4]);
    out.extend_from_slice(to.as_bytes());
    out.resize(at + 4 + padded(to), 0);
    out.extend_from_slice(&blob[old_end..]);
    let growth = padded(to) - padded(from);
    set_header_field(&mut out, OFF_DT_STRINGS, strings + growth);
    set_header_field(&mut out, SIZE_DT_STRUCT, struct_size + growth);
    let total = out.len();
    set_header_field(&mut out, TOTAL_SIZE, total);
    Ok(out)
}

const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;
const TOTAL_SIZE: usize = 4;
const OFF_DT_STRUCT: usize = 8;
const OFF_DT_STRINGS: usize = 12;
const SIZE_DT_STRINGS: usize = 32;
const SIZE_DT_STRUCT: usize = 36;

fn cell(blob: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(blob.get(at..at + 4)?.try_into().ok()?))
}

/// Replaces the property name `from` with `to` wherever it is used: `to`
/// is added at the end of the strings block (the blob's last) and every
/// property named `from` points at it.
pub(super) fn rename_property(blob: &[u8], from: &str, to: &str) -> Result<Vec<u8>, Malformed> {
    let malformed = || Malformed(from.to_string());
    let structs = header_field(blob, OFF_DT_STRUCT).ok_or_else(malformed)?;
    let struct_size = header_field(blob, SIZE_DT_STRUCT).ok_or_else(malformed)?;
    let strings = header_field(blob, OFF_DT_STRINGS).ok_or_else(malformed)?;
    let strings_size = header_field(blob, SIZE_DT_STRINGS).ok_or_else(malformed)?;
    if strings + strings_size != blob.len() {
        return Err(malformed());
    }
    let table = &blob[strings..];
    let mut wanted = from.as_bytes().to_vec();
    wanted.push(0);
    let old = (0..table.len())
        .find(|&at| (at == 0 || table[at - 1] == 0) && table[at..].starts_with(&wanted))
        .ok_or_else(malformed)?;
    let new = strings_size;
    let mut out = blob.to_vec();
    let mut at = structs;
    let mut renamed = 0;
    while at < structs + struct_size {
        match cell(blob, at).ok_or_else(malformed)? {
            FDT_BEGIN_NODE => {
                let name = blob.get(at + 4..).ok_or_else(malformed)?;
                let length = name.iter().position(|&b| b == 0).ok_or_else(malformed)?;
                at += 4 + (length + 1).div_ceil(4) * 4;
            }
            FDT_END_NODE | FDT_NOP => at += 4,
            FDT_PROP => {
                let length = cell(blob, at + 4).ok_or_else(malformed)? as usize;
                if cell(blob, at + 8).ok_or_else(malformed)? as usize == old {
                    out[at + 8..at + 12].copy_from_slice(&(new as u32).to_be_bytes());
                    renamed += 1;
                }
                at += 12 + length.div_ceil(4) * 4;
            }
            FDT_END => break,
            _ => return Err(malformed()),
        }
    }
    if renamed == 0 {
        return Err(malformed());
    }
    out.extend_from_slice(to.as_bytes());
    out.push(0);
    set_header_field(&mut out, SIZE_DT_STRINGS, strings_size + to.len() + 1);
    let total = out.len();
    set_header_field(&mut out, TOTAL_SIZE, total);
    Ok(out)
}
