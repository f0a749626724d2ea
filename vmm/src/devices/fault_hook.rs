//! The core's fault points: a fault armed (x-inject-fault with a core
//! point) at the core's end of a link fires on a request's way out or on
//! its reply's way in. The request path calls this hook unconditionally;
//! which hook it is — one that can be armed, or one that never fires — is
//! decided once, here, by the `fault-injection` feature.

use ipc_proto::channel::ChannelError;
use ipc_proto::control::{
    ArmedFault, FaultAction, FaultPoint, FaultRecord, Request, FAULT_DELAY_MS,
};
use ipc_proto::ProcessKind;
use std::time::Duration;

/// The hook of this build.
#[cfg(feature = "fault-injection")]
pub type CoreFaults = Armable;
/// The hook of this build.
#[cfg(not(feature = "fault-injection"))]
pub type CoreFaults = Inert;

/// What a request does on its way out.
pub enum BeforeSend {
    /// It is sent; a fault may wait for its reply.
    Send {
        /// The action to take on the reply.
        at_reply: Option<FaultAction>,
    },
    /// The link is closed instead (the request never goes).
    CloseLink,
}

/// The fault points of one link's core end.
pub trait FaultHook: Default + Send + Sync {
    /// Arms `fault`, replacing any armed before.
    fn arm(&self, fault: ArmedFault);

    /// The fault armed, fired or not (kept, spent, until cleared).
    fn armed(&self) -> Option<FaultRecord>;

    /// Disarms and forgets the fault armed.
    fn clear(&self);

    /// What `request` to the `kind` meets on its way out.
    fn before_send<R: std::fmt::Debug>(
        &self,
        kind: ProcessKind,
        request: &Request<R>,
    ) -> BeforeSend;

    /// The reply as the caller sees it, after the action armed for it.
    fn at_reply<T>(
        &self,
        action: Option<FaultAction>,
        result: Result<T, ChannelError>,
    ) -> Result<T, ChannelError>;
}

/// A hook that never fires: the build without fault injection.
#[derive(Default)]
pub struct Inert;

impl FaultHook for Inert {
    fn arm(&self, _: ArmedFault) {}

    fn armed(&self) -> Option<FaultRecord> {
        None
    }

    fn clear(&self) {}

    fn before_send<R: std::fmt::Debug>(&self, _: ProcessKind, _: &Request<R>) -> BeforeSend {
        BeforeSend::Send { at_reply: None }
    }

    fn at_reply<T>(
        &self,
        _: Option<FaultAction>,
        result: Result<T, ChannelError>,
    ) -> Result<T, ChannelError> {
        result
    }
}

/// A hook that holds one armed fault, which fires once.
#[derive(Default)]
pub struct Armable {
    armed: std::sync::Mutex<Option<FaultRecord>>,
}

impl Armable {
    /// The action of the fault armed at `point`, if it fires for `request`
    /// (it is disarmed then).
    fn fires<R: std::fmt::Debug>(
        &self,
        kind: ProcessKind,
        point: FaultPoint,
        request: &Request<R>,
    ) -> Option<FaultAction> {
        let Request::Link(request) = request else {
            return None;
        };
        let mut armed = common::lock(&self.armed);
        let record = armed.as_mut()?;
        let name = ipc_proto::control::request_name(request);
        if record.fired > 0 || !record.fault.fires(point, &name) {
            return None;
        }
        record.fired += 1;
        log::warn!(
            "fault {:?} fires at {point:?} for {name} to the {}",
            record.fault.action,
            kind.name()
        );
        Some(record.fault.action)
    }
}

impl FaultHook for Armable {
    fn arm(&self, fault: ArmedFault) {
        *common::lock(&self.armed) = Some(FaultRecord { fault, fired: 0 });
    }

    fn armed(&self) -> Option<FaultRecord> {
        common::lock(&self.armed).clone()
    }

    fn clear(&self) {
        common::lock(&self.armed).take();
    }

    fn before_send<R: std::fmt::Debug>(
        &self,
        kind: ProcessKind,
        request: &Request<R>,
    ) -> BeforeSend {
        match self.fires(kind, FaultPoint::CoreSending, request) {
            Some(FaultAction::CloseLink) => BeforeSend::CloseLink,
            Some(FaultAction::Delay) => {
                std::thread::sleep(Duration::from_millis(FAULT_DELAY_MS));
                BeforeSend::Send { at_reply: None }
            }
            Some(action) => BeforeSend::Send {
                at_reply: Some(action),
            },
            None => BeforeSend::Send {
                at_reply: self.fires(kind, FaultPoint::CoreReceived, request),
            },
        }
    }

    fn at_reply<T>(
        &self,
        action: Option<FaultAction>,
        result: Result<T, ChannelError>,
    ) -> Result<T, ChannelError> {
        match (result, action) {
            (Ok(reply), Some(FaultAction::Delay)) => {
                std::thread::sleep(Duration::from_millis(FAULT_DELAY_MS));
                Ok(reply)
            }
            (Ok(_), Some(FaultAction::CloseLink)) => Err(ChannelError::HungUp),
            // The answer never seen, or seen as garbage.
            (Ok(_), Some(action)) => Err(ChannelError::Invalid(format!(
                "its reply was {action:?} (fault injection)"
            ))),
            (result, _) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::link::core_eventlog;

    fn armed(point: FaultPoint, action: FaultAction, request: Option<&str>) -> Armable {
        let hook = Armable::default();
        hook.arm(ArmedFault {
            point,
            action,
            request: request.map(str::to_string),
        });
        hook
    }

    const KIND: ProcessKind = ProcessKind::EventLog;

    fn list() -> Request<core_eventlog::Request> {
        Request::Link(core_eventlog::Request::List)
    }

    #[test]
    fn an_armed_fault_fires_once_for_the_request_it_names() {
        let hook = armed(
            FaultPoint::CoreSending,
            FaultAction::CloseLink,
            Some("Reset"),
        );
        assert!(matches!(
            hook.before_send(KIND, &list()),
            BeforeSend::Send { at_reply: None }
        ));
        let reset = Request::Link(core_eventlog::Request::Reset);
        assert!(matches!(
            hook.before_send(KIND, &reset),
            BeforeSend::CloseLink
        ));
        assert!(matches!(
            hook.before_send(KIND, &reset),
            BeforeSend::Send { at_reply: None }
        ));
        // Spent, it stays listed, fired once, until cleared.
        assert_eq!(hook.armed().map(|record| record.fired), Some(1));
        hook.clear();
        assert_eq!(hook.armed(), None);
    }

    #[test]
    fn a_fault_at_the_reply_makes_the_answer_unseen() {
        let hook = armed(FaultPoint::CoreReceived, FaultAction::CorruptReply, None);
        let BeforeSend::Send { at_reply } = hook.before_send(KIND, &list()) else {
            panic!("the request must go");
        };
        assert!(at_reply.is_some());
        assert!(matches!(
            hook.at_reply(at_reply, Ok(())),
            Err(ChannelError::Invalid(_))
        ));
        assert!(hook.at_reply(None, Ok(())).is_ok());
    }

    #[test]
    fn the_inert_hook_never_fires() {
        let hook = Inert;
        hook.arm(ArmedFault {
            point: FaultPoint::CoreSending,
            action: FaultAction::CloseLink,
            request: None,
        });
        assert_eq!(hook.armed(), None);
        assert!(matches!(
            hook.before_send(KIND, &list()),
            BeforeSend::Send { at_reply: None }
        ));
    }
}
