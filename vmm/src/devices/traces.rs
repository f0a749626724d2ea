//! The device processes' traces, taken into the core's: each process keeps
//! what happened inside it (DRC transitions, events queued and fetched) in
//! a bounded ring until the core takes it, before x-query-trace answers
//! and once a second while the trace is on.

use super::supervisor::State;
use super::DeviceProcesses;
use ipc_proto::control::{ControlReply, ControlRequest, MAX_TRACE_RECORDS, TRACE_RING_RECORDS};
use ipc_proto::ProcessKind;

/// Replies that empty a full ring.
const TAKES_PER_RING: usize = TRACE_RING_RECORDS.div_ceil(MAX_TRACE_RECORDS);

impl DeviceProcesses {
    /// Takes every running process's trace records into the core's trace
    /// (nothing while the trace is off).
    pub fn collect_trace(&self) {
        if !crate::trace::enabled() {
            return;
        }
        for kind in ProcessKind::ALL {
            if self.state(kind) != Some(State::Running) {
                continue;
            }
            // One more than a full ring needs: what arrived meanwhile waits.
            for _ in 0..=TAKES_PER_RING {
                match self.proxy(kind).control(ControlRequest::TakeTrace, &[]) {
                    Ok(Some(ControlReply::Trace {
                        records,
                        dropped,
                        more,
                    })) => {
                        crate::trace::adopt(kind.name(), records, dropped);
                        if !more {
                            break;
                        }
                    }
                    Ok(other) => {
                        self.cut_off(kind, &format!("{other:?} to a trace request"));
                        break;
                    }
                    Err(error) => {
                        log::debug!("cannot take the {}'s trace: {error}", kind.name());
                        break;
                    }
                }
            }
        }
    }
}
