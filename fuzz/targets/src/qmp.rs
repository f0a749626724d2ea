//! QMP: the bounded splitter and a client's session (negotiation, the
//! envelope, the schema's argument checks, dispatch), and the parsing of
//! the arguments of the commands that need the machine into typed
//! requests (`vmm::qmp::arguments`). Those requests reach a stand-in
//! control loop that acts on nothing: what is fuzzed here is everything a
//! client's bytes meet before the machine acts.
//!
//! Beyond not panicking: the splitter cuts the same values however the
//! bytes arrive; every value gets exactly one reply, `return` or `error`
//! (with a class and a description), carrying the request's `id`; before
//! negotiation, only `qmp_capabilities` runs.

use serde_json::{json, Value};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use vmm::control::ControlMessage;
use vmm::qmp::{JsonSplitter, QmpContext, Session};

/// A context whose control loop accepts every command.
fn context() -> &'static QmpContext {
    static CONTEXT: OnceLock<QmpContext> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        let (control, requests) = mpsc::channel();
        std::thread::spawn(move || {
            for message in requests {
                if let ControlMessage::Qmp { reply, .. } = message {
                    let _ = reply.send(Ok(json!({})));
                }
            }
        });
        QmpContext {
            control,
            cpus: Arc::new(vmm::vcpu::CpuTable::new(1)),
            name: Some("fuzz".into()),
            uuid: None,
            machine: true,
            kvm_present: true,
            migration_events: Default::default(),
        }
    })
}

fn split(bytes: &[u8], chunk: usize) -> Vec<Result<String, String>> {
    let mut splitter = JsonSplitter::default();
    bytes
        .chunks(chunk.max(1))
        .flat_map(|piece| splitter.push(piece))
        .collect()
}

/// The target.
pub fn fuzz(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let values = split(stream, stream.len());
    assert_eq!(
        values,
        split(stream, usize::from(chunk)),
        "chunking changed the values"
    );
    let mut session = Session::new(context());
    let mut negotiated = false;
    for value in values {
        let Ok(text) = value else { continue };
        let (reply, _) = session.handle(&text);
        let request: Option<Value> = serde_json::from_str(&text).ok();
        let object = reply.as_object().expect("a reply is an object");
        match (object.get("return"), object.get("error")) {
            (Some(_), None) => {
                let execute = request.as_ref().and_then(|r| r.get("execute"));
                assert!(
                    negotiated || execute == Some(&json!("qmp_capabilities")),
                    "{text} ran before negotiation: {reply}"
                );
                if execute == Some(&json!("qmp_capabilities")) {
                    negotiated = true;
                }
            }
            (None, Some(error)) => {
                assert!(
                    error["class"].is_string() && error["desc"].is_string(),
                    "{reply}"
                );
            }
            _ => panic!("neither return nor error: {reply}"),
        }
        if let Some(id) = request.as_ref().and_then(|r| r.get("id")) {
            assert_eq!(object.get("id"), Some(id), "{text}: {reply}");
        }
    }
}
