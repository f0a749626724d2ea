//! The handshake's message: the first each side sends on a new channel.
//! The channel reports a mismatch; the protocol layer exchanges them.

use crate::{Link, PROTOCOL_VERSION};
use serde::{Deserialize, Serialize};

/// The first message each side sends on a new channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's [`PROTOCOL_VERSION`].
    pub version: u32,
    /// Which link this channel is.
    pub link: Link,
}

impl Hello {
    /// Ours, for `link`.
    pub const fn ours(link: Link) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            link,
        }
    }
}
