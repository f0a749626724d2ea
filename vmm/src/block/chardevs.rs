//! Character devices as QMP's `chardev-add` makes them: here, the Unix
//! sockets of vhost-user backends that others run (qemu-storage-daemon's
//! exports), which a `vhost-user-blk-pci` disk connects to. The core holds
//! only the path until a disk uses it; the table is bounded.

use crate::request::{ChardevAdd, QmpError};
use serde_json::{json, Value};
use std::path::PathBuf;

/// The most character devices a VM holds.
pub const MAX_CHARDEVS: usize = 32;

/// A client socket's character device.
pub struct Chardev {
    /// Its QMP id.
    pub id: String,
    /// The socket's path.
    pub path: PathBuf,
    /// How long to wait between reconnection attempts (0: never).
    pub reconnect_ms: u64,
    /// The disk that uses it.
    pub user: Option<String>,
}

/// The character devices, in creation order.
#[derive(Default)]
pub struct Chardevs {
    chardevs: Vec<Chardev>,
}

impl Chardevs {
    /// chardev-add.
    pub fn add(&mut self, add: ChardevAdd) -> Result<(), QmpError> {
        if self.chardevs.iter().any(|chardev| chardev.id == add.id) {
            return Err(QmpError::generic(format!(
                "attempt to add duplicate property '{}' to object (type 'container')",
                add.id
            )));
        }
        if self.chardevs.len() >= MAX_CHARDEVS {
            return Err(QmpError::generic(format!(
                "this machine holds {MAX_CHARDEVS} character devices at most"
            )));
        }
        self.chardevs.push(Chardev {
            id: add.id,
            path: add.path,
            reconnect_ms: add.reconnect_ms,
            user: None,
        });
        Ok(())
    }

    /// chardev-remove: not while a disk uses it.
    pub fn remove(&mut self, id: &str) -> Result<(), QmpError> {
        let at = self
            .chardevs
            .iter()
            .position(|chardev| chardev.id == id)
            .ok_or_else(|| QmpError::generic(format!("Chardev '{id}' not found")))?;
        if self.chardevs[at].user.is_some() {
            return Err(QmpError::generic(format!("Chardev '{id}' is busy")));
        }
        self.chardevs.remove(at);
        Ok(())
    }

    /// A disk takes chardev `id`: its socket's path and reconnection delay.
    pub fn attach(&mut self, id: &str, user: &str) -> Result<(PathBuf, u64), QmpError> {
        let chardev = self
            .chardevs
            .iter_mut()
            .find(|chardev| chardev.id == id)
            .ok_or_else(|| QmpError::generic(format!("Chardev '{id}' not found")))?;
        if let Some(other) = &chardev.user {
            return Err(QmpError::generic(format!(
                "Chardev '{id}' is busy: device '{other}' uses it"
            )));
        }
        chardev.user = Some(user.to_string());
        Ok((chardev.path.clone(), chardev.reconnect_ms))
    }

    /// The disk using chardev `id` went.
    pub fn detach(&mut self, id: &str) {
        if let Some(chardev) = self.chardevs.iter_mut().find(|chardev| chardev.id == id) {
            chardev.user = None;
        }
    }

    /// query-chardev, as QEMU answers it.
    pub fn query(&self) -> Value {
        Value::Array(
            self.chardevs
                .iter()
                .map(|chardev| {
                    json!({
                        "label": chardev.id,
                        "filename": format!("unix:{}", chardev.path.display()),
                        "frontend-open": chardev.user.is_some(),
                    })
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: &str) -> ChardevAdd {
        ChardevAdd {
            id: id.into(),
            path: "/run/vhost.sock".into(),
            reconnect_ms: 0,
        }
    }

    #[test]
    fn chardevs_are_unique_bounded_and_not_removed_while_used() {
        let mut chardevs = Chardevs::default();
        chardevs.add(add("c0")).unwrap();
        assert!(chardevs.add(add("c0")).is_err());
        assert_eq!(
            chardevs.attach("c0", "vd0").unwrap().0,
            PathBuf::from("/run/vhost.sock")
        );
        assert!(chardevs.attach("c0", "vd1").is_err());
        assert!(chardevs.remove("c0").unwrap_err().desc.contains("busy"));
        assert_eq!(chardevs.query()[0]["frontend-open"], true);
        chardevs.detach("c0");
        chardevs.remove("c0").unwrap();
        assert!(chardevs.attach("c0", "vd0").is_err());
        for n in 0..MAX_CHARDEVS {
            chardevs.add(add(&format!("c{n}"))).unwrap();
        }
        assert!(chardevs.add(add("one-more")).is_err());
    }
}
