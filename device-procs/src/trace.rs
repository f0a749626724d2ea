//! A device process's trace: what happens inside it that the core cannot
//! see (a DRC changing state, an event queued for the guest or fetched by
//! it, a request to a peer on a guest's call's behalf), one record per
//! point, kept without rate limit in a bounded ring (the oldest go first,
//! and are counted) until the core takes them (`TakeTrace`) into its own
//! trace. Only while the core traces (`--trace on`): off, a point is one
//! test of an `Option`.

use ipc_proto::control::{
    cut_text, ControlReply, TraceRecord, MAX_TRACE_FIELDS, MAX_TRACE_NAME, MAX_TRACE_RECORDS,
    MAX_TRACE_VALUE, TRACE_RING_RECORDS as RING_RECORDS,
};
use std::collections::VecDeque;

/// The ring of one device (a process, or a thread of the core in-process).
#[derive(Debug, Default)]
pub struct TraceRing {
    records: VecDeque<TraceRecord>,
    dropped: u64,
}

impl TraceRing {
    /// Records `point` with `fields`; a value longer than a record may
    /// carry is cut (at a character boundary), extra fields are left out.
    pub fn record(&mut self, point: &'static str, fields: &[(&'static str, String)]) {
        debug_assert!(point.len() <= MAX_TRACE_NAME && fields.len() <= MAX_TRACE_FIELDS);
        let us = common::unix_micros();
        let fields = fields
            .iter()
            .take(MAX_TRACE_FIELDS)
            .map(|(name, value)| {
                (
                    name.to_string(),
                    cut_text(value, MAX_TRACE_VALUE).to_string(),
                )
            })
            .collect();
        if self.records.len() == RING_RECORDS {
            self.records.pop_front();
            self.dropped += 1;
        }
        self.records.push_back(TraceRecord {
            us,
            point: point.to_string(),
            fields,
        });
    }

    /// The answer of a device that does not trace (`--trace off`).
    pub fn nothing() -> ControlReply {
        ControlReply::Trace {
            records: Vec::new(),
            dropped: 0,
            more: false,
        }
    }

    /// The oldest records (at most what one reply carries), taken out of
    /// the ring, and what it dropped since the last take.
    pub fn take(&mut self) -> ControlReply {
        let count = self.records.len().min(MAX_TRACE_RECORDS);
        ControlReply::Trace {
            records: self.records.drain(..count).collect(),
            dropped: std::mem::take(&mut self.dropped),
            more: !self.records.is_empty(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipc_proto::control::Answer;

    #[test]
    fn the_ring_is_bounded_taken_in_pieces_and_counts_what_it_dropped() {
        let mut ring = TraceRing::default();
        for i in 0..RING_RECORDS + 3 {
            ring.record("drc-transition", &[("drc", format!("{i:#x}"))]);
        }
        let mut taken = Vec::new();
        let mut dropped = 0;
        loop {
            let reply = ring.take();
            assert!(Answer::<()>::Control(reply.clone())
                .validate(|_| Ok(()))
                .is_ok());
            let ControlReply::Trace {
                records,
                dropped: lost,
                more,
            } = reply
            else {
                unreachable!()
            };
            dropped += lost;
            taken.extend(records);
            if !more {
                break;
            }
        }
        assert_eq!(taken.len(), RING_RECORDS);
        assert_eq!(dropped, 3);
        assert_eq!(taken[0].fields[0].1, "0x3");
    }

    #[test]
    fn a_long_value_is_cut_at_a_character_boundary() {
        let mut ring = TraceRing::default();
        ring.record("event-queued", &[("device", "é".repeat(MAX_TRACE_VALUE))]);
        let ControlReply::Trace { records, .. } = ring.take() else {
            unreachable!()
        };
        let value = &records[0].fields[0].1;
        assert!(value.len() <= MAX_TRACE_VALUE && value.chars().all(|c| c == 'é'));
    }
}
