//! Block nodes (`blockdev-add`, `blockdev-del`, `query-block`): each an
//! image the core opened once, by name, read-only or not. A block device
//! process gets a copy of the node's descriptor and never a path. The table
//! is bounded, and a node a device uses cannot be deleted.

use crate::request::{BlockdevAdd, QmpError};
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

/// The nodes a VM may hold.
pub const MAX_NODES: usize = 32;
/// The longest node name (QEMU's limit).
pub const MAX_NODE_NAME: usize = 31;
/// The one driver: a raw image in a file or a block device.
pub const DRIVER: &str = "file";
/// The smallest image: one sector.
pub const MIN_IMAGE_BYTES: u64 = 512;

/// A node.
#[derive(Debug)]
pub struct Node {
    /// Its name.
    pub name: String,
    /// The path it was opened from.
    pub filename: PathBuf,
    /// Whether it was opened read-only.
    pub read_only: bool,
    /// The image.
    pub image: File,
    /// Its size in bytes when opened.
    pub bytes: u64,
    /// The device using it, if any.
    pub user: Option<String>,
}

/// The VM's nodes.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: Vec<Node>,
}

/// A node name as QEMU allows it: a letter, then letters, digits, `-`, `.`
/// and `_`, at most [`MAX_NODE_NAME`] bytes.
pub fn valid_node_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_NODE_NAME
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// Opens `add`'s image: never blocking (a FIFO is refused, not waited on),
/// never making a terminal the core's, and only a regular file or a block
/// device of at least one sector.
fn open_image(add: &BlockdevAdd) -> Result<(File, u64), QmpError> {
    let path = add.filename.display();
    let image = std::fs::OpenOptions::new()
        .read(true)
        .write(!add.read_only)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&add.filename)
        .map_err(|error| QmpError::generic(format!("Could not open '{path}': {error}")))?;
    let metadata = image
        .metadata()
        .map_err(|error| QmpError::generic(format!("Could not open '{path}': {error}")))?;
    let kind = metadata.file_type();
    let bytes = if kind.is_file() {
        metadata.len()
    } else if kind.is_block_device() {
        use std::io::{Seek, SeekFrom};
        (&image)
            .seek(SeekFrom::End(0))
            .map_err(|error| QmpError::generic(format!("Could not size '{path}': {error}")))?
    } else {
        return Err(QmpError::generic(format!(
            "'{path}' is neither a regular file nor a block device"
        )));
    };
    if bytes < MIN_IMAGE_BYTES {
        return Err(QmpError::generic(format!(
            "'{path}' is {bytes} bytes, less than one sector"
        )));
    }
    Ok((image, bytes))
}

impl Nodes {
    /// blockdev-add: opens the image once.
    pub fn add(&mut self, add: BlockdevAdd) -> Result<(), QmpError> {
        if self.find(&add.node_name).is_some() {
            return Err(QmpError::generic(format!(
                "Duplicate nodes with node-name='{}'",
                add.node_name
            )));
        }
        if self.nodes.len() >= MAX_NODES {
            return Err(QmpError::generic(format!(
                "this VM holds {MAX_NODES} block nodes already"
            )));
        }
        let (image, bytes) = open_image(&add)?;
        log::info!(
            "block node {} opened {}{} ({bytes} bytes)",
            add.node_name,
            add.filename.display(),
            if add.read_only { " read-only" } else { "" }
        );
        self.nodes.push(Node {
            name: add.node_name,
            filename: add.filename,
            read_only: add.read_only,
            image,
            bytes,
            user: None,
        });
        Ok(())
    }

    /// blockdev-del of a node no device uses.
    pub fn remove(&mut self, name: &str) -> Result<(), QmpError> {
        let node = self.find(name).ok_or_else(|| {
            QmpError::generic(format!("Failed to find node with node-name='{name}'"))
        })?;
        if let Some(user) = &node.user {
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: device '{user}' uses it"
            )));
        }
        self.nodes.retain(|node| node.name != name);
        log::info!("block node {name} closed");
        Ok(())
    }

    /// The node called `name`.
    pub fn find(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// Marks `name` used by `device`, if it exists and is free.
    pub fn attach(&mut self, name: &str, device: &str) -> Result<&Node, QmpError> {
        let node = self
            .nodes
            .iter_mut()
            .find(|node| node.name == name)
            .ok_or_else(|| {
                QmpError::generic(format!("Property 'drive': no block node '{name}'"))
            })?;
        if let Some(user) = &node.user {
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: device '{user}' uses it"
            )));
        }
        node.user = Some(device.to_string());
        Ok(node)
    }

    /// Frees `name` (its device went).
    pub fn detach(&mut self, name: &str) {
        if let Some(node) = self.nodes.iter_mut().find(|node| node.name == name) {
            node.user = None;
        }
    }

    /// query-named-block-nodes: each node's `inserted` of query-block.
    pub fn query_named(&self) -> Value {
        match self.query() {
            Value::Array(blocks) => blocks
                .into_iter()
                .map(|mut block| block["inserted"].take())
                .collect(),
            other => other,
        }
    }

    /// query-block: every node, in QEMU's `BlockInfo` shape (a node no
    /// device uses has an empty `qdev`).
    pub fn query(&self) -> Value {
        let nodes = self
            .nodes
            .iter()
            .map(|node| {
                let qdev = node
                    .user
                    .as_ref()
                    .map(|device| format!("/machine/peripheral/{device}/virtio-backend"))
                    .unwrap_or_default();
                json!({
                    "device": "",
                    "qdev": qdev,
                    "locked": false,
                    "removable": false,
                    "type": "unknown",
                    "inserted": {
                        "node-name": node.name,
                        "file": node.filename.display().to_string(),
                        "ro": node.read_only,
                        "drv": DRIVER,
                        "encrypted": false,
                        "detect_zeroes": "off",
                        "bps": 0, "bps_rd": 0, "bps_wr": 0,
                        "iops": 0, "iops_rd": 0, "iops_wr": 0,
                        "image": {
                            "filename": node.filename.display().to_string(),
                            "format": DRIVER,
                            "virtual-size": node.bytes,
                        },
                    },
                })
            })
            .collect();
        Value::Array(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// An image in the temporary directory, removed when dropped.
    struct TempImage(std::path::PathBuf);

    impl Drop for TempImage {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn image(bytes: usize) -> TempImage {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "papervisor-node-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&vec![0; bytes])
            .unwrap();
        TempImage(path)
    }

    fn add(name: &str, path: &std::path::Path, read_only: bool) -> BlockdevAdd {
        BlockdevAdd {
            node_name: name.into(),
            filename: path.into(),
            read_only,
        }
    }

    #[test]
    fn node_names_follow_qemus_rule() {
        for good in ["d", "disk0", "a.b-c_d", &"x".repeat(31)] {
            assert!(valid_node_name(good), "{good}");
        }
        for bad in ["", "0disk", "-d", "a b", "d/e", &"x".repeat(32), "dïsk"] {
            assert!(!valid_node_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_node_opens_once_lists_and_goes_unless_used() {
        let file = image(64 << 10);
        let mut nodes = Nodes::default();
        nodes.add(add("disk0", &file.0, false)).unwrap();
        let error = nodes.add(add("disk0", &file.0, true)).unwrap_err();
        assert_eq!(error.desc, "Duplicate nodes with node-name='disk0'");
        let listed = nodes.query();
        assert_eq!(listed[0]["inserted"]["node-name"], "disk0");
        assert_eq!(listed[0]["inserted"]["image"]["virtual-size"], 64 << 10);
        assert_eq!(listed[0]["inserted"]["ro"], false);
        nodes.attach("disk0", "vd0").unwrap();
        assert!(nodes
            .attach("disk0", "vd1")
            .unwrap_err()
            .desc
            .contains("busy"));
        assert!(nodes.remove("disk0").unwrap_err().desc.contains("'vd0'"));
        assert_eq!(
            nodes.query()[0]["qdev"],
            "/machine/peripheral/vd0/virtio-backend"
        );
        nodes.detach("disk0");
        nodes.remove("disk0").unwrap();
        assert_eq!(nodes.query(), json!([]));
        assert!(nodes
            .remove("disk0")
            .unwrap_err()
            .desc
            .contains("Failed to find"));
    }

    #[test]
    fn images_that_cannot_serve_are_refused_with_the_reason() {
        let mut nodes = Nodes::default();
        let missing = std::path::Path::new("/nonexistent/image.raw");
        let error = nodes.add(add("d", missing, false)).unwrap_err();
        assert!(
            error
                .desc
                .starts_with("Could not open '/nonexistent/image.raw'"),
            "{}",
            error.desc
        );
        let tiny = image(100);
        assert!(nodes
            .add(add("d", &tiny.0, false))
            .unwrap_err()
            .desc
            .contains("less than one sector"));
        let dir = std::env::temp_dir();
        assert!(nodes.add(add("d", &dir, true)).is_err());
        let fifo = std::env::temp_dir().join(format!("papervisor-fifo-{}", std::process::id()));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let error = nodes.add(add("d", &fifo, false)).unwrap_err();
        std::fs::remove_file(&fifo).unwrap();
        assert!(
            error.desc.contains("neither a regular file"),
            "{}",
            error.desc
        );
        assert_eq!(nodes.query(), json!([]));
    }

    #[test]
    fn the_table_is_bounded() {
        let file = image(512);
        let mut nodes = Nodes::default();
        for n in 0..MAX_NODES {
            nodes.add(add(&format!("d{n}"), &file.0, true)).unwrap();
        }
        assert!(nodes
            .add(add("one-more", &file.0, true))
            .unwrap_err()
            .desc
            .contains("32 block nodes"));
    }
}
