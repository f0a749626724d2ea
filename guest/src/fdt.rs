//! A minimal reader of the flattened device tree the VMM hands us.
//! It trusts nothing: every offset is checked against the blob's size.

const FDT_MAGIC: u32 = 0xd00d_feed;
const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

#[derive(Clone, Copy)]
pub struct Fdt {
    blob: &'static [u8],
    structs: usize,
    structs_end: usize,
    strings: usize,
}

/// A node: the offset of its FDT_BEGIN_NODE token.
#[derive(Clone, Copy)]
pub struct Node(usize);

enum Token<'a> {
    Begin(&'a [u8]),
    End,
    Prop(&'a [u8], &'a [u8]),
    Finish,
}

pub fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset + 4)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn align4(x: usize) -> usize {
    (x + 3) & !3
}

fn cstr(bytes: &[u8], offset: usize) -> Option<&[u8]> {
    let tail = bytes.get(offset..)?;
    let len = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..len])
}

impl Fdt {
    /// # Safety
    /// `addr` must point to readable memory that stays valid and unchanged.
    pub unsafe fn from_addr(addr: u64) -> Option<Fdt> {
        // SAFETY: the caller vouches for the header; the size we then trust is
        // at most 16 MiB, below the region the VMM reserved for the tree.
        let header = unsafe { core::slice::from_raw_parts(addr as *const u8, 40) };
        if be32(header, 0)? != FDT_MAGIC {
            return None;
        }
        let total = be32(header, 4)? as usize;
        if total > 16 << 20 {
            return None;
        }
        // SAFETY: as above, with the size the header declares.
        let blob = unsafe { core::slice::from_raw_parts(addr as *const u8, total) };
        let structs = be32(blob, 8)? as usize;
        let strings = be32(blob, 12)? as usize;
        let structs_size = be32(blob, 36)? as usize;
        let structs_end = structs.checked_add(structs_size)?;
        if structs_end > total || strings > total {
            return None;
        }
        Some(Fdt {
            blob,
            structs,
            structs_end,
            strings,
        })
    }

    fn token(&self, offset: usize) -> Option<(Token<'static>, usize)> {
        let mut off = offset;
        loop {
            if off + 4 > self.structs_end {
                return None;
            }
            let tag = be32(self.blob, off)?;
            off += 4;
            match tag {
                FDT_NOP => continue,
                FDT_BEGIN_NODE => {
                    let name = cstr(&self.blob[..self.structs_end], off)?;
                    return Some((Token::Begin(name), align4(off + name.len() + 1)));
                }
                FDT_END_NODE => return Some((Token::End, off)),
                FDT_PROP => {
                    let len = be32(self.blob, off)? as usize;
                    let name_off = be32(self.blob, off + 4)? as usize;
                    let value = self.blob.get(off + 8..off.checked_add(8 + len)?)?;
                    let name = cstr(self.blob, self.strings.checked_add(name_off)?)?;
                    return Some((Token::Prop(name, value), align4(off + 8 + len)));
                }
                FDT_END => return Some((Token::Finish, off)),
                _ => return None,
            }
        }
    }

    pub fn root(&self) -> Node {
        Node(self.structs)
    }

    pub fn name(&self, node: Node) -> &'static [u8] {
        match self.token(node.0) {
            Some((Token::Begin(name), _)) => name,
            _ => b"",
        }
    }

    /// The first token after the node's own name.
    fn body(&self, node: Node) -> Option<usize> {
        match self.token(node.0)? {
            (Token::Begin(_), next) => Some(next),
            _ => None,
        }
    }

    pub fn prop(&self, node: Node, wanted: &str) -> Option<&'static [u8]> {
        let mut off = self.body(node)?;
        loop {
            match self.token(off)? {
                (Token::Prop(name, value), next) => {
                    if name == wanted.as_bytes() {
                        return Some(value);
                    }
                    off = next;
                }
                _ => return None,
            }
        }
    }

    pub fn prop_u32(&self, node: Node, name: &str) -> Option<u32> {
        be32(self.prop(node, name)?, 0)
    }

    /// Calls `f` for every direct child of `node`.
    pub fn for_each_child(&self, node: Node, mut f: impl FnMut(Node)) {
        let Some(mut off) = self.body(node) else {
            return;
        };
        let mut depth = 0usize;
        while let Some((token, next)) = self.token(off) {
            match token {
                Token::Begin(_) => {
                    if depth == 0 {
                        f(Node(off));
                    }
                    depth += 1;
                }
                Token::End => {
                    if depth == 0 {
                        return;
                    }
                    depth -= 1;
                }
                Token::Prop(..) => {}
                Token::Finish => return,
            }
            off = next;
        }
    }

    /// The child of `node` whose name, up to any `@unit`, is `name`.
    pub fn child(&self, node: Node, name: &str) -> Option<Node> {
        let mut found = None;
        self.for_each_child(node, |child| {
            let full = self.name(child);
            let base = full.split(|&b| b == b'@').next().unwrap_or(full);
            if found.is_none() && (base == name.as_bytes() || full == name.as_bytes()) {
                found = Some(child);
            }
        });
        found
    }

    pub fn path(&self, path: &str) -> Option<Node> {
        let mut node = self.root();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            node = self.child(node, part)?;
        }
        Some(node)
    }
}
