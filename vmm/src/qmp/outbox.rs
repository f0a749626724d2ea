//! What waits to be written to one QMP client, bounded by message count and
//! by bytes: a client that does not read can make the core hold at most
//! [`ALL`] (and one message larger than that) for it.
//!
//! A client's own replies can wait: its next request is read only once its
//! replies are within [`REPLY_SHARE`], so a client that pipelines requests
//! is served at the pace it reads, and holds up nobody else. Events cannot
//! wait: they have the rest of [`ALL`], so that a client whose replies fill
//! their share still gets them, and a client with no room left for one is
//! not reading and is disconnected.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// How much may wait for a client: messages, and bytes (a message being
/// written counts until it is written). One message larger than that is
/// taken when nothing else waits: a large reply is not refused for its
/// size alone.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Messages.
    pub messages: usize,
    /// Bytes.
    pub bytes: usize,
}

/// What may wait for one client, events included.
pub const ALL: Bounds = Bounds {
    messages: 1024,
    bytes: 2 * 1024 * 1024,
};
/// What a client's replies may fill before its next request waits.
pub const REPLY_SHARE: Bounds = Bounds {
    messages: ALL.messages / 2,
    bytes: ALL.bytes / 2,
};

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The client does not read what waits for it.
    Full,
    /// The client is gone (or its writer gave up on it).
    Closed,
}

#[derive(Default)]
struct Queue {
    messages: VecDeque<Arc<str>>,
    /// Of the queued messages and the one being written.
    bytes: usize,
    closed: bool,
}

impl Queue {
    fn has_room_for(&self, text: &str, within: Bounds) -> bool {
        self.bytes == 0
            || (self.messages.len() < within.messages && self.bytes + text.len() <= within.bytes)
    }
}

/// One client's queue, filled by the threads that answer or notify it and
/// drained by its writer thread.
#[derive(Default)]
pub struct Outbox {
    queue: Mutex<Queue>,
    /// Signalled when a message is queued, written, or the outbox closed.
    changed: Condvar,
}

impl Outbox {
    /// An empty outbox, shared by a client's threads.
    pub fn new() -> Arc<Outbox> {
        Arc::new(Outbox::default())
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        common::lock(&self.queue)
    }

    fn push(&self, mut queue: MutexGuard<'_, Queue>, text: Arc<str>) {
        queue.bytes += text.len();
        queue.messages.push_back(text);
        drop(queue);
        self.changed.notify_all();
    }

    /// Queues `text` if there is room within [`ALL`], never waiting: for
    /// events, and for whatever is sent while the server's client list is
    /// locked.
    pub fn offer(&self, text: Arc<str>) -> Result<(), Refused> {
        let queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed);
        }
        if !queue.has_room_for(&text, ALL) {
            return Err(Refused::Full);
        }
        self.push(queue, text);
        Ok(())
    }

    /// Queues `text`, waiting for room within [`REPLY_SHARE`]: for a
    /// client's replies, which are made by the thread that reads its
    /// requests. The wait ends at the latest when the writer gives up on
    /// the client.
    pub fn send(&self, text: Arc<str>) -> Result<(), Refused> {
        let mut queue = self.queue();
        loop {
            if queue.closed {
                return Err(Refused::Closed);
            }
            if queue.has_room_for(&text, REPLY_SHARE) {
                self.push(queue, text);
                return Ok(());
            }
            queue = self
                .changed
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The next message to write, waiting for one; `None` once closed. Its
    /// bytes count until [`Outbox::written`] is called.
    pub fn next(&self) -> Option<Arc<str>> {
        let mut queue = self.queue();
        loop {
            if queue.closed {
                return None;
            }
            if let Some(text) = queue.messages.pop_front() {
                return Some(text);
            }
            queue = self
                .changed
                .wait(queue)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// A message taken by [`Outbox::next`] was written: its room is free.
    pub fn written(&self, text: &str) {
        let mut queue = self.queue();
        queue.bytes = queue.bytes.saturating_sub(text.len());
        drop(queue);
        self.changed.notify_all();
    }

    /// Nothing more is queued or written; whoever waits is told.
    pub fn close(&self) {
        self.queue().closed = true;
        self.changed.notify_all();
    }

    /// Bytes waiting (and being written).
    pub fn queued_bytes(&self) -> usize {
        self.queue().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn message(bytes: usize) -> Arc<str> {
        "x".repeat(bytes).into()
    }

    /// A reply sent from a thread of its own, found waiting for room.
    fn waiting_reply(outbox: &Arc<Outbox>) -> std::thread::JoinHandle<Result<(), Refused>> {
        let sender = Arc::clone(outbox);
        let reply = std::thread::spawn(move || sender.send("reply".into()));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!reply.is_finished(), "the reply did not wait for room");
        reply
    }

    #[test]
    fn bytes_are_bounded_but_one_large_message_is_taken() {
        let outbox = Outbox::new();
        assert_eq!(outbox.offer(message(ALL.bytes * 2)), Ok(()));
        assert_eq!(outbox.offer(message(1)), Err(Refused::Full));
        let large = outbox.next().unwrap();
        // Being written, it still counts.
        assert_eq!(outbox.offer(message(1)), Err(Refused::Full));
        outbox.written(&large);
        assert_eq!(outbox.queued_bytes(), 0);
        assert_eq!(outbox.offer(message(ALL.bytes / 2)), Ok(()));
        assert_eq!(outbox.offer(message(ALL.bytes / 2)), Ok(()));
        assert_eq!(outbox.offer(message(1)), Err(Refused::Full));
        assert_eq!(outbox.queued_bytes(), ALL.bytes);
    }

    #[test]
    fn messages_are_bounded_by_count_too() {
        let outbox = Outbox::new();
        for _ in 0..ALL.messages {
            assert_eq!(outbox.offer(message(1)), Ok(()));
        }
        assert_eq!(outbox.offer(message(1)), Err(Refused::Full));
    }

    #[test]
    fn events_still_find_room_when_replies_fill_their_share() {
        let outbox = Outbox::new();
        outbox.send(message(REPLY_SHARE.bytes)).unwrap();
        for _ in 0..REPLY_SHARE.messages - 1 {
            outbox.send(message(0)).unwrap();
        }
        assert_eq!(outbox.offer(message(200)), Ok(()));
        let reply = waiting_reply(&outbox);
        outbox.close();
        assert_eq!(reply.join().unwrap(), Err(Refused::Closed));
    }

    #[test]
    fn a_reply_waits_for_room_and_comes_after_what_was_queued() {
        let outbox = Outbox::new();
        outbox.offer(message(REPLY_SHARE.bytes)).unwrap();
        let reply = waiting_reply(&outbox);
        let first = outbox.next().unwrap();
        assert_eq!(first.len(), REPLY_SHARE.bytes);
        outbox.written(&first);
        assert_eq!(reply.join().unwrap(), Ok(()));
        assert_eq!(&*outbox.next().unwrap(), "reply");
    }

    #[test]
    fn closing_ends_the_writer_and_a_waiting_sender() {
        let outbox = Outbox::new();
        outbox.offer(message(ALL.bytes)).unwrap();
        let reply = waiting_reply(&outbox);
        outbox.close();
        assert_eq!(reply.join().unwrap(), Err(Refused::Closed));
        assert_eq!(outbox.next(), None);
        assert_eq!(outbox.offer(message(1)), Err(Refused::Closed));
    }
}
