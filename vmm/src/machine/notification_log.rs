//! The hotplug controller's notifications are numbered, and a successor
//! repeats what its predecessor may have sent: the core acts on each
//! number once.

use ipc_proto::link::hotplug_notify::Notification;

/// The notifications handled, by number, and those refused.
#[derive(Debug, Default)]
pub(super) struct NotificationLog {
    /// The highest number handled.
    last: u64,
    /// Notifications the core refused to act on (they name a device it
    /// does not know, or did not ask back): x-query-device-processes
    /// shows the count.
    rejected: u64,
}

impl NotificationLog {
    /// Notification `id` was handled already: a successor repeats what its
    /// predecessor may have sent, and a repeat must not emit a second
    /// DEVICE_DELETED.
    pub(super) fn is_repeat(&self, id: u64) -> bool {
        id <= self.last
    }

    /// Records how notification `id` went. A rejected one is not recorded
    /// as handled: a lying controller cannot make the core skip, as
    /// repeats, the real notifications that follow.
    pub(super) fn settle(&mut self, id: u64, outcome: &Result<(), String>) {
        match outcome {
            Ok(()) => self.last = self.last.max(id),
            Err(_) => self.rejected += 1,
        }
    }

    /// While a reset waits for the controller: `notification` (number
    /// `id`) says the reset is complete, and is recorded as handled.
    pub(super) fn completes_reset(&mut self, id: u64, notification: &Notification) -> bool {
        if *notification != Notification::ResetComplete || self.is_repeat(id) {
            return false;
        }
        self.settle(id, &Ok(()));
        true
    }

    /// How many notifications were refused.
    pub(super) fn rejected(&self) -> u64 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::link::hotplug_notify::Released;

    #[test]
    fn a_notification_is_handled_once_however_often_it_is_repeated() {
        let mut log = NotificationLog::default();
        assert!(!log.is_repeat(1));
        log.settle(1, &Ok(()));
        assert!(log.is_repeat(1), "a successor's repeat of 1 is dropped");
        assert!(!log.is_repeat(2));
        log.settle(3, &Ok(()));
        assert!(log.is_repeat(2) && log.is_repeat(3));
        // A late settle of a lower number never lowers the mark.
        log.settle(2, &Ok(()));
        assert!(!log.is_repeat(4));
        assert_eq!(log.rejected(), 0);
    }

    #[test]
    fn a_rejected_notification_is_counted_and_does_not_mask_the_real_ones() {
        let mut log = NotificationLog::default();
        log.settle(1, &Ok(()));
        // A lying controller sends number 1000 naming an unknown device.
        log.settle(1000, &Err("an unknown device".into()));
        assert_eq!(log.rejected(), 1);
        assert!(
            !log.is_repeat(2),
            "the real notification 2 is still acted on"
        );
        assert!(!log.is_repeat(1000));
    }

    #[test]
    fn only_a_new_reset_completion_ends_the_wait_of_a_reset() {
        let released = Notification::Released(Released {
            device: "/machine/peripheral/c1".into(),
        });
        let mut log = NotificationLog::default();
        assert!(!log.completes_reset(1, &released));
        log.settle(1, &Ok(()));
        assert!(
            !log.completes_reset(1, &Notification::ResetComplete),
            "a repeat"
        );
        assert!(log.completes_reset(2, &Notification::ResetComplete));
        assert!(log.is_repeat(2));
        assert!(!log.completes_reset(2, &Notification::ResetComplete));
    }
}
