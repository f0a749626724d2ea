//! Block nodes (`blockdev-add`, `blockdev-del`, `query-block`): each an
//! image the core opened once, by name, read-only or not, or a `raw`
//! format node layered over one (QEMU's stack for a raw image, which
//! libvirt builds: the device names the `raw` node). A block device
//! process gets a copy of the node's descriptor and never a path. The table
//! is bounded, and a node a device uses, or one a node is layered over,
//! cannot be deleted.

use crate::request::{BlockdevAdd, QmpError};
use serde_json::{json, Value};
use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;

/// The nodes a VM may hold.
pub const MAX_NODES: usize = 32;
/// The longest node name (QEMU's limit).
pub const MAX_NODE_NAME: usize = 31;
/// The protocol driver: a raw image in a file or a block device.
pub const DRIVER: &str = "file";
/// The format driver over it: raw, the image as it is.
pub const RAW_DRIVER: &str = "raw";
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
    /// A `raw` node: the file node under it.
    pub over: Option<String>,
    /// A file node: the `raw` node layered over it, if any.
    pub layered: Option<String>,
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
/// With `auto-read-only`, an image that cannot be written is opened
/// read-only; the answer says which.
fn open_image(add: &BlockdevAdd) -> Result<(File, u64, bool), QmpError> {
    let path = add.filename.display();
    let open = |read_only: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
            .open(&add.filename)
    };
    let (image, read_only) = match open(add.read_only) {
        Ok(image) => (image, add.read_only),
        Err(error)
            if add.auto_read_only
                && matches!(
                    error.raw_os_error(),
                    Some(nix::libc::EACCES | nix::libc::EROFS | nix::libc::EPERM)
                ) =>
        {
            let image = open(true)
                .map_err(|error| QmpError::generic(format!("Could not open '{path}': {error}")))?;
            (image, true)
        }
        Err(error) => {
            return Err(QmpError::generic(format!(
                "Could not open '{path}': {error}"
            )))
        }
    };
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
    Ok((image, bytes, read_only))
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
        if let Some(file) = &add.over {
            return self.add_raw(&add.node_name, file, add.read_only);
        }
        let (image, bytes, read_only) = open_image(&add)?;
        log::info!(
            "block node {} opened {}{} ({bytes} bytes)",
            add.node_name,
            add.filename.display(),
            if read_only { " read-only" } else { "" }
        );
        self.nodes.push(Node {
            name: add.node_name,
            filename: add.filename,
            read_only,
            image,
            bytes,
            user: None,
            over: None,
            layered: None,
        });
        Ok(())
    }

    /// A `raw` node `name` over file node `file`: the same image, by a
    /// descriptor of its own.
    fn add_raw(&mut self, name: &str, file: &str, read_only: bool) -> Result<(), QmpError> {
        let under = self
            .nodes
            .iter_mut()
            .find(|node| node.name == file && node.over.is_none())
            .ok_or_else(|| QmpError::generic(format!("Parameter 'file': no file node '{file}'")))?;
        if let Some(user) = under.user.as_ref().or(under.layered.as_ref()) {
            return Err(QmpError::generic(format!(
                "Node '{file}' is busy: '{user}' uses it"
            )));
        }
        if under.read_only && !read_only {
            return Err(QmpError::generic(format!(
                "Block node '{file}' is read-only: a node over it must be too"
            )));
        }
        let image = under
            .image
            .try_clone()
            .map_err(|error| QmpError::generic(format!("cannot share node '{file}': {error}")))?;
        under.layered = Some(name.to_string());
        let node = Node {
            name: name.to_string(),
            filename: under.filename.clone(),
            read_only,
            image,
            bytes: under.bytes,
            user: None,
            over: Some(file.to_string()),
            layered: None,
        };
        log::info!("block node {name}: raw over {file}");
        self.nodes.push(node);
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
        if let Some(over) = &node.layered {
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: node '{over}' is layered over it"
            )));
        }
        if let Some(file) = node.over.clone() {
            if let Some(under) = self.nodes.iter_mut().find(|node| node.name == file) {
                under.layered = None;
            }
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
        if let Some(over) = &node.layered {
            return Err(QmpError::generic(format!(
                "Node '{name}' is busy: node '{over}' is layered over it (a device names the top node)"
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
                        "drv": if node.over.is_some() { RAW_DRIVER } else { DRIVER },
                        "encrypted": false,
                        "detect_zeroes": "off",
                        "bps": 0, "bps_rd": 0, "bps_wr": 0,
                        "iops": 0, "iops_rd": 0, "iops_wr": 0,
                        "image": {
                            "filename": node.filename.display().to_string(),
                            "format": if node.over.is_some() { RAW_DRIVER } else { DRIVER },
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
            over: None,
            auto_read_only: false,
        }
    }

    fn raw(name: &str, file: &str, read_only: bool) -> BlockdevAdd {
        BlockdevAdd {
            node_name: name.into(),
            filename: Default::default(),
            read_only,
            over: Some(file.into()),
            auto_read_only: false,
        }
    }

    /// libvirt's stack: a raw node over a file node; the device names the
    /// raw one, and they go top first.
    #[test]
    fn a_raw_node_layers_over_a_file_node_and_goes_first() {
        let file = image(64 << 10);
        let mut nodes = Nodes::default();
        assert!(nodes
            .add(raw("fmt", "storage", false))
            .unwrap_err()
            .desc
            .contains("no file node"));
        nodes.add(add("storage", &file.0, false)).unwrap();
        nodes.add(raw("fmt", "storage", false)).unwrap();
        let busy = |error: QmpError| error.desc;
        assert!(busy(nodes.add(raw("fmt2", "storage", false)).unwrap_err()).contains("busy"));
        assert!(busy(nodes.add(raw("fmt3", "fmt", false)).unwrap_err()).contains("no file node"));
        assert!(busy(nodes.attach("storage", "vd0").unwrap_err()).contains("layered over it"));
        assert_eq!(nodes.attach("fmt", "vd0").unwrap().bytes, 64 << 10);
        assert_eq!(nodes.query()[1]["inserted"]["drv"], "raw");
        assert!(busy(nodes.remove("storage").unwrap_err()).contains("'fmt' is layered"));
        assert!(busy(nodes.remove("fmt").unwrap_err()).contains("'vd0'"));
        nodes.detach("fmt");
        nodes.remove("fmt").unwrap();
        nodes.remove("storage").unwrap();
        assert_eq!(nodes.query(), json!([]));

        // A read-only file node takes only a read-only node over it.
        nodes.add(add("ro", &file.0, true)).unwrap();
        assert!(busy(nodes.add(raw("rw", "ro", false)).unwrap_err()).contains("read-only"));
        nodes.add(raw("rw", "ro", true)).unwrap();
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
